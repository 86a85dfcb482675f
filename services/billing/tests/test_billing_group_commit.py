"""Group commit on a real database, SQLite and PostgreSQL: concurrent reservations and settlements
share transactions, keep the no-overdraw rule, and each caller still gets its own answer; a caller
that gives up never leaves credits held."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

from imagegen_billing.accounts import Accounts
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    AccountNotFoundError,
    AlreadySettledError,
    InsufficientCreditsError,
    JobError,
    JobIdReusedError,
    JobResult,
    JobSettlement,
    ReleaseReason,
    ReservationNotFoundError,
    ReservationState,
    ReserveRequest,
    Settlement,
    SettleOutcome,
)
from imagegen_billing.group_commit import GroupCommit
from imagegen_billing.ledger import Ledger
from imagegen_billing.models import accounts

ConsistencyCheck = Callable[[Database], Awaitable[None]]
IMAGE = JobResult(image_url="http://x/images/img.png")
FAILURE = JobResult(error=JobError.PROVIDER_ERROR, error_message="the provider broke")


def _noop(conn: Connection) -> None:
    return None


@contextlib.contextmanager
def _listening(db: Database, count: Callable[..., None]) -> Iterator[None]:
    """``count`` sees every statement the database runs, on whichever engine (see sync_engines)."""
    for engine in db.sync_engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        yield
    finally:
        for engine in db.sync_engines:
            event.remove(engine, "before_cursor_execute", count)


def _wait_in_unit(loop: asyncio.AbstractEventLoop, awaitable: Coroutine[Any, Any, Any]) -> None:
    """Waits, inside a unit, for a coroutine of the test's event loop: from SQLite's writer thread,
    or from SQLAlchemy's greenlet on the loop itself (PostgreSQL)."""
    if threading.current_thread() is threading.main_thread():
        await_only(awaitable)
    else:
        asyncio.run_coroutine_threadsafe(awaitable, loop).result()


async def test_concurrent_batches_share_transactions_and_never_overdraw(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    first, _, _ = await accounts_repo.create("ada@example.test", 1000)
    second, _, _ = await accounts_repo.create("bob@example.test", 500)
    attempts, amount = 300, 7

    async def reserve(n: int) -> str:
        account = first if n % 2 else second
        try:
            await ledger.reserve_batch([ReserveRequest(account.id, f"img_{n}", amount)])
        except InsufficientCreditsError:
            return "short"
        return "ok"

    answers = await asyncio.gather(*(reserve(n) for n in range(attempts)))
    held = [n for n, answer in enumerate(answers) if answer == "ok"]
    assert len([n for n in held if n % 2]) == 1000 // amount
    assert len([n for n in held if not n % 2]) == 500 // amount
    assert ledger.group.units == attempts
    assert ledger.group.transactions < attempts  # grouped: far fewer commits than reservations
    assert (await accounts_repo.get(first.id)).credits == 1000 % amount
    assert (await accounts_repo.get(second.id)).credits == 500 % amount

    before = ledger.group.transactions
    settled = await asyncio.gather(*(ledger.settle(f"img_{n}", IMAGE) for n in held))
    assert {s.outcome for s in settled} == {SettleOutcome.CAPTURED}
    assert ledger.group.transactions - before < len(held)
    assert (await accounts_repo.get(first.id)).reserved_credits == 0
    await check_consistent(db)


async def test_each_caller_of_one_group_gets_its_own_answer(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    await ledger.reserve(ReserveRequest(account.id, "img_old", 3))
    before = ledger.group.transactions
    results = await asyncio.gather(
        ledger.reserve(ReserveRequest(account.id, "img_fits", 4)),
        ledger.reserve(ReserveRequest(account.id, "img_short", 4)),  # 3 left after img_fits
        ledger.reserve(ReserveRequest("acc_nobody", "img_orphan", 1)),
        ledger.reserve(ReserveRequest(account.id, "img_old", 5)),  # the id holds 3 credits
        ledger.settle("img_unknown", IMAGE),
        ledger.settle("img_old", IMAGE),
        return_exceptions=True,
    )
    assert ledger.group.transactions - before == 1
    fits, short, orphan, reused, unknown, captured = results
    assert not isinstance(fits, BaseException) and fits.changed and fits.credits == 3
    assert isinstance(short, InsufficientCreditsError)
    assert isinstance(orphan, AccountNotFoundError)
    assert isinstance(reused, JobIdReusedError)
    assert not isinstance(unknown, BaseException) and unknown.outcome is SettleOutcome.UNKNOWN_JOB
    assert not isinstance(captured, BaseException) and captured.outcome is SettleOutcome.CAPTURED
    after = await accounts_repo.get(account.id)
    assert (after.credits, after.reserved_credits) == (3, 4)
    await check_consistent(db)


async def test_a_unit_that_fails_rolls_back_alone(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)

    def breaks_after_writing(conn: Connection) -> None:
        conn.execute(update(accounts).where(accounts.c.id == account.id).values(credits=1_000_000))
        raise RuntimeError("a failure that is no refusal")

    results = await asyncio.gather(
        ledger.reserve(ReserveRequest(account.id, "img_a", 2)),
        ledger.group.run(breaks_after_writing),
        ledger.reserve(ReserveRequest(account.id, "img_b", 2)),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert not isinstance(results[0], BaseException) and results[0].changed
    assert not isinstance(results[2], BaseException) and results[2].changed
    after = await accounts_repo.get(account.id)
    assert (after.credits, after.reserved_credits) == (6, 4)
    await check_consistent(db)


async def _hold_the_group(ledger: Ledger) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Event]:
    """A unit that keeps the group's transaction open until ``release`` is set."""
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold(conn: Connection) -> None:
        loop.call_soon_threadsafe(started.set)
        _wait_in_unit(loop, release.wait())

    return asyncio.create_task(ledger.group.run(hold)), started, release


async def test_a_caller_that_gives_up_in_the_transaction_leaves_nothing_held(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    holder, started, release = await _hold_the_group(ledger)
    caller = asyncio.create_task(ledger.reserve_batch([ReserveRequest(account.id, "img_gone", 4)]))
    await started.wait()  # the reservation is in the same group, behind the holder
    caller.cancel()  # its deadline passed: the caller gets an error ...
    release.set()
    await holder
    await ledger.group.run(_noop)  # after the compensation, which was queued first
    with pytest.raises(asyncio.CancelledError):
        await caller
    reservation = await ledger.reservation("img_gone")  # ... and its credits are not held
    assert reservation.state is ReservationState.RELEASED
    assert reservation.release_reason is ReleaseReason.TIMEOUT
    after = await accounts_repo.get(account.id)
    assert (after.credits, after.reserved_credits) == (10, 0)
    await check_consistent(db)


async def test_a_caller_that_gives_up_while_queued_takes_nothing(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    holder, started, release = await _hold_the_group(ledger)
    await started.wait()
    caller = asyncio.create_task(ledger.reserve_batch([ReserveRequest(account.id, "img_gone", 4)]))
    await asyncio.sleep(0)  # queued for the next group
    caller.cancel()
    release.set()
    await holder
    await ledger.group.run(_noop)
    with pytest.raises(ReservationNotFoundError):
        await ledger.reservation("img_gone")
    assert (await accounts_repo.get(account.id)).credits == 10
    await check_consistent(db)


async def test_a_closed_group_refuses_new_units(db: Database) -> None:
    group = GroupCommit(db)
    await group.run(_noop)
    await group.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await group.run(_noop)


async def test_a_burst_with_one_fresh_token_writes_its_last_use_once(
    db: Database, accounts_repo: Accounts
) -> None:
    _, token, _ = await accounts_repo.create("ada@example.test", 10)
    touches: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_TOKENS"):
            touches.append(statement)

    with _listening(db, count):
        # What 50 concurrent authentications that all read the token as never used do.
        at = datetime.now(UTC)
        await asyncio.gather(*(accounts_repo._touch(token.id, at) for _ in range(50)))
    assert len(touches) == 1


async def test_grouped_batches_run_as_a_few_statements_with_each_callers_answer(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    first, _, _ = await accounts_repo.create("ada@example.test", 20)
    second, _, _ = await accounts_repo.create("bob@example.test", 5)
    await ledger.reserve_batch([ReserveRequest(first.id, "img_old", 3)])  # 17 left
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ACCOUNTS"):
            updates.append(statement)

    calls = [
        [ReserveRequest(first.id, f"img_a{n}", 2) for n in range(2)],  # 13 left
        [ReserveRequest(first.id, "img_old", 3)],  # a repeat: nothing taken
        [ReserveRequest(first.id, "img_old", 4)],  # the id holds another amount
        [ReserveRequest(second.id, "img_b", 4)],  # 1 left
        [ReserveRequest(second.id, "img_c", 4)],  # short: the call before took it
        [ReserveRequest("acc_nobody", "img_x", 1)],
        *([ReserveRequest(first.id, f"img_f{n}", 1)] for n in range(13)),  # exactly the 13 left
        [ReserveRequest(first.id, "img_over", 1)],
    ]
    before = ledger.group.transactions
    with _listening(db, count):
        results = await asyncio.gather(*(ledger.reserve_batch(c) for c in calls), return_exceptions=True)
    assert ledger.group.transactions - before == 1
    assert len(updates) == 1  # one (executemany) for the accounts that paid, not one per call
    two, repeat, reused, fits, short, orphan, *ones, over = results
    assert not isinstance(two, BaseException) and two.credits == 13 and len(two.created) == 2
    assert not isinstance(repeat, BaseException) and not repeat.created
    assert isinstance(reused, JobIdReusedError)
    assert not isinstance(fits, BaseException) and fits.credits == 1
    assert isinstance(short, InsufficientCreditsError)
    assert isinstance(orphan, AccountNotFoundError)
    assert all(not isinstance(one, BaseException) for one in ones)
    assert isinstance(over, InsufficientCreditsError)
    assert (await accounts_repo.get(first.id)).credits == 0
    assert (await accounts_repo.get(second.id)).credits == 1
    await check_consistent(db)


def _count_statements(db: Database, prefix: str) -> tuple[list[str], Callable[..., None]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    return seen, count


async def test_a_grouped_settlement_of_many_jobs_answers_each_and_writes_once(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    first, _, _ = await accounts_repo.create("ada@example.test", 100)
    second, _, _ = await accounts_repo.create("bob@example.test", 100)
    for n in range(6):
        await ledger.reserve(ReserveRequest((first if n % 2 else second).id, f"img_{n}", 10))
    await ledger.settle("img_5", IMAGE)  # settled before the group: a repeat, then a conflict
    updates, count = _count_statements(db, "UPDATE RESERVATIONS")
    before = ledger.group.transactions
    with _listening(db, count):
        results = await asyncio.gather(
            ledger.settle("img_0", IMAGE),
            ledger.settle("img_1", FAILURE),
            ledger.settle("img_unknown", IMAGE),
            ledger.release("img_2", ReleaseReason.CANCELLED, "gave up"),
            ledger.settle("img_3", IMAGE),
            ledger.settle("img_0", FAILURE),  # the capture just before it in the same group won
            ledger.settle("img_5", IMAGE),
            ledger.release("img_5", ReleaseReason.TIMEOUT),
            ledger.release("img_unknown", ReleaseReason.TIMEOUT),
            ledger.settle("img_4", IMAGE),
            return_exceptions=True,
        )
    assert ledger.group.transactions - before == 1
    assert len(updates) == 1  # one (executemany) for every reservation the group settled
    cap0, fail1, unknown, rel2, cap3, conflict0, dup5, settled5, missing, cap4 = results
    assert isinstance(cap0, JobSettlement) and cap0.outcome is SettleOutcome.CAPTURED
    assert isinstance(fail1, JobSettlement) and fail1.outcome is SettleOutcome.RELEASED
    assert isinstance(unknown, JobSettlement) and unknown.outcome is SettleOutcome.UNKNOWN_JOB
    assert isinstance(rel2, Settlement) and rel2.changed
    assert isinstance(cap3, JobSettlement) and cap3.outcome is SettleOutcome.CAPTURED
    assert isinstance(conflict0, JobSettlement) and conflict0.outcome is SettleOutcome.CONFLICT
    assert isinstance(dup5, JobSettlement) and dup5.outcome is SettleOutcome.DUPLICATE
    assert isinstance(settled5, AlreadySettledError)
    assert isinstance(missing, ReservationNotFoundError)
    assert isinstance(cap4, JobSettlement) and cap4.outcome is SettleOutcome.CAPTURED
    # Each answer carries the balance its own settlement left, in arrival order per account.
    assert (cap0.credits, rel2.credits, cap4.credits) == (70, 80, 80)  # bob: img_0, img_2, img_4
    assert (fail1.credits, cap3.credits) == (80, 80)  # ada: img_1 released, img_3 captured
    # What each caller was answered is what the database keeps.
    for answer in (cap0, fail1, cap3, cap4):
        assert answer.reservation is not None
        assert await ledger.reservation(answer.reservation.job_id) == answer.reservation
    assert await ledger.reservation("img_2") == rel2.reservation
    assert (await ledger.reservation("img_0")).state is ReservationState.CAPTURED
    after_first, after_second = await accounts_repo.get(first.id), await accounts_repo.get(second.id)
    assert (after_first.credits, after_first.reserved_credits) == (80, 0)
    assert (after_second.credits, after_second.reserved_credits) == (80, 0)
    await check_consistent(db)


async def test_a_release_in_a_group_frees_credits_for_the_reservations_after_it(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 5)
    await ledger.reserve(ReserveRequest(account.id, "img_a", 5))
    before = ledger.group.transactions
    early, released, late, again = await asyncio.gather(
        ledger.reserve(ReserveRequest(account.id, "img_early", 5)),  # nothing left yet
        ledger.settle("img_a", FAILURE),
        ledger.reserve(ReserveRequest(account.id, "img_late", 5)),  # what the release gave back
        ledger.reserve(ReserveRequest(account.id, "img_late", 5)),  # a repeat within the group
        return_exceptions=True,
    )
    assert ledger.group.transactions - before == 1
    assert isinstance(early, InsufficientCreditsError)
    assert not isinstance(released, BaseException) and released.credits == 5
    assert not isinstance(late, BaseException) and late.changed and late.credits == 0
    assert not isinstance(again, BaseException) and not again.changed and again.credits == 0
    await check_consistent(db)


async def test_a_repeated_reserve_is_answered_in_its_group(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    first = await ledger.reserve(ReserveRequest(account.id, "img_a", 3))
    updates, count = _count_statements(db, "UPDATE ACCOUNTS")
    before = ledger.group.transactions
    with _listening(db, count):
        repeat, other = await asyncio.gather(
            ledger.reserve(ReserveRequest(account.id, "img_a", 3)),  # the credits are there: a repeat
            ledger.reserve(ReserveRequest(account.id, "img_b", 3)),
        )
    # One transaction, one balance update: the repeat took no credits and failed no unique key (which
    # would roll the group back and run both callers again alone).
    assert ledger.group.transactions - before == 1
    assert len(updates) == 1
    assert not repeat.changed and repeat.reservation == first.reservation and repeat.credits == 7
    assert other.changed and other.credits == 4
    await check_consistent(db)


async def test_a_job_settled_and_released_at_once_is_charged_once(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 100)
    jobs = [f"img_{n}" for n in range(20)]
    for job in jobs:
        await ledger.reserve(ReserveRequest(account.id, job, 5))
    calls: list[Awaitable[object]] = []
    for n, job in enumerate(jobs):  # either order, several times each
        first_settles = n % 2 == 1
        for settles in (first_settles, not first_settles, first_settles):
            calls.append(
                ledger.settle(job, IMAGE) if settles else ledger.release(job, ReleaseReason.CANCELLED)
            )
    results = await asyncio.gather(*calls, return_exceptions=True)
    captured = 0
    for job in jobs:
        state = (await ledger.reservation(job)).state
        assert state in (ReservationState.CAPTURED, ReservationState.RELEASED)
        captured += state is ReservationState.CAPTURED
    # Each job changed once: by its first call; the others are repeats or refused as settled.
    changed = [
        r
        for r in results
        if (isinstance(r, JobSettlement) and r.outcome in (SettleOutcome.CAPTURED, SettleOutcome.RELEASED))
        or (isinstance(r, Settlement) and r.changed)
    ]
    assert len(changed) == len(jobs)
    assert captured == len(jobs) // 2
    assert all(isinstance(r, AlreadySettledError) for r in results if isinstance(r, BaseException))
    after = await accounts_repo.get(account.id)
    assert (after.credits, after.reserved_credits) == (100 - 5 * captured, 0)
    await check_consistent(db)


async def test_starts_join_the_group_of_their_jobs_reservations_and_outcomes(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    await ledger.reserve(ReserveRequest(account.id, "img_run", 2))
    await ledger.reserve(ReserveRequest(account.id, "img_early", 2))
    early = datetime(2026, 1, 1, tzinfo=UTC)
    assert await ledger.mark_started("img_early", early)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    before = ledger.group.transactions
    updates, count = _count_statements(db, "UPDATE RESERVATIONS")
    with _listening(db, count):
        reserved, started_new, started_run, settled, started_early, unknown = await asyncio.gather(
            ledger.reserve(ReserveRequest(account.id, "img_new", 2)),
            ledger.mark_started("img_new", at),  # made by this very group: inserted with its start
            ledger.mark_started("img_run", at),
            ledger.settle("img_run", IMAGE),  # its outcome, right behind its start
            ledger.mark_started("img_early", at),  # started before: the first start stays
            ledger.mark_started("img_unknown", at),
        )
    assert ledger.group.transactions - before == 1
    assert len(updates) == 2  # the one start to write, and the settlement: no statement per start
    assert reserved.changed and settled.outcome is SettleOutcome.CAPTURED
    assert (started_new, started_run, started_early, unknown) == (True, True, True, False)
    assert (await ledger.reservation("img_new")).start_time == at
    run = await ledger.reservation("img_run")
    assert run.start_time == at and run.state is ReservationState.CAPTURED
    assert (await ledger.reservation("img_early")).start_time == early
    await check_consistent(db)


async def test_a_write_in_the_sqlite_writer_thread_outlasts_its_cancelled_callers(db: Database) -> None:
    """The writer thread cannot be stopped: however often its caller is cancelled, the write lock is
    held until the transaction ended, so that no other writer (nor a close) runs under it."""
    if len(db.sync_engines) == 1:
        pytest.skip("only a SQLite file has a writer thread")
    lock = db._write_lock
    assert lock is not None
    inside, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> None:
        inside.set()
        release.wait(timeout=30)

    writing = asyncio.create_task(db.run_write(slow))
    await asyncio.to_thread(inside.wait, 30)
    for _ in range(2):  # a second cancellation, while the first one waits for the thread
        writing.cancel()
        await asyncio.sleep(0.05)
        assert not writing.done()
        assert lock.locked()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert not lock.locked()
