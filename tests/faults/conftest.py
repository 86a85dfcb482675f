"""Fixtures of the fault-injection suite: one stack for the whole suite (starting one takes a while on
a busy machine), billing on a PostgreSQL database of its own, with a fake Replicate whose predictions
take long enough (6 s) for a fault to land mid-job. Each test uses accounts of its own, breaks the stack
and mends it (restarts what it killed, thaws what it froze) before it checks the books."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagegen_testing import postgres
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.faults import FAULT_ENV
from imagegen_testing.postgres import TemporaryDatabase
from imagegen_testing.stack import RunningStack, start_stack

PROVIDER_SECONDS = 6.0


@pytest.fixture(scope="package")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate() as server:
        server.behaviour = FakeBehaviour(delay_seconds=PROVIDER_SECONDS)
        yield server


@pytest.fixture(scope="package")
def database() -> Iterator[TemporaryDatabase]:
    why = postgres.reachable()
    if why is not None:
        pytest.skip(f"PostgreSQL not reachable: {why}")
    with TemporaryDatabase() as db:
        yield db


@pytest.fixture(scope="package")
def stack(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeReplicate, database: TemporaryDatabase
) -> Iterator[RunningStack]:
    env = {**FAULT_ENV, "IMAGEGEN_DATABASE_URL": database.url}
    running = start_stack(tmp_path_factory.mktemp("stack"), env=env, generator_env=fake.generator_env())
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def provider_speed(fake: FakeReplicate) -> None:
    fake.behaviour = FakeBehaviour(delay_seconds=PROVIDER_SECONDS)
