"""Billing's settings of the account portal (a part of BillingSettings)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagegen_billing.people import SessionLifetimes, SignupPolicy, SignupRules
from imagegen_common.settings import ENV_PREFIX


class PortalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    signup_policy: SignupPolicy = Field(
        SignupPolicy.INVITE,
        description=(
            "Who may make an account by signing in to the portal: `open` (anyone), `domains` (emails in "
            "`IMAGEGEN_SIGNUP_DOMAINS`) or `invite` (only accounts an operator made)."
        ),
    )
    signup_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Email domains (comma-separated) that may sign up when the policy is `domains`.",
    )
    signup_credits: int = Field(
        0, ge=0, description="Credits a new account gets when a person signs up (recorded in the ledger)."
    )
    session_idle_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="A portal session ends after this long without use."
    )
    session_max_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="A portal session ends this long after sign-in in any case."
    )
    login_link_seconds: int = Field(
        900, ge=60, le=86400, description="Life of a one-time sign-in link (single use)."
    )
    signin_rate_window_seconds: int = Field(900, ge=1, description="Window of the sign-in request limits.")
    signin_rate_per_email: int = Field(
        5, ge=1, description="Sign-in links one email may ask for within the window."
    )
    signin_rate_per_address: int = Field(
        20, ge=1, description="Sign-in links one client address may ask for within the window."
    )

    @field_validator("signup_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower().lstrip("@") for item in value.split(",") if item.strip()]
        return value

    def signup_rules(self) -> SignupRules:
        return SignupRules(self.signup_policy, frozenset(self.signup_domains), self.signup_credits)

    def session_lifetimes(self) -> SessionLifetimes:
        return SessionLifetimes(
            idle=timedelta(seconds=self.session_idle_seconds),
            absolute=timedelta(seconds=self.session_max_seconds),
        )
