"""Billing killed or stalled while calls wait for their images: the calls are answered from the reply
subject (billing's status checks are best-effort), billing settles from the outcome events once it is
back, and no client is told of an error it was charged for."""

from __future__ import annotations

import asyncio
import signal

import pytest

from imagegen_cli.processes import http_ok
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.faults import (
    calls_with_the_provider,
    check_books,
    generate,
    in_thread,
    kill,
    restart,
)
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 4


async def test_calls_in_flight_ride_out_billing_killed_and_are_charged_once_it_is_back(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    await in_thread(kill, stack, "billing")
    try:
        # Billing stays down until every client has its answer: waits need NATS and generators only.
        answered = await asyncio.gather(*calls)
    finally:
        await in_thread(restart, stack, "billing")
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2
    # The gateway is back on billing within its short reconnect backoff (not gRPC's default 2 min).
    stack.wait_for(http_ok(f"{stack.gateway_url}/readyz"), timeout=15, what="the gateway back on billing")
    after = await generate(stack.gateway_url, account)
    assert after.ok, after


async def test_a_stalled_billing_never_turns_a_made_image_into_an_error(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    billing = stack.stack.child("billing")
    billing.send_signal(signal.SIGSTOP)  # every status check now hangs to its deadline
    try:
        answered = await asyncio.gather(*calls)
    finally:
        billing.send_signal(signal.SIGCONT)
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
