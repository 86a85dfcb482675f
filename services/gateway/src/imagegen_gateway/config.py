"""The gateway's settings: one class, read once at start-up from ``IMAGEGEN_…`` variables."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from imagegen_common.images import ImageStorageSettings
from imagegen_common.settings import (
    BaseServiceSettings,
    BillingCallerSettings,
    NatsSettings,
    PublicUrlSettings,
    split_host_port,
)
from imagegen_gateway.oauth.settings import OAuthGatewaySettings
from imagegen_gateway.payments.settings import StripeGatewaySettings
from imagegen_gateway.portal.settings import PortalGatewaySettings


class GatewaySettings(
    BaseServiceSettings,
    NatsSettings,
    PublicUrlSettings,
    ImageStorageSettings,
    BillingCallerSettings,
    PortalGatewaySettings,
    StripeGatewaySettings,
    OAuthGatewaySettings,
):
    gateway_listen: str = Field("127.0.0.1:8000", description="Address the gateway's HTTP server listens on.")
    billing_address: str = Field("127.0.0.1:50051", description="Billing's gRPC address (host:port).")
    billing_timeout_seconds: float = Field(5.0, gt=0, description="Deadline of one gRPC call to billing.")
    billing_reserve_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Deadline of a reservation: billing queues the writes of a burst rather than refusing "
        "them, so a reservation may wait this long in its queue (billing that is down is refused at once).",
    )
    job_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="How long a generation may take before it is cancelled and its credits released.",
    )
    reservation_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="Extra time a reservation outlives its job's deadline before billing's reaper frees it.",
    )
    progress_interval_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "Interval of MCP progress notifications while a generation runs, and of the one batched read "
            "of every waiting job's status from billing (the waits' fallback)."
        ),
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long a checked API token is trusted without asking billing again."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origins allowed to call the API from a browser (comma-separated; `*` allows any). The public "
            "base URL's origin and loopback origins are always allowed."
        ),
    )
    gateway_drain_timeout_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    max_request_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted.")
    rate_limit_per_minute: int = Field(
        60,
        ge=0,
        description=(
            "`POST /api/images/generate` requests one API token may make per minute, counted across every "
            "gateway replica (NATS KV); 0 turns the limit off."
        ),
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "`host:port` pairs (comma-separated) that webhooks may reach although the SSRF guard refuses "
            "their address (loopback, private); for tests and local receivers. Everything else stays refused."
        ),
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="Time limit of one webhook delivery attempt (connect, send, answer)."
    )
    webhook_retry_delays_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0],
        description=(
            "Delays before each retry of a failed webhook delivery (comma-separated seconds); one attempt "
            "more than delays in all. The default retries for about 8 hours."
        ),
    )
    webhook_concurrency: int = Field(
        16, ge=1, le=1024, description="Webhook deliveries one gateway replica makes at the same time."
    )

    @field_validator("allowed_origins", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("webhook_retry_delays_seconds", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(item) for item in value.split(",") if item.strip()]
        return value

    @field_validator("webhook_retry_delays_seconds")
    @classmethod
    def _check_delays(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value) or len(value) > 50:
            raise ValueError("webhook retry delays must be positive, at most 50 of them")
        return value

    @cached_property
    def listen(self) -> tuple[str, int]:
        return split_host_port(self.gateway_listen)

    @cached_property
    def origin_allow_list(self) -> list[str]:
        public = urlsplit(self.public_base_url)
        return [
            f"{public.scheme}://{public.netloc}",
            "http://localhost:*",
            "http://127.0.0.1:*",
            "http://[::1]:*",
            *self.allowed_origins,
        ]
