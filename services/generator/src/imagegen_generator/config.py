"""The generator's settings: one class, read once at start-up from ``IMAGEGEN_…`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from imagegen_common.images import ImageStorageSettings
from imagegen_common.safe_fetch import SafeFetchSettings
from imagegen_common.settings import (
    ENV_PREFIX,
    BaseServiceSettings,
    NatsSettings,
    PublicUrlSettings,
    split_host_port,
)

ProviderChoice = Literal["auto", "replicate", "local"]
ImageFormat = Literal["png", "webp"]


class GeneratorSettings(
    BaseServiceSettings, NatsSettings, PublicUrlSettings, ImageStorageSettings, SafeFetchSettings
):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    generator_ops_listen: str = Field(
        "127.0.0.1:9102", description="host:port of the operations HTTP server (/metrics, /healthz, /readyz)."
    )
    generator_concurrency: int = Field(
        4,
        ge=1,
        le=20_000,
        description="Jobs one replica runs at the same time. A job waiting on Replicate costs a "
        "connection and a few kB, no thread: thousands are fine (raise the open-files limit to match).",
    )
    generator_cpu_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads that decode, resize and encode images (CPU work, off the event loop); "
        "0: one per core the process may use.",
    )
    generator_ack_wait_seconds: float = Field(
        # Short, so that the jobs of a replica killed mid-job go to another one soon (a job's whole
        # deadline may be shorter than 30 s); a working replica's heartbeat keeps a long job its own.
        10.0,
        gt=0,
        description="Seconds without a sign of life after which NATS hands a job to another replica. "
        "A working replica extends it every third of this time.",
    )
    generator_max_deliver: int = Field(
        3, ge=1, le=20, description="Deliveries of a job at most; the last failure is its outcome."
    )
    generator_retry_delay_seconds: float = Field(
        2.0,
        ge=0,
        description="Delay of the first redelivery after a retryable failure; doubled for each later one.",
    )
    generator_drain_timeout_seconds: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, how long jobs in flight may run before they are handed back to NATS.",
    )
    generator_fetch_timeout_seconds: float = Field(
        1.0, gt=0, description="Duration of one pull request on the jobs consumer (bounds the stop time)."
    )
    generator_pending_poll_seconds: float = Field(
        5.0, gt=0, description="How often the jobs waiting in the shared consumer are counted (metric)."
    )
    catalog_path: Path | None = Field(
        None, description="Model catalog file (TOML); the catalog shipped with imagegen when empty."
    )

    provider: ProviderChoice = Field(
        "auto",
        description="`replicate`, `local` (Pillow drawings, no network) or `auto`: Replicate when a "
        "Replicate token is set, otherwise local.",
    )
    replicate_api_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("IMAGEGEN_REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN"),
        description="Replicate API token (IMAGEGEN_REPLICATE_API_TOKEN or REPLICATE_API_TOKEN).",
    )
    replicate_base_url: str = Field(
        "https://api.replicate.com", description="Base URL of Replicate's API (tests point it at a fake)."
    )
    replicate_wait_seconds: int = Field(
        # Replicate's maximum, as the official client's `replicate.run`: most predictions end within
        # it, so a job makes one request rather than a create and a poll a second after the wait.
        60,
        ge=1,
        le=60,
        description="`Prefer: wait` time of a prediction request before polling; never more than the "
        "job's remaining time nor `IMAGEGEN_GENERATOR_DRAIN_TIMEOUT_SECONDS`. The trade-off: a cancel "
        "that comes while the request is held reaches Replicate only once the prediction's id is known, "
        "at most this late (the job's deadline still bounds it, since the wait never runs past it; and "
        "a replica that stops has every id by the end of its drain, so it cancels what it hands back).",
    )
    replicate_poll_interval_seconds: float = Field(
        1.0, gt=0, description="Interval of polling a prediction that did not finish within the wait."
    )
    replicate_max_retries: int = Field(
        4, ge=0, le=10, description="Retries of one Replicate request on 429, 5xx or a network error."
    )
    replicate_retry_initial_seconds: float = Field(
        1.0, ge=0, description="First backoff of those retries (doubled each time, jittered)."
    )
    replicate_retry_max_seconds: float = Field(
        30.0, ge=0, description="Longest backoff, also the cap of a Retry-After header."
    )
    replicate_request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Timeout of one Replicate request; a `Prefer: wait` create may take its wait longer.",
    )
    provider_output_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest image accepted from a provider, in bytes."
    )
    local_provider_instant: bool = Field(
        False,
        description="Local provider serves cached pre-encoded images (benchmarks): nothing drawn per job.",
    )
    image_format: ImageFormat = Field("png", description="Format of stored images: `png` or `webp`.")
    webp_quality: int = Field(90, ge=1, le=100, description="Quality of WebP images (1-100).")

    @model_validator(mode="after")
    def _replicate_needs_a_token(self) -> GeneratorSettings:
        if self.provider == "replicate" and not self.uses_replicate_token:
            raise ValueError(
                "IMAGEGEN_PROVIDER=replicate needs REPLICATE_API_TOKEN (or IMAGEGEN_REPLICATE_API_TOKEN)"
            )
        return self

    @property
    def uses_replicate_token(self) -> bool:
        return self.replicate_api_token is not None and bool(self.replicate_api_token.get_secret_value())

    @property
    def ops_host_port(self) -> tuple[str, int]:
        return split_host_port(self.generator_ops_listen)

    @property
    def uses_replicate(self) -> bool:
        return self.provider == "replicate" or (self.provider == "auto" and self.uses_replicate_token)
