"""Fixtures of the cross-service tests: whole stacks of real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagegen_testing.stack import RunningStack, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """NATS, billing, one generator (local provider) and the gateway, shared by a test module;
    every test makes accounts of its own."""
    running = start_stack(
        tmp_path_factory.mktemp("stack"), gateway_env={"IMAGEGEN_AUTH_CACHE_SECONDS": "0.5"}
    )
    yield running
    running.stop()
