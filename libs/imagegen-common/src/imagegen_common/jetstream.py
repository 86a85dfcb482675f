"""Create-or-update of the JetStream streams and buckets a service needs, from nats_names' configs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import KV_STREAM_TEMPLATE
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates the stream, or brings an existing one to ``config`` (idempotent, safe to race)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # another replica created it first: fall through to the update
            await js.stream_info(config.name)
    await js.update_stream(config)


async def ensure_key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket, created on first use; an existing one is brought to ``config``'s replicas, TTL and
    history (a deployment that grows from one NATS server to three, say)."""
    try:
        bucket = await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except BadRequestError:  # another replica created it first
            bucket = await js.key_value(config.bucket)
    stream = (await js.stream_info(KV_STREAM_TEMPLATE.format(bucket=config.bucket))).config
    wanted = {
        "num_replicas": config.replicas,
        "max_age": config.ttl or 0.0,
        "max_msgs_per_subject": config.history,
    }
    if any((getattr(stream, field) or 0) != value for field, value in wanted.items()):
        await js.update_stream(stream.evolve(**wanted))
    return bucket


#: Pause after a failed fetch (NATS away or reconnecting) before trying again.
FETCH_ERROR_PAUSE_SECONDS = 0.5

log = logging.getLogger(__name__)


class SlotPuller:
    """Runs ``handle`` on the messages of a pull subscription, at most ``concurrency`` at a time, and
    fetches only as many messages as it has free slots.

    Why not faststream's ``PullSub``: it fetches before a worker is free, so a process holds messages
    it is not working on while their ack wait runs out and NATS gives them to another process as
    well (ag2ai/faststream#2563), and on stop it drops the messages it fetched without a nak.

    ``handle`` owns the message's ack; when it is cancelled (``stop`` past its drain timeout) it
    should nak, so that another process takes the message at once.
    """

    def __init__(
        self,
        sub: JetStreamContext.PullSubscription,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        concurrency: int,
        fetch_timeout: float,
        name: str,
    ) -> None:
        self._sub = sub
        self._handle = handle
        self._concurrency = concurrency
        self._fetch_timeout = fetch_timeout
        self._name = name
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._fetching = False
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._pull_loop(), name=self._name)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def stop(self, drain_timeout: float) -> int:
        """Stops fetching (messages a fetch under way brings are handed back), lets the handlers in
        flight finish for up to ``drain_timeout``, then cancels the others; returns their number."""
        self._stopping.set()
        if self._loop is not None:
            if not self._fetching:
                self._loop.cancel()  # waiting for a free slot: nothing fetched to lose
            try:
                await self._loop
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("the pull loop had stopped on an error", extra={"loop": self._name})
        if not self._tasks:
            return 0
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
        return len(unfinished)

    async def _pull_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            wanted = 1
            while not self._slots.locked() and wanted < self._concurrency:
                await self._slots.acquire()  # free right now: does not wait
                wanted += 1
            messages: list[Msg] = []
            self._fetching = True
            try:
                messages = await self._sub.fetch(batch=wanted, timeout=self._fetch_timeout)
            except TimeoutError:  # nothing to do (nats-py raises its own subclass or asyncio's)
                pass
            except Exception as exc:  # NATS away or reconnecting: the loop must outlive it
                log.warning("fetching failed", extra={"loop": self._name, "error": type(exc).__name__})
                await asyncio.sleep(FETCH_ERROR_PAUSE_SECONDS)
            finally:
                self._fetching = False
            for _ in range(wanted - len(messages)):
                self._slots.release()
            for msg in messages:
                if self._stopping.is_set():
                    with contextlib.suppress(nats.errors.Error):
                        await msg.nak()  # fetched as we stopped: another process takes it now
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._run(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        finally:
            self._slots.release()
