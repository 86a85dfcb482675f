"""An httpx transport made of several small connection pools rather than one large one.

httpcore's pool walks all its connections and all its queued requests each time a request starts or a
response ends (``AsyncConnectionPool._assign_requests_to_connections``, ``is_idle`` on every
connection): with one connection per job and a thousand jobs waiting on Replicate in one pool, that
walk was a third of a replica's CPU. Here each pool holds at most ``shard_size`` connections and a
request goes to the pool with the fewest requests in flight, so each walk is over a small pool while
the capacity stays the one asked for.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

#: Connections of one pool. Small enough that a pool's walks are cheap, large enough that a few
#: pools make up a replica's capacity.
SHARD_SIZE = 64


class ShardedTransport(httpx.AsyncBaseTransport):
    """``ceil(max_connections / shard_size)`` ``httpx.AsyncHTTPTransport`` pools of ``shard_size``
    connections each; every request goes to the pool with the fewest requests in flight.

    A request counts as in flight from its send until its response stream is closed (its connection
    is busy until then). So while no more than ``max_connections`` requests are in flight no pool has
    more than ``shard_size`` of them, and no request waits for a connection below that capacity.
    """

    def __init__(self, max_connections: int, *, shard_size: int = SHARD_SIZE) -> None:
        if max_connections < 1 or shard_size < 1:
            raise ValueError("max_connections and shard_size must be at least 1")
        limits = httpx.Limits(max_connections=shard_size, max_keepalive_connections=shard_size)
        self.shard_size = shard_size
        self._shards = [
            httpx.AsyncHTTPTransport(limits=limits) for _ in range(math.ceil(max_connections / shard_size))
        ]
        self._in_flight = [0] * len(self._shards)

    @property
    def capacity(self) -> int:
        """Connections of all the pools together (at least the ``max_connections`` asked for)."""
        return len(self._shards) * self.shard_size

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Requests in flight per pool (sent and their response not closed yet)."""
        return tuple(self._in_flight)

    @property
    def open_connections(self) -> int:
        """Connections the pools hold, in use or kept alive."""
        return sum(len(shard._pool.connections) for shard in self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The first of the least busy: a lone request reuses the first pool's kept-alive connections.
        index = min(range(len(self._shards)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._in_flight[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CountedStream(response.stream, lambda: self._done(index)),
            extensions=response.extensions,
        )

    def _done(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its pool once, when it is closed, that the request is done."""

    def __init__(self, stream: httpx.AsyncByteStream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close()
