"""The gateway's OAuth settings (a part of GatewaySettings)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagegen_common.settings import ENV_PREFIX


class OAuthGatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    oauth_metadata_document_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "`host:port` pairs (comma-separated) whose Client ID Metadata Documents may be fetched over "
            "plain http and from a loopback or private address; for tests only. Everything else must be "
            "https on a public address."
        ),
    )

    @field_validator("oauth_metadata_document_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value
