"""NATS killed (kill -9) mid-job and started again on the same store: every service reconnects by
itself; whatever each client was told, the books hold (an image it got is charged once, an error is
not charged) once billing and its reaper have caught up."""

from __future__ import annotations

import asyncio

import pytest

from imagegen_cli.processes import http_ok
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.faults import calls_with_the_provider, check_books, generate, in_thread
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 3


def kill_and_restart_nats(stack: RunningStack) -> None:
    stack.nats.stop(kill=True)
    stack.nats.start()  # same port, same JetStream store


async def test_nats_killed_mid_job_and_restarted_on_its_store_leaves_the_books_right(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    await in_thread(kill_and_restart_nats, stack)
    answered = await asyncio.gather(*calls)
    assert all(c.ok is not None for c in answered), answered  # every client got an answer
    check_books(stack, account, answered, stack.gateway_url)

    # and the stack works as before
    stack.wait_for(http_ok(f"{stack.gateway_url}/readyz"), what="the gateway back on NATS")
    after = await generate(stack.gateway_url, account)
    assert after.ok, after
    check_books(stack, account, [*answered, after], stack.gateway_url)
