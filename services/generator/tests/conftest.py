"""Fixtures of the generator's tests: settings on a fresh NATS, and the job bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest

from imagegen_generator.config import GeneratorSettings
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.jobs import Bus, connect_bus
from imagegen_testing.nats_server import NatsServer

PUBLIC_BASE_URL = "http://images.imagegen.test"


def generator_settings(nats_url: str, **overrides: Any) -> GeneratorSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "public_base_url": PUBLIC_BASE_URL,
        "provider": "local",
        "generator_ops_listen": "127.0.0.1:0",
        "generator_ack_wait_seconds": 5.0,
        "generator_retry_delay_seconds": 0.1,
        "generator_drain_timeout_seconds": 5.0,
        "generator_fetch_timeout_seconds": 0.5,
        "replicate_retry_initial_seconds": 0.05,
        "replicate_retry_max_seconds": 2.0,
        "replicate_poll_interval_seconds": 0.05,
        "log_format": "text",
        **overrides,
    }
    return GeneratorSettings(**values)


SettingsFactory = Callable[..., GeneratorSettings]


@pytest.fixture
def local_settings(nats_server: NatsServer) -> SettingsFactory:
    """Settings of a replica on this test's NATS with the local provider (keyword overrides)."""
    return partial(generator_settings, nats_server.url)


@pytest.fixture
def replicate_settings(nats_server: NatsServer, fake_replicate: FakeReplicate) -> SettingsFactory:
    """Settings of a replica on this test's NATS calling the fake Replicate (keyword overrides)."""
    return partial(
        generator_settings,
        nats_server.url,
        provider="replicate",
        replicate_api_token=fake_replicate.token,
        replicate_base_url=fake_replicate.url,
    )


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A client of this test's own NATS, subscribed to the test's reply subjects."""
    bus = await connect_bus(nats_server.url)
    yield bus
    await bus.nc.close()
