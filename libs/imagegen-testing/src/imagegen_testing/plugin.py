"""pytest plugin (registered by entry point): fixtures every imagegen test tree can use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen_testing import postgres
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.nats_server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test (stop/start it to inject faults)."""
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture
def fake_replicate() -> Iterator[FakeReplicate]:
    """A fake Replicate API on a free port, for one test: point the client at ``fake.url`` with
    ``fake.token``; set ``fake.behaviour``; read ``fake.requests`` / ``fake.creates`` / ``fake.cancels``."""
    with FakeReplicate() as fake:
        yield fake


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    """``IMAGEGEN_TEST_NATS_URL`` when set (a shared server; tests must not assume it is empty),
    otherwise the URL of a fresh server of this test."""
    external = os.environ.get("IMAGEGEN_TEST_NATS_URL")
    if external:
        return external
    server: NatsServer = request.getfixturevalue("nats_server")
    return server.url


@pytest.fixture(scope="session")
def _postgres_available() -> None:
    why_not = postgres.reachable()
    if why_not is None:
        return
    message = f"PostgreSQL at {postgres.server_url()} is unreachable ({why_not})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true the PostgreSQL tests must run")
    pytest.skip(message)


@pytest.fixture
def postgres_url(_postgres_available: None) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+asyncpg) of a new empty database, dropped after the test."""
    with postgres.TemporaryDatabase() as database:
        yield database.sqlalchemy_url
