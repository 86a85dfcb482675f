"""The gateway's settings of the account portal (a part of GatewaySettings): mail and OpenID Connect."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen_common.settings import ENV_PREFIX


class PortalGatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    smtp_host: str = Field(
        "", description="SMTP server that sends the portal's sign-in links; empty sends no mail."
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="`starttls` (upgrade on 587), `tls` (implicit TLS, 465) or `none` (a local catch-all).",
    )
    smtp_username: str = Field("", description="SMTP user name (empty: no login).")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password.")
    smtp_from: str = Field(
        "imagegen <no-reply@imagegen.local>", description="The From address of sign-in mail."
    )
    smtp_timeout_seconds: float = Field(15.0, gt=0, description="Time limit of sending one mail.")
    signin_links_on_console: bool = Field(
        False,
        description=(
            "Log sign-in links on the console when no SMTP server is set (what `imagegen dev` does, so "
            "that a newcomer can sign in offline). Never in production."
        ),
    )
    oidc_issuer: str = Field(
        "", description="OpenID Connect provider's issuer URL for portal sign-in; empty turns it off."
    )
    oidc_client_id: str = Field("", description="OpenID Connect client id.")
    oidc_client_secret: SecretStr = Field(SecretStr(""), description="OpenID Connect client secret.")
    oidc_name: str = Field(
        "Single sign-on", description="Name of the OpenID Connect button on the sign-in page."
    )
