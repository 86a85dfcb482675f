"""Billing's record of every waiting job, read for all of them at once: the fallback of a wait.

A wait learns its job's outcome from the reply subject; billing's record covers a reply that never
comes here (the repeat of an idempotent request, whose job replies to the first call's gateway). Asking
billing once per wait and poll interval cost one RPC, one database read and, when the reply came
first, one RPC cancelled mid-read for each waiting job. Here every wait registers its job id and one
``BatchGetReservations`` per poll interval reads them all (in chunks of at most ``MAX_BATCH``); a wait
whose reservation is no longer held is woken with it. Leaving is a set removal: nothing is cancelled
in flight. The fallback is best-effort: a batch that fails is logged and the waits go on (the deadline
alone ends a wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

from imagegen_gateway.domain import Reservation, ReservationState
from imagegen_gateway.errors import GatewayError

log = logging.getLogger(__name__)

#: Most job ids billing takes in one BatchGetReservations (its contract's bound).
MAX_BATCH = 1000


class ReservationReader(Protocol):
    """What the watch asks of billing (``BillingClient.reservations``)."""

    async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
        """The reservations of those jobs that have one; unknown ids are left out."""
        ...


class StatusWatch:
    """Watches the reservations of waiting jobs, one batched read per ``interval`` for all of them.

    ``start`` and ``stop`` bracket the application's life. A job watched while the watch is not
    running is simply not polled: its wait still ends with its reply or its deadline.
    """

    def __init__(self, billing: ReservationReader, interval: float, max_batch: int = MAX_BATCH) -> None:
        if interval <= 0 or max_batch <= 0:
            raise ValueError("interval and max_batch must be positive")
        self._billing = billing
        self.interval = interval
        self.max_batch = max_batch
        # One job may have several waits (concurrent repeats of one idempotent request).
        self._waiters: dict[str, set[asyncio.Future[Reservation]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        """How many jobs are watched now."""
        return len(self._waiters)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="imagegen-status-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Future[Reservation]]:
        """A future that billing's reservation of ``job_id`` resolves once it is no longer held
        (captured or released); it stays pending while the job is held, unknown or billing is away."""
        settled: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(settled)
        try:
            yield settled
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(settled)
                if not waiters:
                    del self._waiters[job_id]
            settled.cancel()  # a bare future: nothing in flight is interrupted

    async def poll(self) -> None:
        """Reads every watched job's reservation (``max_batch`` ids per call, one call after the
        other) and wakes the waits of those no longer held."""
        job_ids = list(self._waiters)
        for start in range(0, len(job_ids), self.max_batch):
            chunk = job_ids[start : start + self.max_batch]
            try:
                found = await self._billing.reservations(chunk)
            except GatewayError as error:
                log.warning(
                    "job statuses unavailable; still waiting", extra={"jobs": len(chunk), "error": str(error)}
                )
                continue
            for reservation in found:
                if reservation.state is ReservationState.HELD:
                    continue
                for settled in self._waiters.get(reservation.job_id, ()):
                    if not settled.done():
                        settled.set_result(reservation)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._waiters:
                continue
            try:
                await self.poll()
            except Exception:  # the loop serves every wait: one bad round must not end it
                log.exception("reading job statuses failed; still waiting")
