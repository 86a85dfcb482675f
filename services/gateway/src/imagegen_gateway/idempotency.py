"""REST idempotency keys, kept 24 hours per account in NATS KV and shared by every gateway replica.

The first request with a key claims it with an atomic ``create`` (a concurrent duplicate cannot claim
it too), runs, and stores its answer over the claim; a later request with the key and the same body
gets that answer again. Only successful answers are kept: an error releases the key, so that a retry
after, say, adding credits can succeed. A claim whose request died with its gateway is taken over
once it is older than ``stale_after``; the job ids derive from the key, so the takeover charges
nothing twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from imagegen_gateway.errors import ConflictError, InvalidInputError
from imagegen_gateway.metrics import IDEMPOTENT_REPLAYS

#: A claim older than this is abandoned (its request takes a few billing calls, each with a deadline).
DEFAULT_STALE_AFTER_SECONDS = 120.0
MAX_KEY_CHARS = 255


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key is ours: run the request, then ``complete`` or ``release`` it."""

    kv_key: str
    revision: int


@dataclass(frozen=True, slots=True)
class Replay:
    """The key answered before: send this again."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another request with the key is running now."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used for a different request."""


ClaimResult = Claimed | Replay | InProgress | Mismatch


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    #: True when this is the stored answer of an earlier request.
    replayed: bool = False


def fingerprint(body: dict[str, Any]) -> str:
    """Hash of a request body in canonical JSON: the same request gives the same hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def kv_key(account_id: str, key: str) -> str:
    """A KV-safe key for a client's idempotency key (any characters) of an account."""
    return f"{account_id}.{hashlib.sha256(key.encode()).hexdigest()}"


class IdempotencyKeys:
    def __init__(
        self,
        kv: KeyValue,
        stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.stale_after = stale_after
        self.clock = clock

    async def once(
        self,
        account_id: str,
        key: str,
        request_fingerprint: str,
        run: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Answer:
        """The answer of ``run`` (a successful one, status 200) for the first request with the key,
        that stored answer for a repeat; ConflictError while the first one runs, InvalidInputError
        (``idempotency_key``) for the key used with another request."""
        claim = await self.claim(account_id, key, request_fingerprint)
        if isinstance(claim, Replay):
            IDEMPOTENT_REPLAYS.labels(result="replayed").inc()
            return Answer(claim.status, claim.body, replayed=True)
        if isinstance(claim, InProgress):
            IDEMPOTENT_REPLAYS.labels(result="in_progress").inc()
            raise ConflictError(
                "A request with this Idempotency-Key is still in progress; retry in a moment."
            )
        if isinstance(claim, Mismatch):
            IDEMPOTENT_REPLAYS.labels(result="mismatch").inc()
            raise InvalidInputError(
                "This Idempotency-Key was already used with a different request body; use a new key.",
                field="idempotency_key",
            )
        try:
            body = await run()
        except BaseException:
            with contextlib.suppress(Exception):  # unreleased, the claim goes stale and is taken over
                await self.release(claim)
            raise
        await self.complete(claim, request_fingerprint, 200, body)
        return Answer(200, body)

    async def claim(self, account_id: str, key: str, request_fingerprint: str) -> ClaimResult:
        name = kv_key(account_id, key)
        claim = _encode({"state": "pending", "fingerprint": request_fingerprint, "claimed_at": self.clock()})
        for _ in range(3):
            try:
                return Claimed(name, await self.kv.create(name, claim))
            except KeyWrongLastSequenceError:
                pass  # the key exists: see what it holds
            try:
                entry = await self.kv.get(name)
            except KeyNotFoundError:
                continue  # released a moment ago: claim it again
            stored = json.loads(entry.value or b"{}")
            if stored.get("fingerprint") != request_fingerprint:
                return Mismatch()
            if stored.get("state") == "done":
                return Replay(int(stored["status"]), stored["body"])
            if self.clock() - float(stored.get("claimed_at", 0)) < self.stale_after:
                return InProgress()
            try:  # the claim was abandoned: take it over
                return Claimed(name, await self.kv.update(name, claim, last=entry.revision))
            except KeyWrongLastSequenceError:
                continue
        return InProgress()

    async def complete(
        self, claimed: Claimed, request_fingerprint: str, status: int, body: dict[str, Any]
    ) -> None:
        """Stores the answer of a claimed key (over the claim)."""
        answer = _encode(
            {"state": "done", "fingerprint": request_fingerprint, "status": status, "body": body}
        )
        await self.kv.update(claimed.kv_key, answer, last=claimed.revision)

    async def release(self, claimed: Claimed) -> None:
        """Frees a claimed key whose request failed, so that it can be used again."""
        await self.kv.delete(claimed.kv_key, last=claimed.revision)


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
