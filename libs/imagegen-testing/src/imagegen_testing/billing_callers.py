"""Service credentials at billing for tests: secrets of the identities and channels that send them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from imagegen_common.service_auth import Caller, caller_metadata, new_secret, secret_variable

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor

#: Methods only the webhook dispatcher's identity may call; every other one is the gateway's.
WEBHOOK_METHODS = frozenset({"GetWebhookSettings", "RecordWebhookAttempt", "ListWebhookAttempts"})


def generate_secrets() -> dict[Caller, str]:
    return {caller: new_secret() for caller in Caller}


def secrets_env(secrets: Mapping[Caller, str]) -> dict[str, str]:
    """``IMAGEGEN_BILLING_<IDENTITY>_SECRET`` of each identity, for billing's and the gateway's env."""
    return {secret_variable(caller): secret for caller, secret in secrets.items()}


def secrets_settings(secrets: Mapping[Caller, str]) -> dict[str, Any]:
    """The same as keyword arguments of ``BillingSettings``."""
    return {secret_variable(caller).removeprefix("IMAGEGEN_").lower(): s for caller, s in secrets.items()}


def caller_for(method: str | bytes) -> Caller:
    """The identity that may call a ``/package.Service/Method`` the way the services do."""
    name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
    return Caller.WEBHOOKS if name in WEBHOOK_METHODS else Caller.GATEWAY


def metadata_for(method: str, secrets: Mapping[Caller, str]) -> tuple[tuple[str, str], ...]:
    """Metadata of a blocking stub call of ``method`` (its bare name is enough)."""
    caller = caller_for(method)
    return caller_metadata(caller, secrets[caller])


class AsServices(_UnaryInterceptor):
    """Sends each call with the credentials of the identity that makes it in production: a test
    channel that calls billing like the gateway and its webhook dispatcher do."""

    def __init__(self, secrets: Mapping[Caller, str]) -> None:
        self._secrets = dict(secrets)

    @classmethod
    def channel_list(cls, secrets: Mapping[Caller, str]) -> Any:
        """``interceptors=`` of ``grpc.aio.insecure_channel`` (cast: grpc-stubs type it as a placeholder)."""
        return [cls(secrets)]

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        caller = caller_for(client_call_details.method)
        metadata = grpc.aio.Metadata(
            *tuple(client_call_details.metadata or ()), *caller_metadata(caller, self._secrets[caller])
        )
        return await continuation(client_call_details._replace(metadata=metadata), request)


def _field(caller: Caller) -> str:
    return secret_variable(caller).removeprefix("IMAGEGEN_").lower()


def secrets_of(settings: Any) -> dict[Caller, str]:
    """The identities' secrets a billing (or gateway) settings object holds."""
    return {
        caller: getattr(
            settings, secret_variable(caller).removeprefix("IMAGEGEN_").lower()
        ).get_secret_value()
        for caller in Caller
    }


def service_channel(settings: Any) -> grpc.aio.Channel:
    """A channel to the billing of ``settings`` that calls as the services do (``AsServices``)."""
    return grpc.aio.insecure_channel(
        settings.billing_listen, interceptors=AsServices.channel_list(secrets_of(settings))
    )
