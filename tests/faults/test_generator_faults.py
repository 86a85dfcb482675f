"""A generator killed (kill -9) or frozen (SIGSTOP) mid-job: its jobs go to another replica after the
short ack wait (10 s; a working replica's heartbeat keeps long jobs its own), well within the job's
28 s deadline (NATS' former 30 s ack wait would let them time out), and each image is charged once
however many replicas made it."""

from __future__ import annotations

import asyncio
import signal

import pytest

from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.faults import (
    busy_generators,
    calls_with_the_provider,
    check_books,
    ensure_generators,
    in_thread,
    kill,
)
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 3


async def test_a_killed_generators_jobs_are_made_by_another_within_their_deadline(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    ensure_generators(stack, 2)
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    [victim, *_] = await in_thread(busy_generators, stack)
    await in_thread(kill, stack, victim)
    answered = await asyncio.gather(*calls)
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2


async def test_a_frozen_generators_jobs_are_made_elsewhere_and_charged_once_when_it_thaws(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    ensure_generators(stack, 2)
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    [victim, *_] = await in_thread(busy_generators, stack)
    frozen = stack.stack.child(victim)
    frozen.send_signal(signal.SIGSTOP)
    try:
        answered = await asyncio.gather(*calls)
    finally:
        frozen.send_signal(signal.SIGCONT)  # it finishes its copies too: outcomes are deduplicated
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2
