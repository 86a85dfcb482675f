"""The one way every imagegen service uses NATS: how it connects, how it pulls from a durable
JetStream consumer, and how it backs off.

- ``connect(servers, name=…)``: the client of a service. Server list from ``IMAGEGEN_NATS_URL``
  (comma-separated), a client name from ``nats_names`` (so ``nats server report connections`` tells
  services apart), a timeout per attempt, and reconnects forever (at start-up too: a service starts
  before NATS and connects when it can), logging one line per outage rather than one per attempt.
- ``SlotPuller``: the loop of every pull consumer (the generator's jobs, billing's settlement, the
  gateway's webhooks). It fetches only as many messages as it has free slots and hands back what it
  has not started when it stops.
- ``Backoff``: the one retry policy (tenacity's exponential wait, capped): ``delay(n)`` is the nak
  delay of a message's n-th delivery, ``retry_forever(...)`` retries a start-up step with it.

Streams and buckets are created by ``imagegen_common.jetstream``; names live in ``nats_names``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from imagegen_common.settings import server_list

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off, ``first_seconds`` doubled per attempt up to ``max_seconds``.

    One policy for every retry in our NATS code: a message that could not be handled is nak'ed with
    ``delay(attempt)``; a start-up step is retried with ``retry_forever``. Built on tenacity's
    ``wait_exponential`` (the provider client uses tenacity too), so the formula is written once.
    """

    first_seconds: float = 1.0
    max_seconds: float = 30.0

    def wait(self) -> wait_exponential:
        """The tenacity wait strategy of this policy (for ``AsyncRetrying(wait=…)``)."""
        return wait_exponential(multiplier=self.first_seconds, min=self.first_seconds, max=self.max_seconds)

    def delay(self, attempt: int) -> float:
        """Delay after the ``attempt``-th try (1-based; a message's ``num_delivered``): first, 2 x
        first, 4 x first … never more than ``max_seconds``."""
        state = RetryCallState(retry_object=AsyncRetrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        return float(self.wait()(state))


#: Back-off of a handler that could not handle a message (the database is away, say).
HANDLER_BACKOFF = Backoff(first_seconds=1.0, max_seconds=60.0)
#: Back-off of a start-up step (JetStream not ready, a stream update racing another replica…).
STARTUP_BACKOFF = Backoff(first_seconds=0.5, max_seconds=30.0)
#: Back-off of a failed fetch (NATS away or reconnecting) before the pull loop tries again.
FETCH_ERROR_BACKOFF = Backoff(first_seconds=0.5, max_seconds=5.0)


async def retry_forever(
    step: Callable[[], Awaitable[T]], *, what: str, backoff: Backoff = STARTUP_BACKOFF
) -> T:
    """Runs ``step`` until it succeeds, waiting ``backoff`` between failures (each logged once).

    Meant for start-up steps that only wait for another system (NATS, JetStream) to be ready: the
    process keeps trying, its readiness probe tells the orchestrator. Bounded in its delay, not in
    its count; cancelling the caller stops it.
    """

    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what} failed, retrying",
            extra={
                "error": repr(error),
                "attempt": state.attempt_number,
                "retry_in_seconds": state.upcoming_sleep,
            },
        )

    async for attempt in AsyncRetrying(
        wait=backoff.wait(),
        retry=retry_if_exception_type(Exception),
        before_sleep=report,
        reraise=True,
    ):
        with attempt:
            return await step()
    raise AssertionError("unreachable: tenacity retries until the step succeeds")  # pragma: no cover


class _OutageLog:
    """nats-py calls ``error_cb`` on every failed (re)connect attempt; one line per outage is enough,
    and one when it is over."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reported = False
        #: Set once connected: before, an outage is the start-up's (error_cb reports it).
        self.client: Client | None = None

    async def on_error(self, error: Exception) -> None:
        log.debug("NATS connection attempt failed", extra={"client": self._name, "error": repr(error)})
        if not self._reported:
            self._reported = True
            log.warning("NATS unreachable, retrying", extra={"client": self._name, "error": repr(error)})

    async def on_disconnected(self) -> None:
        # nats-py also calls this when the client is closed on purpose: that is no outage.
        if self.client is None or self.client.is_closed or self._reported:
            return
        self._reported = True
        log.warning("NATS disconnected, reconnecting", extra={"client": self._name})

    async def on_connected(self) -> None:
        if self._reported:
            self._reported = False
            log.info("NATS reconnected", extra={"client": self._name})


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    connect_timeout_seconds: float = 5.0,
    reconnect_wait_seconds: float = 2.0,
    user: str = "",
    password: SecretStr | str = "",
) -> Client:
    """Connects a service to NATS and keeps it connected.

    ``servers`` is ``IMAGEGEN_NATS_URL`` as written (comma-separated URLs) or a list of URLs;
    ``name`` is the service's client name from ``nats_names`` (``nats_names.GATEWAY_CLIENT`` …).
    Returns only once connected: a missing server is retried forever, as is a lost connection
    later, every ``reconnect_wait_seconds``, with one log line per outage. Close it with
    ``drain()`` (finishes subscriptions) or ``close()``.

    ``user`` and ``password`` are the service's NATS credentials (``IMAGEGEN_NATS_USER``,
    ``IMAGEGEN_NATS_PASSWORD``; the users of ``nats_auth.ROLES``). They go into the CONNECT message
    only: never into the server URL, never into a log line.
    """
    urls = server_list(servers) if isinstance(servers, str) else [s for s in servers if s]
    if not urls:
        raise ValueError("no NATS server given")
    outages = _OutageLog(name)
    nc = await nats.connect(
        urls,
        name=name,
        connect_timeout=connect_timeout_seconds,
        reconnect_time_wait=reconnect_wait_seconds,
        # Never give up: not at start-up (NATS may come later) and not after a disconnect.
        max_reconnect_attempts=-1,
        error_cb=outages.on_error,
        disconnected_cb=outages.on_disconnected,
        reconnected_cb=outages.on_connected,
        **_credentials(user, password),
    )
    outages.client = nc
    await outages.on_connected()  # a start-up that waited for NATS says that it is over
    return nc


def _credentials(user: str, password: SecretStr | str) -> dict[str, str]:
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    if not user:
        if secret:
            raise ValueError("a NATS password without a user")
        return {}
    return {"user": user, "password": secret}


class SlotPuller:
    """Runs ``handle`` on the messages of a pull subscription, at most ``concurrency`` at a time, and
    fetches only as many messages as it has free slots. Every pull consumer in imagegen uses it.

    Why not faststream's ``PullSub`` (which billing used before): it fetches before a worker is
    free, so a process holds messages it is not working on while their ack wait runs out and NATS
    gives them to another process as well, and on stop it drops the messages it fetched without a
    nak, so they wait out their ack wait (ag2ai/faststream#2563).

    ``handle`` owns the message's ack (ack, nak with a delay, or term); when it is cancelled
    (``stop`` past its drain timeout) it should nak, so that another process takes the message at
    once. Use: ``puller = SlotPuller(await js.pull_subscribe_bind(durable=…, stream=…), handle,
    concurrency=4, fetch_timeout=1.0, name="…")``, ``puller.start()``, later
    ``await puller.stop(drain_timeout)``; unsubscribing is the caller's.
    """

    def __init__(
        self,
        sub: JetStreamContext.PullSubscription,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        concurrency: int,
        fetch_timeout: float,
        name: str,
        fetch_error_backoff: Backoff = FETCH_ERROR_BACKOFF,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._sub = sub
        self._handle = handle
        self._concurrency = concurrency
        self._fetch_timeout = fetch_timeout
        self._name = name
        self._fetch_error_backoff = fetch_error_backoff
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._fetching = False
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._pull_loop(), name=self._name)

    @property
    def in_flight(self) -> int:
        """Messages being handled now."""
        return len(self._tasks)

    async def stop(self, drain_timeout: float) -> int:
        """Stops fetching (messages a fetch under way brings are handed back), lets the handlers in
        flight finish for up to ``drain_timeout``, then cancels the others; returns their number."""
        self._stopping.set()
        if self._loop is not None:
            if not self._fetching:
                self._loop.cancel()  # waiting for a free slot or backing off: nothing fetched to lose
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
        failures = 0
        while not self._stopping.is_set():
            await self._slots.acquire()
            wanted = 1
            while not self._slots.locked() and wanted < self._concurrency:
                await self._slots.acquire()  # free right now: does not wait
                wanted += 1
            messages: list[Msg] = []
            pause = 0.0
            self._fetching = True
            try:
                messages = await self._sub.fetch(batch=wanted, timeout=self._fetch_timeout)
                failures = 0
            except TimeoutError:  # nothing to do (nats-py raises its own subclass or asyncio's)
                failures = 0
            except Exception as exc:  # NATS away or reconnecting: the loop must outlive it
                failures += 1
                pause = self._fetch_error_backoff.delay(failures)
                if failures == 1:  # one line per outage, not one per try
                    log.warning("fetching failed", extra={"loop": self._name, "error": type(exc).__name__})
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
            if pause:
                await asyncio.sleep(pause)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        finally:
            self._slots.release()
