"""Bearer-token authentication against billing, with a short cache so that a request costs no RPC
when its token was checked a moment ago. Billing broadcasts revocations (``REVOCATIONS_SUBJECT``) and
the gateway drops a revoked token from the cache at once (:meth:`Authenticator.forget`); a broadcast
that is missed still leaves the cache time as the bound. Concurrent requests with a token that is not
cached share one lookup (a burst of a thousand calls with one token costs billing one RPC, not a
thousand).

Two kinds of bearer token: ``igk_`` API tokens (every scope) and OAuth access tokens (``iga_``, issue 12)
that carry the scopes a person approved and are good only for the resource they were issued for."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.datastructures import Headers

from imagegen_common import nats_names
from imagegen_common.revocations import Revocation
from imagegen_gateway.errors import GatewayError, InvalidTokenError

log = logging.getLogger(__name__)

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
        #: Lookups under way, shared by the requests that carry the same token meanwhile.
        self._lookups: dict[bytes, asyncio.Task[Principal]] = {}
        #: Counts revocations: a lookup that began before one is not cached (its answer may be stale).
        self._revocations = 0

    async def principal(self, token: str) -> Principal:
        """The account of a token; raises InvalidTokenError for an unknown or revoked one."""
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        lookup = self._lookups.get(key)
        if lookup is None:
            # A task of its own: a caller that goes away does not fail the others waiting on it.
            lookup = asyncio.ensure_future(self._look_up(key, token, self._revocations))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(key, done))
        return await asyncio.shield(lookup)

    def _looked_up(self, key: bytes, lookup: asyncio.Task[Principal]) -> None:
        if self._lookups.get(key) is lookup:
            del self._lookups[key]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: every caller may have gone before it ended

    async def _look_up(self, key: bytes, token: str, revocations: int) -> Principal:
        now = time.monotonic()
        until = now + self.cache_seconds
        if token.startswith(OAUTH_ACCESS_PREFIX) and self.oauth is not None:
            access = await self.oauth.verify_access_token(token)
            if access.resource != self.resource:
                raise InvalidTokenError(FOREIGN_AUDIENCE)
            principal = access.principal
            until = min(until, now + max(access.expires_at - time.time(), 0.0))
        else:
            principal = await self.billing.authenticate(token)
        if revocations != self._revocations:
            return principal  # answered before a revocation came: good for its callers, not cached
        self._cache[key] = (principal, until)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_TOKENS:
            self._cache.popitem(last=False)
        return principal

    def forget(self, account_id: str, token_id: str = "") -> int:
        """Drops a revoked token (or, without ``token_id``, every token of a disabled account) from
        the cache, so that its next request asks billing; returns how many entries went."""
        self._revocations += 1
        # A request that comes after this asks billing anew rather than joining a lookup that may
        # have been answered before the revocation.
        self._lookups.clear()
        gone = [
            key
            for key, (principal, _) in self._cache.items()
            if principal.account_id == account_id and (not token_id or principal.token_id == token_id)
        ]
        for key in gone:
            del self._cache[key]
        return len(gone)

    async def from_headers(self, headers: Headers) -> Principal:
        token = bearer_token(headers)
        if token is None:
            raise InvalidTokenError(MISSING_TOKEN)
        return await self.principal(token)


async def listen_for_revocations(nc: NATS, authenticator: Authenticator) -> Subscription:
    """Drops every credential billing revokes from ``authenticator``'s cache as soon as it says so.

    Every gateway replica subscribes (core NATS, no queue group: each one has its own cache). The
    subscription lives as long as the connection, which resubscribes by itself after a reconnect.
    """

    async def on_revocation(msg: Msg) -> None:
        try:
            revocation = Revocation.decode(msg.data)
        except ValueError:
            log.warning("malformed revocation message dropped")
            return
        dropped = authenticator.forget(revocation.account_id, revocation.token_id)
        log.info(
            "credential revoked",
            extra={"account_id": revocation.account_id, "token_id": revocation.token_id, "dropped": dropped},
        )

    return await nc.subscribe(nats_names.REVOCATIONS_SUBJECT, cb=on_revocation)
