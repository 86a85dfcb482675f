"""Per-token rate limit of generation requests, shared by every gateway replica through NATS KV.

A fixed window per token: the counter of the current minute is a KV entry (``<token id>.<window>``),
raised by compare-and-set (``create`` for the first request, ``update`` with the last revision after),
so that two replicas never both take the last unit. Requests of one token on one replica queue on a
lock before they touch the counter, so that only replicas race each other. The answer carries what the
IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers) need.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from imagegen_common import nats_names

POLICY_NAME = "generate"
#: Compare-and-set rounds before a request that keeps losing the race is refused (as if limited).
MAX_ROUNDS = 20


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go on, and the quota it leaves."""

    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the window (and the quota) resets.
    reset_seconds: int
    window_seconds: int

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (structured fields), plus ``Retry-After`` when refused."""
        headers = {
            "RateLimit-Policy": f'"{POLICY_NAME}";q={self.limit};w={self.window_seconds}',
            "RateLimit": f'"{POLICY_NAME}";r={self.remaining};t={self.reset_seconds}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


def window_of(now: float, window_seconds: int) -> tuple[int, int]:
    """The window a moment falls in, and the whole seconds until the next one (at least 1)."""
    index = int(now // window_seconds)
    reset = max(1, math.ceil((index + 1) * window_seconds - now))
    return index, reset


class RateLimiter:
    """``limit`` requests per window and token; a limit of 0 lets everything through."""

    def __init__(
        self,
        kv: KeyValue | None,
        limit: int,
        window_seconds: int = int(nats_names.RATE_LIMIT_WINDOW.total_seconds()),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.limit = limit
        self.window_seconds = window_seconds
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.kv is not None

    async def take(self, token_id: str) -> RateDecision:
        """Counts one request of the token; ``allowed`` is False when its quota is spent (the refused
        request is not counted)."""
        index, reset = window_of(self.clock(), self.window_seconds)
        key = f"{token_id}.{index}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._take(key, reset)
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _take(self, key: str, reset: int) -> RateDecision:
        assert self.kv is not None
        for _ in range(MAX_ROUNDS):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                used, revision = 0, 0
            else:
                used, revision = int(entry.value or b"0"), entry.revision or 0
            if used >= self.limit:
                return self._decision(False, 0, reset)
            try:
                if revision:
                    await self.kv.update(key, str(used + 1).encode(), last=revision)
                else:
                    await self.kv.create(key, b"1")
            except KeyWrongLastSequenceError:
                continue  # another replica counted a request meanwhile: read again
            return self._decision(True, self.limit - used - 1, reset)
        return self._decision(False, 0, reset)

    def _decision(self, allowed: bool, remaining: int, reset: int) -> RateDecision:
        return RateDecision(allowed, self.limit, remaining, reset, self.window_seconds)
