"""Fixtures of the gateway's tests: JetStream KV buckets on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from imagegen_common.jetstream import ensure_key_value

KvFactory = Callable[[KeyValueConfig], Awaitable[KeyValue]]


@pytest.fixture
async def connect(nats_url: str) -> AsyncIterator[Callable[[], Awaitable[NATS]]]:
    """Opens NATS connections (as separate gateway replicas would); all closed after the test."""
    opened: list[NATS] = []

    async def open_one() -> NATS:
        connection = await nats.connect(nats_url)
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        await connection.close()


@pytest.fixture
def key_value(connect: Callable[[], Awaitable[NATS]]) -> KvFactory:
    """The bucket of a config, on a connection of its own (one replica's view of the bucket)."""

    async def bucket(config: KeyValueConfig) -> KeyValue:
        return await ensure_key_value((await connect()).jetstream(), config)

    return bucket
