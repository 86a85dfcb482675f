"""The ledger on a real database, SQLite and PostgreSQL: reservations, settlement, grants, the reaper,
and concurrent reservations that never overdraw."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from imagegen_billing.accounts import Accounts
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    Account,
    AlreadySettledError,
    EntryKind,
    FailedPreconditionError,
    InsufficientCreditsError,
    InvalidArgumentError,
    JobDetails,
    JobError,
    JobResult,
    NotFoundError,
    ReleaseReason,
    ReservationState,
    ReserveRequest,
    SettleOutcome,
)
from imagegen_billing.ledger import Ledger
from imagegen_billing.reaper import reap_once

ConsistencyCheck = Callable[[Database], Awaitable[None]]
IMAGE = JobResult(image_url="http://x/images/img.png")
FAILURE = JobResult(error=JobError.PROVIDER_ERROR, error_message="the provider failed")
CANCELLED = ReleaseReason.CANCELLED


async def _account(accounts_repo: Accounts, credits: int, email: str = "ada@example.test") -> Account:
    account, _, _ = await accounts_repo.create(email, credits)
    return account


async def test_reserve_capture_and_release_keep_the_ledger_and_the_balance_equal(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 100)
    details = JobDetails(model="flux-schnell", width=1024, height=1024, request_fingerprint="fp1")
    held = await ledger.reserve(ReserveRequest(account.id, "img_a", 30, details=details))
    assert held.changed and held.credits == 70
    assert held.reservation.state is ReservationState.HELD
    assert held.reservation.details == details
    assert (await accounts_repo.get(account.id)).reserved_credits == 30

    captured = await ledger.settle("img_a", JobResult(image_url="http://x/images/img_a.png", width=1024))
    assert captured.outcome is SettleOutcome.CAPTURED and captured.credits == 70
    assert captured.reservation is not None
    assert captured.reservation.state is ReservationState.CAPTURED
    assert captured.reservation.settle_time is not None
    assert captured.reservation.result.image_url == "http://x/images/img_a.png"

    await ledger.reserve(ReserveRequest(account.id, "img_b", 20))
    released = await ledger.settle("img_b", FAILURE)
    assert released.outcome is SettleOutcome.RELEASED and released.credits == 70
    assert released.reservation is not None
    assert released.reservation.release_reason is ReleaseReason.FAILED
    assert released.reservation.release_detail == "the provider failed"
    assert released.reservation.result.error is JobError.PROVIDER_ERROR
    assert (await ledger.reservation("img_b")) == released.reservation

    entries, next_token = await ledger.entries(account.id)
    assert next_token == ""
    assert [(e.kind, e.amount, e.balance_after, e.job_id) for e in entries] == [
        (EntryKind.RELEASE, 20, 70, "img_b"),
        (EntryKind.RESERVE, -20, 50, "img_b"),
        (EntryKind.CAPTURE, 0, 70, "img_a"),
        (EntryKind.RESERVE, -30, 70, "img_a"),
        (EntryKind.GRANT, 100, 100, ""),
    ]
    account_now = await accounts_repo.get(account.id)
    assert (account_now.credits, account_now.reserved_credits) == (70, 0)
    await check_consistent(db)


async def test_every_operation_is_idempotent_on_the_job_id(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 10)
    first = await ledger.reserve(ReserveRequest(account.id, "img_a", 10))
    # The balance is 0 now: a repeat still answers with the reservation, not "insufficient".
    repeat = await ledger.reserve(ReserveRequest(account.id, "img_a", 10))
    assert not repeat.changed
    assert repeat.reservation == first.reservation and repeat.credits == 0
    with pytest.raises(FailedPreconditionError, match="already has a reservation for a different request"):
        await ledger.reserve(ReserveRequest(account.id, "img_a", 9))

    assert (await ledger.settle("img_a", IMAGE)).outcome is SettleOutcome.CAPTURED
    again = await ledger.settle("img_a", IMAGE)
    assert again.outcome is SettleOutcome.DUPLICATE and again.reservation is not None
    assert again.reservation.state is ReservationState.CAPTURED
    # A repeat after settlement still returns the reservation as it stands.
    assert (await ledger.reserve(ReserveRequest(account.id, "img_a", 10))).reservation.state is (
        ReservationState.CAPTURED
    )
    with pytest.raises(AlreadySettledError, match="^reservation for job img_a was already captured$"):
        await ledger.release("img_a", CANCELLED)
    conflict = await ledger.settle("img_a", FAILURE)
    assert conflict.outcome is SettleOutcome.CONFLICT and conflict.credits == 0
    assert conflict.reservation is not None and conflict.reservation.state is ReservationState.CAPTURED

    await ledger.grant(account.id, 5)
    await ledger.reserve(ReserveRequest(account.id, "img_b", 5))
    assert (await ledger.release("img_b", CANCELLED)).changed
    assert not (await ledger.release("img_b", CANCELLED)).changed
    assert (await ledger.settle("img_b", IMAGE)).outcome is SettleOutcome.CONFLICT
    assert (await ledger.settle("img_b", FAILURE)).outcome is SettleOutcome.DUPLICATE

    assert (await accounts_repo.get(account.id)).credits == 5
    kinds = [e.kind for e in (await ledger.entries(account.id))[0]]
    assert kinds.count(EntryKind.RESERVE) == 2 and kinds.count(EntryKind.CAPTURE) == 1
    assert kinds.count(EntryKind.RELEASE) == 1
    await check_consistent(db)


async def test_bad_requests_are_refused_with_clear_messages(accounts_repo: Accounts, ledger: Ledger) -> None:
    account = await _account(accounts_repo, 10)
    with pytest.raises(InsufficientCreditsError, match="^insufficient credits: need 11, have 10$"):
        await ledger.reserve(ReserveRequest(account.id, "img_a", 11))
    with pytest.raises(InvalidArgumentError, match="amount must be positive"):
        await ledger.reserve(ReserveRequest(account.id, "img_a", -1))
    with pytest.raises(NotFoundError, match="no account 'acc_missing'"):
        await ledger.reserve(ReserveRequest("acc_missing", "img_a", 1))
    assert (await ledger.settle("img_missing", IMAGE)).outcome is SettleOutcome.UNKNOWN_JOB
    with pytest.raises(NotFoundError, match="no reservation for job img_missing"):
        await ledger.release("img_missing", CANCELLED)
    for reason in (None, ReleaseReason.FAILED):
        with pytest.raises(InvalidArgumentError):
            await ledger.release("img_a", reason)
    with pytest.raises(InvalidArgumentError):
        await ledger.settle("img_a", JobResult())
    with pytest.raises(NotFoundError):
        await ledger.reservation("img_missing")


async def test_a_batch_holds_all_or_nothing_and_repeats_as_a_whole(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 10)
    batch = [ReserveRequest(account.id, f"img_{i}", 3) for i in range(4)]
    with pytest.raises(InsufficientCreditsError, match="^insufficient credits: need 12, have 10$"):
        await ledger.reserve_batch(batch)
    assert (await accounts_repo.get(account.id)).credits == 10
    assert await ledger.open_reservations() == 0

    held = await ledger.reserve_batch(batch[:3])
    assert held.credits == 1 and len(held.created) == 3
    assert [r.job_id for r in held.reservations] == ["img_0", "img_1", "img_2"]
    repeat = await ledger.reserve_batch(batch[:3])
    assert repeat.created == [] and repeat.credits == 1
    assert repeat.reservations == held.reservations
    entries = (await ledger.entries(account.id))[0]
    assert [e.balance_after for e in entries if e.kind is EntryKind.RESERVE] == [1, 4, 7]
    await check_consistent(db)


async def test_grants_add_and_remove_but_never_below_zero(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 0)
    granted, entry = await ledger.grant("ADA@example.test", 25, note="welcome")
    assert granted.credits == 25 and (entry.kind, entry.amount, entry.note) == (
        EntryKind.GRANT,
        25,
        "welcome",
    )
    debited, entry = await ledger.grant(account.id, -20)
    assert debited.credits == 5 and entry.kind is EntryKind.DEBIT
    with pytest.raises(FailedPreconditionError, match="cannot remove 6 credits: the account has 5"):
        await ledger.grant(account.id, -6)
    with pytest.raises(InvalidArgumentError):
        await ledger.grant(account.id, 0)
    with pytest.raises(NotFoundError, match="no account with email nobody@example.test"):
        await ledger.grant("nobody@example.test", 1)
    await check_consistent(db)


async def test_ledger_pages_run_newest_first(accounts_repo: Accounts, ledger: Ledger) -> None:
    account = await _account(accounts_repo, 0)
    for n in range(1, 6):
        await ledger.grant(account.id, n)
    first, token = await ledger.entries(account.id, page_size=2)
    second, token2 = await ledger.entries(account.id, page_size=2, page_token=token)
    third, token3 = await ledger.entries(account.id, page_size=2, page_token=token2)
    assert [e.amount for e in first + second + third] == [5, 4, 3, 2, 1]
    assert token3 == ""
    with pytest.raises(InvalidArgumentError):
        await ledger.entries(account.id, page_token="nonsense")


async def test_the_reaper_releases_expired_reservations_only(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 50)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await ledger.reserve(ReserveRequest(account.id, "img_old", 10, expire_time=past))
    await ledger.reserve(ReserveRequest(account.id, "img_new", 10))
    await ledger.reserve(ReserveRequest(account.id, "img_done", 10, expire_time=past))
    await ledger.settle("img_done", IMAGE)

    assert await reap_once(ledger) == 1
    assert (await ledger.reservation("img_old")).state is ReservationState.RELEASED
    assert (await ledger.reservation("img_old")).release_reason is ReleaseReason.EXPIRED
    assert (await ledger.reservation("img_new")).state is ReservationState.HELD
    assert (await ledger.reservation("img_new")).expire_time > datetime.now(UTC) + timedelta(minutes=14)
    assert (await ledger.reservation("img_done")).state is ReservationState.CAPTURED
    assert await reap_once(ledger) == 0
    assert (await accounts_repo.get(account.id)).credits == 30
    await check_consistent(db)


async def test_a_start_is_recorded_once(accounts_repo: Accounts, ledger: Ledger) -> None:
    account = await _account(accounts_repo, 5)
    await ledger.reserve(ReserveRequest(account.id, "img_a", 1))
    first = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert await ledger.mark_started("img_a", first)
    assert await ledger.mark_started("img_a", first + timedelta(minutes=1))
    assert (await ledger.reservation("img_a")).start_time == first
    assert not await ledger.mark_started("img_unknown", first)


async def test_the_reservations_of_jobs_come_in_the_order_asked_from_one_statement(
    db: Database, accounts_repo: Accounts, ledger: Ledger
) -> None:
    account = await _account(accounts_repo, 5)
    for job_id in ("img_a", "img_b", "img_c"):
        await ledger.reserve(ReserveRequest(account.id, job_id, 1))
    texts: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            texts.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        found = await ledger.reservations(["img_c", "img_unknown", "img_a", "img_c"])
        two = await ledger.reservations(["img_b", "img_a"])
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert [r.job_id for r in found] == ["img_c", "img_a"]  # unknown ones left out, a repeat once
    assert [r.job_id for r in two] == ["img_b", "img_a"]
    if not db.sqlite:  # one array parameter: the same statement (and plan) for any number of jobs
        assert len(texts) == 2 and texts[0] == texts[1]


async def test_concurrent_reservations_never_overdraw(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 1000)
    attempts = 300
    amount = 7  # 1000 // 7 = 142 fit, 6 credits are left over

    async def reserve(n: int) -> str:
        try:
            await ledger.reserve(ReserveRequest(account.id, f"img_{n}", amount))
        except InsufficientCreditsError as error:
            return str(error)
        return "ok"

    answers = await asyncio.gather(*(reserve(n) for n in range(attempts)))
    assert answers.count("ok") == 1000 // amount
    assert set(answers) == {"ok", f"insufficient credits: need {amount}, have {1000 % amount}"}
    after = await accounts_repo.get(account.id)
    assert (after.credits, after.reserved_credits) == (1000 % amount, 1000 - 1000 % amount)
    assert await ledger.open_reservations() == 1000 // amount

    # Settling them concurrently, half each way, gives every released credit back exactly once.
    held = [n for n, answer in enumerate(answers) if answer == "ok"]
    await asyncio.gather(
        *(
            ledger.settle(f"img_{n}", IMAGE) if i % 2 else ledger.release(f"img_{n}", CANCELLED)
            for i, n in enumerate(held)
        )
    )
    released = len(held[::2])
    assert (await accounts_repo.get(account.id)).credits == 1000 % amount + released * amount
    await check_consistent(db)


async def test_concurrent_repeats_of_one_job_charge_once(
    db: Database, accounts_repo: Accounts, ledger: Ledger, check_consistent: ConsistencyCheck
) -> None:
    account = await _account(accounts_repo, 100)
    results = await asyncio.gather(
        *(ledger.reserve(ReserveRequest(account.id, "img_same", 5)) for _ in range(50))
    )
    assert sum(r.changed for r in results) == 1
    assert {r.reservation.job_id for r in results} == {"img_same"}
    assert (await accounts_repo.get(account.id)).credits == 95
    settled = await asyncio.gather(*(ledger.settle("img_same", IMAGE) for _ in range(20)))
    assert [s.outcome for s in settled].count(SettleOutcome.CAPTURED) == 1
    assert {s.outcome for s in settled} == {SettleOutcome.CAPTURED, SettleOutcome.DUPLICATE}
    await check_consistent(db)
