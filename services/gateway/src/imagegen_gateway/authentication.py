"""Bearer-token authentication against billing, with a short cache so that a request costs no RPC
when its token was checked a moment ago. A revoked token stops working within the cache time.

Two kinds of bearer token: ``igk_`` API tokens (every scope) and OAuth access tokens (``iga_``, issue 12)
that carry the scopes a person approved and are good only for the resource they were issued for."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from starlette.datastructures import Headers

from imagegen_gateway.errors import GatewayError, InvalidTokenError

MAX_CACHED_TOKENS = 10_000
MISSING_TOKEN = "missing API token: send 'Authorization: Bearer <token>'"
#: Scopes of OAuth access tokens; an ``igk_`` API token carries them all.
SCOPE_GENERATE = "images:generate"
SCOPE_ACCOUNT = "account:read"
ALL_SCOPES = frozenset({SCOPE_GENERATE, SCOPE_ACCOUNT})
OAUTH_ACCESS_PREFIX = "iga_"
FOREIGN_AUDIENCE = "this access token was issued for another resource"


class InsufficientScopeError(GatewayError):
    """A valid token without the scope the call needs (HTTP 403, RFC 6750 ``insufficient_scope``)."""

    code = "insufficient_scope"
    status = HTTPStatus.FORBIDDEN

    def __init__(self, scope: str) -> None:
        super().__init__(f"this token lacks the scope {scope!r} that this call needs")
        self.scope = scope


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account behind a valid API token or OAuth access token."""

    account_id: str
    email: str
    token_id: str
    scopes: frozenset[str] = ALL_SCOPES
    #: The OAuth client acting for the account; empty for an API token.
    client_id: str = ""

    def require(self, scope: str) -> None:
        """InsufficientScopeError unless the token carries ``scope``."""
        if scope not in self.scopes:
            raise InsufficientScopeError(scope)


@dataclass(frozen=True, slots=True)
class OAuthAccess:
    """What billing says of a live OAuth access token."""

    principal: Principal
    resource: str
    expires_at: float  # Unix time


class AccessTokenResolver(Protocol):
    """Billing's OAuthService (``OAuthBilling``)."""

    async def verify_access_token(self, token: str) -> OAuthAccess:
        """The access of a live token; InvalidTokenError for an unknown, expired or revoked one."""
        ...


def required_scope(path: str) -> str | None:
    """The scope a REST path needs of an OAuth access token (None: any valid token will do)."""
    if path == "/api/account" or path.startswith("/api/account/"):
        return SCOPE_ACCOUNT
    if path == "/api/images" or path.startswith("/api/images/"):
        return SCOPE_GENERATE
    return None


class TokenResolver(Protocol):
    """Billing's side of authentication (``BillingClient``)."""

    async def authenticate(self, token: str) -> Principal:
        """The account of a token; InvalidTokenError for an unknown or revoked one."""
        ...


def bearer_token(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class Authenticator:
    def __init__(
        self,
        billing: TokenResolver,
        cache_seconds: float,
        oauth: AccessTokenResolver | None = None,
        resource: str = "",
    ) -> None:
        self.billing = billing
        self.cache_seconds = cache_seconds
        self.oauth = oauth
        #: The canonical MCP resource: OAuth access tokens for anything else are refused.
        self.resource = resource
        # keyed by a hash, so that no token sits in memory longer than the request that carried it
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def principal(self, token: str) -> Principal:
        """The account of a token; raises InvalidTokenError for an unknown or revoked one."""
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        until = now + self.cache_seconds
        if token.startswith(OAUTH_ACCESS_PREFIX) and self.oauth is not None:
            access = await self.oauth.verify_access_token(token)
            if access.resource != self.resource:
                raise InvalidTokenError(FOREIGN_AUDIENCE)
            principal = access.principal
            until = min(until, now + max(access.expires_at - time.time(), 0.0))
        else:
            principal = await self.billing.authenticate(token)
        self._cache[key] = (principal, until)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_TOKENS:
            self._cache.popitem(last=False)
        return principal

    async def from_headers(self, headers: Headers) -> Principal:
        token = bearer_token(headers)
        if token is None:
            raise InvalidTokenError(MISSING_TOKEN)
        return await self.principal(token)
