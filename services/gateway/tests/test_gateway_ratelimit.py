"""The per-token rate limit on a real NATS KV bucket: the quota, its headers, and compare-and-set
under concurrency from two replicas (never more than the limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from imagegen_common import nats_names
from imagegen_gateway.ratelimit import RateDecision, RateLimiter, window_of

KvFactory = Callable[[KeyValueConfig], Awaitable[KeyValue]]


def test_the_headers_follow_the_ietf_draft() -> None:
    allowed = RateDecision(allowed=True, limit=60, remaining=59, reset_seconds=42, window_seconds=60)
    assert allowed.headers() == {
        "RateLimit-Policy": '"generate";q=60;w=60',
        "RateLimit": '"generate";r=59;t=42',
    }
    refused = RateDecision(allowed=False, limit=60, remaining=0, reset_seconds=7, window_seconds=60)
    assert refused.headers()["Retry-After"] == "7"
    assert refused.headers()["RateLimit"] == '"generate";r=0;t=7'


@pytest.mark.parametrize(
    ("now", "window", "reset"), [(0.0, 0, 60), (59.2, 0, 1), (60.0, 1, 60), (119.999, 1, 1), (125.5, 2, 55)]
)
def test_fixed_windows(now: float, window: int, reset: int) -> None:
    assert window_of(now, 60) == (window, reset)


async def test_a_token_gets_its_quota_per_window_and_no_more(key_value: KvFactory) -> None:
    kv = await key_value(nats_names.rate_limits_kv_config())
    clock = [1000.0]
    limiter = RateLimiter(kv, limit=3, clock=lambda: clock[0])
    decisions = [await limiter.take("tok_a") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].reset_seconds == 20  # 1000 s is 40 s into its minute
    assert (await limiter.take("tok_b")).allowed  # every token has its own quota
    clock[0] = 1020.0  # the next minute
    assert (await limiter.take("tok_a")).remaining == 2


async def test_two_replicas_share_one_quota_under_concurrency(key_value: KvFactory) -> None:
    config = nats_names.rate_limits_kv_config()
    clock = 3000.0  # the start of a minute: the whole test fits in one window
    replicas = [RateLimiter(await key_value(config), limit=10, clock=lambda: clock) for _ in range(2)]
    decisions = await asyncio.gather(*(replicas[n % 2].take("tok_busy") for n in range(40)))
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


def test_a_limit_of_zero_or_no_bucket_is_off() -> None:
    assert not RateLimiter(None, limit=60).enabled
