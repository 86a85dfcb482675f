"""The sharded transport against a real HTTP server (the fake Replicate): requests spread over small
pools, the capacity asked for, closing; and httpcore finding its async library without an import."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

import httpx
import pytest
from httpcore._synchronization import current_async_library

from imagegen_generator.providers.http_pool import SHARD_SIZE, ShardedTransport
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeReplicate


def client(fake: FakeReplicate, transport: ShardedTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=fake.url,
        transport=transport,
        headers={"Authorization": f"Bearer {fake.token}"},
        timeout=httpx.Timeout(30.0),
    )


def held_create(http: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    """A create that the fake holds open (``Prefer: wait``) until it is released."""
    return asyncio.create_task(
        http.post(
            "/v1/models/owner/name/predictions",
            json={"input": {"prompt": "x"}},
            headers={"Prefer": "wait=20"},
        )
    )


def test_the_capacity_is_at_least_the_connections_asked_for() -> None:
    assert ShardedTransport(100, shard_size=16).capacity == 112  # 7 pools
    assert ShardedTransport(1).capacity == SHARD_SIZE
    assert ShardedTransport(1040).capacity == 17 * SHARD_SIZE
    assert ShardedTransport(128, shard_size=64).in_flight == (0, 0)
    with pytest.raises(ValueError):
        ShardedTransport(0)


async def test_held_requests_spread_so_that_no_pool_holds_more_than_its_size(
    fake_replicate: FakeReplicate,
) -> None:
    fake_replicate.behaviour.hold = True
    transport = ShardedTransport(100, shard_size=16)
    async with client(fake_replicate, transport) as http:
        held = [held_create(http) for _ in range(100)]
        # All of them reach the server at once: none waits for a connection below the capacity.
        await eventually(
            lambda: len(fake_replicate.creates) == 100,
            what="100 requests held at once",
            detail=lambda: f"{len(fake_replicate.creates)} arrived, in flight {transport.in_flight}",
        )
        assert sum(transport.in_flight) == 100
        assert max(transport.in_flight) <= 16
        assert min(transport.in_flight) >= 100 // 7  # evenly: the least busy pool is chosen
        fake_replicate.release()
        responses = await asyncio.gather(*held)
        assert [r.status_code for r in responses] == [201] * 100
        assert transport.in_flight == (0,) * 7
        assert 100 <= transport.open_connections <= 112  # kept alive for the next requests
    # Closing the client closes every pool.
    assert transport.open_connections == 0


async def test_a_request_is_in_flight_until_its_response_is_closed(fake_replicate: FakeReplicate) -> None:
    transport = ShardedTransport(4, shard_size=2)
    async with client(fake_replicate, transport) as http:
        first = await http.send(http.build_request("GET", "/v1/predictions/none"), stream=True)
        assert transport.in_flight == (1, 0)
        second = await http.send(http.build_request("GET", "/v1/predictions/none"), stream=True)
        assert transport.in_flight == (1, 1)
        await first.aread()  # read to the end and closed: its connection is free again
        assert transport.in_flight == (0, 1)
        await second.aclose()
        await second.aclose()  # counted down once only
        assert transport.in_flight == (0, 0)
        # The second was closed unread, so its connection is gone; the first one's is kept alive, and
        # a lone request goes to the first pool and reuses it.
        assert transport.open_connections == 1
        for _ in range(3):
            assert (await http.get("/v1/predictions/none")).status_code == 404
        assert transport.open_connections == 1


async def test_a_failed_request_is_not_counted_in_flight() -> None:
    transport = ShardedTransport(4, shard_size=2)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")
    assert transport.in_flight == (0, 0)


async def test_closing_the_transport_ends_the_requests_in_flight(fake_replicate: FakeReplicate) -> None:
    fake_replicate.behaviour.hold = True
    transport = ShardedTransport(8, shard_size=4)
    http = client(fake_replicate, transport)
    held = [held_create(http) for _ in range(8)]
    await eventually(lambda: len(fake_replicate.creates) == 8, what="8 requests held")
    await transport.aclose()
    results = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(result, httpx.TransportError) for result in results), results
    assert transport.open_connections == 0
    await http.aclose()


class _Lookups(importlib.abc.MetaPathFinder):
    """Records the modules that the import system searches for (a failing import searches)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        self.names.append(fullname)
        return None


async def test_httpcore_finds_the_async_library_without_searching_for_a_module() -> None:
    # httpcore runs `import sniffio` on every lock, event and semaphore it sets up: without sniffio
    # installed each of those imports searches the filesystem and fails.
    lookups = _Lookups()
    sys.meta_path.insert(0, lookups)
    try:
        assert current_async_library() == "asyncio"
    finally:
        sys.meta_path.remove(lookups)
    assert lookups.names == []
