"""Idempotency keys on a real NATS KV bucket: claim, replay, mismatch, in progress, release, a
stale claim taken over, and concurrent duplicates of which exactly one runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from imagegen_common import nats_names
from imagegen_gateway.errors import ConflictError, InsufficientCreditsError, InvalidInputError
from imagegen_gateway.idempotency import (
    Answer,
    Claimed,
    IdempotencyKeys,
    InProgress,
    Mismatch,
    Replay,
    fingerprint,
    kv_key,
)

KvFactory = Callable[[KeyValueConfig], Awaitable[KeyValue]]


def test_fingerprints_and_keys() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    key = kv_key("acc_x", "any key: ünïcode / spaces *>")
    assert key.startswith("acc_x.") and all(c.isalnum() or c in "._" for c in key)


async def test_a_key_is_claimed_once_then_replays_its_answer(key_value: KvFactory) -> None:
    keys = IdempotencyKeys(await key_value(nats_names.idempotency_kv_config()))
    claim = await keys.claim("acc_1", "order-1", "fp")
    assert isinstance(claim, Claimed)
    assert isinstance(await keys.claim("acc_1", "order-1", "fp"), InProgress)
    assert isinstance(await keys.claim("acc_1", "order-1", "other"), Mismatch)
    assert isinstance(await keys.claim("acc_2", "order-1", "fp"), Claimed)  # another account's key

    await keys.complete(claim, "fp", 200, {"success": True, "images": []})
    assert await keys.claim("acc_1", "order-1", "fp") == Replay(200, {"success": True, "images": []})
    assert isinstance(await keys.claim("acc_1", "order-1", "other"), Mismatch)


async def test_a_released_key_can_be_claimed_again(key_value: KvFactory) -> None:
    keys = IdempotencyKeys(await key_value(nats_names.idempotency_kv_config()))
    claim = await keys.claim("acc_1", "k", "fp")
    assert isinstance(claim, Claimed)
    await keys.release(claim)
    again = await keys.claim("acc_1", "k", "another body now")
    assert isinstance(again, Claimed)


async def test_a_stale_claim_is_taken_over(key_value: KvFactory) -> None:
    kv = await key_value(nats_names.idempotency_kv_config())
    clock = [100.0]
    keys = IdempotencyKeys(kv, stale_after=60, clock=lambda: clock[0])
    abandoned = await keys.claim("acc_1", "k", "fp")
    assert isinstance(abandoned, Claimed)
    clock[0] = 150.0
    assert isinstance(await keys.claim("acc_1", "k", "fp"), InProgress)
    clock[0] = 161.0
    taken = await keys.claim("acc_1", "k", "fp")
    assert isinstance(taken, Claimed) and taken.revision != abandoned.revision


async def test_of_concurrent_duplicates_on_two_replicas_one_runs(key_value: KvFactory) -> None:
    config = nats_names.idempotency_kv_config()
    replicas = [IdempotencyKeys(await key_value(config)) for _ in range(2)]
    claims = await asyncio.gather(*(replicas[n % 2].claim("acc_1", "dup", "fp") for n in range(20)))
    assert sum(isinstance(c, Claimed) for c in claims) == 1
    assert all(isinstance(c, Claimed | InProgress) for c in claims)


async def test_once_runs_the_request_once_and_replays_its_answer(key_value: KvFactory) -> None:
    keys = IdempotencyKeys(await key_value(nats_names.idempotency_kv_config()))
    runs: list[int] = []
    started, finish = asyncio.Event(), asyncio.Event()

    async def run() -> dict[str, Any]:
        runs.append(1)
        started.set()
        await finish.wait()
        return {"success": True, "n": len(runs)}

    first = asyncio.create_task(keys.once("acc_1", "k", "fp", run))
    await started.wait()
    with pytest.raises(ConflictError):  # a duplicate while the first one runs
        await keys.once("acc_1", "k", "fp", run)
    finish.set()
    assert await first == Answer(200, {"success": True, "n": 1})
    assert await keys.once("acc_1", "k", "fp", run) == Answer(200, {"success": True, "n": 1}, replayed=True)
    with pytest.raises(InvalidInputError) as mismatch:
        await keys.once("acc_1", "k", "another body", run)
    assert mismatch.value.field == "idempotency_key"
    assert len(runs) == 1


async def test_once_keeps_no_failed_answer(key_value: KvFactory) -> None:
    keys = IdempotencyKeys(await key_value(nats_names.idempotency_kv_config()))

    async def refused() -> dict[str, Any]:
        raise InsufficientCreditsError(required=6, available=5)

    async def accepted() -> dict[str, Any]:
        return {"success": True}

    with pytest.raises(InsufficientCreditsError):
        await keys.once("acc_1", "k", "fp", refused)
    assert await keys.once("acc_1", "k", "fp", accepted) == Answer(200, {"success": True})
