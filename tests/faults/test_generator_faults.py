"""A generator killed (kill -9) or frozen (SIGSTOP) mid-job: its jobs go to another replica after the
short ack wait (10 s; a working replica's heartbeat keeps long jobs its own), well within the job's
deadline, and each image is charged once however many replicas made it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.faults import FAULT_ENV, check_books, generate, in_thread, kill
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 3


@pytest.fixture
def stack(tmp_path: Path, fake: FakeReplicate) -> Iterator[RunningStack]:
    fake.behaviour = FakeBehaviour(delay_seconds=4)
    # A deadline shorter than NATS' old 30 s ack wait: a job stranded that long would time out.
    env = {**FAULT_ENV, "IMAGEGEN_JOB_TIMEOUT_SECONDS": "28"}
    running = start_stack(tmp_path, env=env, generator_env=fake.generator_env())
    yield running
    running.stop()


async def test_a_killed_generators_jobs_are_made_by_another_within_their_deadline(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = [asyncio.ensure_future(generate(stack.gateway_url, account)) for _ in range(CALLS)]
    await eventually(lambda: len(fake.creates) >= CALLS, what="every job with the first replica")
    await in_thread(kill, stack, stack.generators[0])
    await in_thread(stack.add_generator, "generator-spare")
    answered = await asyncio.gather(*calls)
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2


async def test_a_frozen_generators_jobs_are_made_elsewhere_and_charged_once_when_it_thaws(
    stack: RunningStack, fake: FakeReplicate
) -> None:
    account = stack.create_account(credits=100)
    calls = [asyncio.ensure_future(generate(stack.gateway_url, account)) for _ in range(CALLS)]
    await eventually(lambda: len(fake.creates) >= CALLS, what="every job with the first replica")
    frozen = stack.stack.child(stack.generators[0])
    frozen.send_signal(signal.SIGSTOP)
    try:
        await in_thread(stack.add_generator, "generator-spare")
        answered = await asyncio.gather(*calls)
    finally:
        frozen.send_signal(signal.SIGCONT)  # it finishes its copies too: outcomes are deduplicated
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2
