"""Bearer-token authentication against billing, with a short cache so that a request costs no RPC
when its token was checked a moment ago. Billing broadcasts revocations (``REVOCATIONS_SUBJECT``) and
the gateway drops a revoked token from the cache at once (:meth:`Authenticator.forget`); a broadcast
that is missed still leaves the cache time as the bound."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.datastructures import Headers

from imagegen_common import nats_names
from imagegen_common.revocations import Revocation
from imagegen_gateway.errors import InvalidTokenError

log = logging.getLogger(__name__)

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

    def forget(self, account_id: str, token_id: str = "") -> int:
        """Drops a revoked token (or, without ``token_id``, every token of a disabled account) from
        the cache, so that its next request asks billing; returns how many entries went."""
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
