"""Billing's settings: one class, read once at start-up from ``IMAGEGEN_…`` variables and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from imagegen_billing.portal_config import PortalSettings
from imagegen_common.service_auth import MIN_SECRET_CHARS, Caller, secret_variable
from imagegen_common.settings import (
    BaseServiceSettings,
    BillingCallerSettings,
    NatsSettings,
    split_host_port,
)

#: The shortest admin token billing accepts.
ADMIN_TOKEN_MIN_CHARS = 24
_PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "placeholder", "example", "replace", "secret")


class BillingSettings(BaseServiceSettings, NatsSettings, BillingCallerSettings, PortalSettings):
    billing_listen: str = Field("127.0.0.1:50051", description="gRPC listen address of billing (host:port).")
    billing_ops_listen: str = Field(
        "127.0.0.1:9101", description="Operations HTTP address of billing: `/metrics`, `/healthz`, `/readyz`."
    )
    billing_max_pending_rpcs: int = Field(
        20000,
        ge=1,
        description=(
            "Calls billing's gRPC server holds that it has not started yet (a burst of reservations, "
            "say) before it sheds more with CANCELLED; gRPC's own default sheds from 1,000."
        ),
    )
    database_url: str = Field(
        "",
        description=(
            "Billing's database: `postgresql://user:pass@host/db` (also `postgres://`), or empty for "
            "SQLite at `{data_dir}/billing.db`."
        ),
    )
    database_auto_migrate: bool = Field(
        True,
        description=(
            "Migrate the database to the latest schema when billing starts "
            "(set false where a separate `imagegen billing migrate` job does it)."
        ),
    )
    database_pool_size: int = Field(
        10, ge=1, le=200, description="PostgreSQL connections billing keeps open."
    )
    database_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for one database statement, a pooled connection or a SQLite lock.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description=(
            "Bearer token of the admin API and `imagegen admin`: at least 24 random characters "
            "(billing refuses to start without one)."
        ),
    )
    catalog_path: Path | None = Field(
        None, description="Model catalog (TOML) to serve instead of the built-in one."
    )
    credit_packs_path: Path | None = Field(
        None, description="Credit packs (TOML) to sell instead of the built-in `credit_packs.toml`."
    )
    billing_reservation_ttl_seconds: int = Field(
        900,
        ge=1,
        description="Life of a reservation whose request names no expire time; the reaper releases it after.",
    )
    billing_reaper_interval_seconds: float = Field(
        30.0, gt=0, description="How often the reaper releases expired reservations."
    )
    billing_settlement_enabled: bool = Field(
        True, description="Capture and release reservations from the job outcome events on NATS."
    )
    billing_shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long RPCs in flight may take to finish."
    )

    billing_gateway_secret_previous: SecretStr = Field(
        SecretStr(""),
        description=(
            "A second secret billing accepts for the `gateway` identity while its secret is rotated "
            "(the old one); empty otherwise."
        ),
    )
    billing_webhooks_secret_previous: SecretStr = Field(
        SecretStr(""),
        description=(
            "A second secret billing accepts for the `webhooks` identity while its secret is rotated "
            "(the old one); empty otherwise."
        ),
    )

    def caller_secrets(self) -> dict[Caller, tuple[str, ...]]:
        """The secrets billing accepts per identity: current and, during a rotation, previous. A
        secret shorter than ``MIN_SECRET_CHARS`` (empty: not configured) is left out, so that identity
        is refused."""
        pairs = {
            Caller.GATEWAY: (self.billing_gateway_secret, self.billing_gateway_secret_previous),
            Caller.WEBHOOKS: (self.billing_webhooks_secret, self.billing_webhooks_secret_previous),
        }
        return {
            caller: tuple(
                s.get_secret_value() for s in secrets if len(s.get_secret_value()) >= MIN_SECRET_CHARS
            )
            for caller, secrets in pairs.items()
        }

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("billing_listen", "billing_ops_listen")
    @classmethod
    def _check_address(cls, value: str) -> str:
        split_host_port(value)
        return value

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL of the database: the setting, or SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'billing.db'}"


def normalise_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` (what hosting providers hand out) become the asyncpg URL;
    ``sqlite://`` becomes aiosqlite. Anything else is returned as given."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url


def admin_token_problem(token: str) -> str | None:
    """Why an admin token must not be used, or None when it is fit."""
    if not token:
        return "IMAGEGEN_ADMIN_TOKEN is not set"
    lowered = token.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS) or len(set(token)) < 8:
        return "IMAGEGEN_ADMIN_TOKEN is a placeholder"
    if len(token) < ADMIN_TOKEN_MIN_CHARS:
        return (
            f"IMAGEGEN_ADMIN_TOKEN is too short ({len(token)} characters, at least {ADMIN_TOKEN_MIN_CHARS})"
        )
    return None


def caller_secret_problems(settings: BillingSettings) -> list[str]:
    """Identities billing will refuse because their secret is missing or too short."""
    return [
        f"{secret_variable(caller)} is not set or shorter than {MIN_SECRET_CHARS} characters "
        f"(every call of the {caller.value} identity would be refused)"
        for caller, accepted in settings.caller_secrets().items()
        if not accepted
    ]
