"""Bearer-token authentication against billing, with a short cache so that a request costs no RPC
when its token was checked a moment ago. A revoked token stops working within the cache time."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers

from imagegen_gateway.errors import InvalidTokenError

MAX_CACHED_TOKENS = 10_000
MISSING_TOKEN = "missing API token: send 'Authorization: Bearer <token>'"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account behind a valid API token."""

    account_id: str
    email: str
    token_id: str


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
    def __init__(self, billing: TokenResolver, cache_seconds: float) -> None:
        self.billing = billing
        self.cache_seconds = cache_seconds
        # keyed by a hash, so that no token sits in memory longer than the request that carried it
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def principal(self, token: str) -> Principal:
        """The account of a token; raises InvalidTokenError for an unknown or revoked one."""
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self.billing.authenticate(token)
        self._cache[key] = (principal, now + self.cache_seconds)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_TOKENS:
            self._cache.popitem(last=False)
        return principal

    async def from_headers(self, headers: Headers) -> Principal:
        token = bearer_token(headers)
        if token is None:
            raise InvalidTokenError(MISSING_TOKEN)
        return await self.principal(token)
