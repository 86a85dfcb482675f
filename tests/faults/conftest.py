"""Fixtures of the fault-injection suite: a stack per test (each test breaks it), with a fake
Replicate whose predictions take long enough for a fault to land mid-job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagegen_testing.fake_replicate import FakeReplicate


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate() as server:
        yield server
