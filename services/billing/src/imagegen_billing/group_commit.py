"""Group commit: the ledger's writes that arrive together are made in one transaction.

A burst of reservations and settlements (a thousand MCP calls at once, their outcomes twenty seconds
later) used to cost one transaction, one commit (an fsync) each, one after the other on SQLite and on
one account's row lock on PostgreSQL. Here every write unit is queued; one loop takes whatever is
queued, runs the units in arrival order in one transaction and commits once. Each unit is decided
against what the units before it left (the ledger's batch reads the rows once and decides every call
in order), so per-account order and the no-overdraw rule are those of one-at-a-time execution.

Each caller gets its own answer:
- a unit that raises a ``BillingError`` (refused: short of credits, a job id reused, …) has that error
  as its answer and the others go on. Such a unit must raise **before it writes anything** (every
  unit of the ledger does: its refusals are decided from what it read, before the group writes);
- any other failure (a unique key raced by another process, a deadlock, a lost connection) rolls the
  group back, and each of its units is run again alone, in a transaction of its own, so that only the
  units that fail alone fail.

Admission: nothing is refused because the database is busy. A unit waits in the queue for as long as
its caller waits (the caller's gRPC deadline); a caller that gives up while its unit is still queued
takes nothing with it (the unit is skipped). A caller that gives up while its unit is in the
transaction being committed cannot stop it: the unit's ``abandoned`` compensation (releasing the
credits it held) then runs in the next group, so that an error answer never leaves credits held.

Units are plain functions of a sync connection, run by ``Database.run_write``: on SQLite a group is
one hop to the writer thread (see ``db``), however many statements it has.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.engine import Connection

from imagegen_billing.db import Database
from imagegen_billing.domain import BillingError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A write unit: statements on the group's connection, inside its transaction (a plain function: on
#: SQLite it runs in the writer thread, so it must not touch the event loop's objects).
Work = Callable[[Connection], T]
#: A compensation for a committed unit whose caller is gone: given the unit's result.
Abandoned = Callable[[T], Work[Any] | None]


class Batch(Protocol):
    """Units of one kind that run together, as a few set-based statements instead of the same few
    statements per unit. ``run`` answers each item in order (its result, or the BillingError that
    refuses it) as if they had run one after the other; it must refuse before it writes."""

    def run(self, conn: Connection, items: list[Any]) -> list[tuple[Any, BillingError | None]]: ...


#: Most units in one transaction: keeps one transaction's locks and its rollback bounded.
DEFAULT_MAX_GROUP = 512


@dataclass(slots=True)
class _Unit(Generic[T]):
    work: Work[T] | None
    future: asyncio.Future[T]
    abandoned: Abandoned[T] | None
    #: A unit that runs with its neighbours of the same batch (then ``work`` is None).
    batch: Batch | None = None
    item: Any = None


class GroupCommit:
    """Runs the write units of concurrent callers in shared transactions (see the module docstring).

    Use: ``result = await group.run(work)``; ``await group.aclose()`` when the database closes.
    The loop starts with the first unit, in the running event loop.
    """

    def __init__(self, db: Database, max_group: int = DEFAULT_MAX_GROUP) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._db = db
        self._max_group = max_group
        self._queue: collections.deque[_Unit[Any]] = collections.deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Transactions committed and units run (tests and the benchmark read them).
        self.transactions = 0
        self.units = 0

    async def run(self, work: Work[T], abandoned: Abandoned[T] | None = None) -> T:
        """Runs ``work`` in the next group's transaction and returns its result once committed.

        ``abandoned(result)`` returns a unit that undoes ``work`` (or None), for when the caller is
        cancelled after its unit ran: that unit is committed in a later group.
        """
        if self._closed:
            raise RuntimeError("the ledger is closed")
        unit: _Unit[T] = _Unit(work, asyncio.get_running_loop().create_future(), abandoned)
        self._enqueue(unit)
        return await unit.future

    async def run_batched(self, batch: Batch, item: Any, abandoned: Abandoned[T] | None = None) -> T:
        """Like ``run``, for a unit that consecutive units of the same ``batch`` run together with."""
        if self._closed:
            raise RuntimeError("the ledger is closed")
        unit: _Unit[T] = _Unit(None, asyncio.get_running_loop().create_future(), abandoned, batch, item)
        self._enqueue(unit)
        return await unit.future

    def _enqueue(self, unit: _Unit[Any]) -> None:
        self._queue.append(unit)
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="billing-group-commit")

    async def aclose(self) -> None:
        """Stops the loop after the group under way (whose callers get their answers); units still
        queued fail."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        while self._queue:
            unit = self._queue.popleft()
            if not unit.future.done():
                unit.future.set_exception(RuntimeError("the ledger is closed"))

    async def _loop(self) -> None:
        while not self._closed:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            group: list[_Unit[Any]] = []
            while self._queue and len(group) < self._max_group:
                unit = self._queue.popleft()
                if not unit.future.done():  # a caller gone while queued: it took nothing
                    group.append(unit)
            if group:
                await self._commit(group)

    async def _commit(self, group: list[_Unit[Any]]) -> None:
        try:
            answers = await self._db.run_write(functools.partial(_run_units, group))
        except asyncio.CancelledError:
            # The loop was cancelled (its event loop is closing; aclose lets the group finish): the
            # callers hear that the ledger closed, and a hold it committed is the reaper's.
            for unit in group:
                if not unit.future.done():
                    unit.future.set_exception(RuntimeError("the ledger is closed"))
            raise
        except Exception as failure:
            if len(group) == 1:
                _answer(group[0], None, failure)
                return
            log.info(
                "a grouped transaction failed; running its units alone",
                extra={"units": len(group), "error": type(failure).__name__},
            )
            for unit in group:
                if self._closed:  # rolled back, so nothing of it is held: no waits past the close
                    _answer(unit, None, RuntimeError("the ledger is closed"))
                elif not unit.future.done():
                    await self._commit([unit])
            return
        self.transactions += 1
        self.units += len(group)
        for unit, result, error in answers:
            if unit.future.cancelled() and error is None and unit.abandoned is not None:
                undo = unit.abandoned(result)
                if undo is not None:
                    self._compensate(undo)
                continue
            _answer(unit, result, error)

    def _compensate(self, work: Work[Any]) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def report(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("undoing the write of a caller that gave up failed", exc_info=done.exception())

        future.add_done_callback(report)
        self._queue.append(_Unit(work, future, None))
        self._arrived.set()


_Answered = tuple[_Unit[Any], Any, BillingError | None]


def _run_units(group: list[_Unit[Any]], conn: Connection) -> list[_Answered]:
    """Runs a group's units in order on its transaction; consecutive units of one batch together."""
    answers: list[_Answered] = []
    index = 0
    while index < len(group):
        unit = group[index]
        if unit.batch is not None:
            end = index + 1
            while end < len(group) and group[end].batch is unit.batch:
                end += 1
            run = group[index:end]
            results = unit.batch.run(conn, [u.item for u in run])
            answers.extend((u, result, refused) for u, (result, refused) in zip(run, results, strict=True))
            index = end
            continue
        assert unit.work is not None
        try:
            answers.append((unit, unit.work(conn), None))
        except BillingError as refused:  # refused before writing: the others go on
            answers.append((unit, None, refused))
        index += 1
    return answers


def _answer(unit: _Unit[Any], result: Any, error: BaseException | None) -> None:
    if unit.future.done():
        return
    if error is None:
        unit.future.set_result(result)
    else:
        unit.future.set_exception(error)
