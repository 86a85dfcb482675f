"""Billing killed or stalled while calls wait for their images: the calls are answered from the reply
subject (billing's status checks are best-effort), billing settles from the outcome events once it is
back, and no client is told of an error it was charged for."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.faults import FAULT_ENV, check_books, generate, in_thread, kill, restart
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 4


@pytest.fixture
def stack(tmp_path: Path, fake: FakeReplicate) -> Iterator[RunningStack]:
    fake.behaviour = FakeBehaviour(delay_seconds=6)
    running = start_stack(tmp_path, env=FAULT_ENV, generator_env=fake.generator_env())
    yield running
    running.stop()


async def test_calls_in_flight_ride_out_billing_killed_and_are_charged_once_it_is_back(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = [asyncio.ensure_future(generate(stack.gateway_url, account)) for _ in range(CALLS)]
    await eventually(lambda: len(fake.creates) >= CALLS, what="every job with the provider")
    await in_thread(kill, stack, "billing")
    # Billing stays down until every client has its answer: the waits need NATS and generators only.
    answered = await asyncio.gather(*calls)
    assert [c.ok for c in answered] == [True] * CALLS, answered
    await in_thread(restart, stack, "billing")
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2


async def test_a_stalled_billing_never_turns_a_made_image_into_an_error(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = [asyncio.ensure_future(generate(stack.gateway_url, account)) for _ in range(CALLS)]
    await eventually(lambda: len(fake.creates) >= CALLS, what="every job with the provider")
    billing = stack.stack.child("billing")
    billing.send_signal(signal.SIGSTOP)  # every status check now hangs to its deadline
    try:
        answered = await asyncio.gather(*calls)
    finally:
        billing.send_signal(signal.SIGCONT)
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
