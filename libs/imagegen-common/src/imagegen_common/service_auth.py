"""How a service proves to billing who it is: a per-identity secret in gRPC metadata.

Every call of ``BillingService`` carries ``imagegen-caller: <identity>`` and
``imagegen-caller-secret: <secret>``. Billing compares the secret in constant time with the one or
two (during a rotation) it accepts for that identity, then checks that the identity may call the
method (billing's ``interceptors.CALLER_METHODS``, deny by default). Why not mTLS: the secrets
travel the same way as every other secret we ship (Kubernetes Secrets, ``.env``, ``imagegen dev``'s
data directory) and rotate with two accepted values and two restarts, without a CA to run; the
price is that they cross the network in clear where the channel is plaintext (it is inside the
cluster, behind NetworkPolicies; put the mesh's mTLS underneath for encryption in transit).
"""

from __future__ import annotations

import enum
import secrets
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor

#: gRPC metadata keys (lower case, as gRPC requires).
CALLER_KEY = "imagegen-caller"
SECRET_KEY = "imagegen-caller-secret"  # noqa: S105 -- a metadata key, not a secret
#: The shortest caller secret billing accepts; shorter ones are refused as if absent.
MIN_SECRET_CHARS = 24


class Caller(enum.StrEnum):
    """A service identity at billing; the value is what ``imagegen-caller`` carries."""

    #: The gateway's API: tokens, catalog, reservations, accounts, image status.
    GATEWAY = "gateway"
    #: The webhook dispatcher (in the gateway process): signing secrets, delivery attempts, settling.
    WEBHOOKS = "webhooks"


def secret_variable(caller: Caller) -> str:
    """The environment variable of an identity's secret, the same name in billing and its caller."""
    return f"IMAGEGEN_BILLING_{caller.name}_SECRET"


def previous_secret_variable(caller: Caller) -> str:
    """The variable of the secret billing still accepts while a rotation is under way."""
    return f"{secret_variable(caller)}_PREVIOUS"


def caller_metadata(caller: Caller, secret: str) -> tuple[tuple[str, str], ...]:
    """The metadata a caller sends with every call (``metadata=`` of a stub call)."""
    return ((CALLER_KEY, caller.value), (SECRET_KEY, secret))


def new_secret() -> str:
    """A fresh secret (256 bits, URL-safe): for ``imagegen dev``, tests and operators."""
    return secrets.token_urlsafe(32)


class CallerCredentials(_UnaryInterceptor):
    """Adds one identity's credentials to every unary call of a channel:
    ``grpc.aio.insecure_channel(address, interceptors=[CallerCredentials(Caller.GATEWAY, secret)])``."""

    def __init__(self, caller: Caller, secret: str) -> None:
        self._metadata = caller_metadata(caller, secret)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        existing = tuple(client_call_details.metadata or ())
        metadata = grpc.aio.Metadata(*existing, *self._metadata)
        return await continuation(client_call_details._replace(metadata=metadata), request)
