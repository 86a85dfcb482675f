"""The gateway's Stripe settings (a part of GatewaySettings)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen_common.settings import ENV_PREFIX

STRIPE_API_BASE = "https://api.stripe.com"


class StripeGatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    stripe_secret_key: SecretStr = Field(
        SecretStr(""),
        description=(
            "Stripe secret key (`sk_live_…`, or `sk_test_…` in test mode) for Checkout; empty: the "
            "Buy credits page says payments are not configured."
        ),
    )
    stripe_webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="Signing secret (`whsec_…`) of the Stripe webhook endpoint `/webhooks/stripe`.",
    )
    stripe_api_base: str = Field(
        STRIPE_API_BASE,
        description="Stripe's API origin without `/v1` (the library's `api_base`); tests point it at a fake.",
    )
    stripe_timeout_seconds: float = Field(10.0, gt=0, description="Time limit of one call to Stripe's API.")

    @field_validator("stripe_api_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")) or value.endswith("/v1"):
            raise ValueError("IMAGEGEN_STRIPE_API_BASE is an origin like https://api.stripe.com (no /v1)")
        return value
