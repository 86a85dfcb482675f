"""Settings shared by every service. Each service has one settings class built from these parts,
read once at start-up (``IMAGEGEN_…`` environment variables) and passed down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen_common.logging import LogFormat

ENV_PREFIX = "IMAGEGEN_"


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; raises ValueError on anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, not {address!r}")
    return host.strip("[]"), int(port)


def server_list(urls: str) -> list[str]:
    """A comma-separated list of server URLs, as NATS clients take them."""
    return [url.strip() for url in urls.split(",") if url.strip()]


class BaseServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        "json", description="`json` (one object per line, for containers) or `text` (for a terminal)."
    )
    data_dir: Path = Field(
        Path(".imagegen"), description="Where embedded defaults keep their files (SQLite, NATS data)."
    )


class NatsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma-separated.")
    nats_stream_replicas: int = Field(
        1, ge=1, le=5, description="Replicas of the JetStream streams and buckets (3 in production)."
    )

    @property
    def nats_servers(self) -> list[str]:
        return server_list(self.nats_url)

    nats_connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout of one NATS connection attempt."
    )
    nats_user: str = Field(
        "",
        description=(
            "This service's NATS user (`gateway`, `generator` or `billing`: the users of the shipped "
            "NATS configs); empty connects without credentials."
        ),
    )
    nats_password: SecretStr = Field(
        SecretStr(""), description="Password of `IMAGEGEN_NATS_USER` (never logged, never in a URL)."
    )


class PublicUrlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    public_base_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base of the URLs handed to clients (images are at `{public_base_url}/images/…`).",
    )


class BillingCallerSettings(BaseSettings):
    """The service credentials billing's callers present (``imagegen_common.service_auth``): the
    gateway holds both, billing checks them."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    billing_gateway_secret: SecretStr = Field(
        SecretStr(""),
        description=(
            "Secret of the `gateway` identity at billing (authentication, reservations, accounts): "
            "at least 24 random characters, the same value in billing and the gateway."
        ),
    )
    billing_webhooks_secret: SecretStr = Field(
        SecretStr(""),
        description=(
            "Secret of the `webhooks` identity at billing (the webhook dispatcher: signing secrets, "
            "delivery attempts): at least 24 random characters, the same value in billing and the gateway."
        ),
    )
