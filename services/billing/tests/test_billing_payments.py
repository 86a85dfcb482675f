"""Purchases in a real database (SQLite and PostgreSQL): granted once per Checkout Session whatever the
deliveries, refunds and disputes taken back in proportion (below zero if spent), holds refused then."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from imagegen_billing.accounts import Accounts
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    AccountNotFoundError,
    EntryKind,
    InsufficientCreditsError,
    JobDetails,
    JobResult,
    ReserveRequest,
)
from imagegen_billing.ledger import Ledger
from imagegen_billing.payment_rules import PurchaseState
from imagegen_billing.payments import PackNotFoundError, Payments, PurchaseNotFoundError
from imagegen_common.credit_packs import load_credit_packs

ConsistencyCheck = Callable[[Database], Awaitable[None]]

SESSION = "cs_test_session1"
PI = "pi_test_1"


@pytest.fixture
def payments(db: Database) -> Payments:
    return Payments(db, load_credit_packs())


async def _account(accounts_repo: Accounts, credits: int = 0) -> str:
    account, _, _ = await accounts_repo.create("buyer@example.com", credits)
    return account.id


async def test_a_paid_session_grants_its_pack_once(
    payments: Payments, accounts_repo: Accounts, check_consistent: ConsistencyCheck, db: Database
) -> None:
    account = await _account(accounts_repo)
    pending = await payments.record_checkout_session(SESSION, account, "standard")
    assert (pending.state, pending.credits, pending.amount) == (PurchaseState.PENDING, 2500, 2000)
    assert await payments.record_checkout_session(SESSION, account, "standard") == pending

    first = await payments.fulfil(SESSION, account, "standard", PI)
    assert first.granted
    assert first.credits == 2500
    assert first.entry is not None
    assert first.entry.kind is EntryKind.PURCHASE
    assert SESSION in first.entry.note
    assert PI in first.entry.note
    # completed, then async_payment_succeeded, then replays: all repeats
    for _ in range(3):
        again = await payments.fulfil(SESSION, account, "standard", PI)
        assert not again.granted
        assert again.credits == 2500
    assert (await payments.purchase(SESSION, account)).state is PurchaseState.PAID
    await check_consistent(db)


async def test_concurrent_deliveries_grant_once(
    payments: Payments, accounts_repo: Accounts, check_consistent: ConsistencyCheck, db: Database
) -> None:
    account = await _account(accounts_repo)
    sold = REGISTRY.get_sample_value("imagegen_billing_credits_sold_total") or 0.0
    bought = REGISTRY.get_sample_value("imagegen_billing_purchases_total", {"pack": "starter"}) or 0.0
    # no pending purchase recorded: the deliveries race to create it too
    results = await asyncio.gather(*(payments.fulfil(SESSION, account, "starter", PI) for _ in range(10)))
    assert sum(r.granted for r in results) == 1
    assert await payments.credits(account) == 500
    assert REGISTRY.get_sample_value("imagegen_billing_credits_sold_total") == sold + 500
    assert REGISTRY.get_sample_value("imagegen_billing_purchases_total", {"pack": "starter"}) == bought + 1
    await check_consistent(db)


async def test_unknown_account_or_pack_grants_nothing(payments: Payments, accounts_repo: Accounts) -> None:
    account = await _account(accounts_repo)
    with pytest.raises(AccountNotFoundError):
        await payments.fulfil(SESSION, "acc_nobody", "starter", PI)
    with pytest.raises(PackNotFoundError):
        await payments.fulfil(SESSION, account, "no-such-pack", PI)
    assert await payments.credits(account) == 0
    with pytest.raises(PurchaseNotFoundError):
        await payments.purchase(SESSION)


async def test_a_closed_purchase_is_failed_or_expired_but_a_paid_one_stays_paid(
    payments: Payments, accounts_repo: Accounts
) -> None:
    account = await _account(accounts_repo)
    await payments.record_checkout_session(SESSION, account, "starter")
    closed = await payments.close(SESSION, PurchaseState.EXPIRED)
    assert closed is not None
    assert closed.state is PurchaseState.EXPIRED
    assert await payments.close("cs_test_unknown", PurchaseState.FAILED) is None
    await payments.record_checkout_session("cs_test_paid", account, "starter")
    await payments.fulfil("cs_test_paid", account, "starter", "pi_test_paid")
    still = await payments.close("cs_test_paid", PurchaseState.FAILED)
    assert still is not None
    assert still.state is PurchaseState.PAID


async def test_refunds_take_back_in_proportion_even_below_zero_and_holds_fail(
    payments: Payments,
    accounts_repo: Accounts,
    ledger: Ledger,
    check_consistent: ConsistencyCheck,
    db: Database,
) -> None:
    account = await _account(accounts_repo)
    await payments.fulfil(SESSION, account, "standard", PI)  # 2500 credits for 2000 cents
    await ledger.reserve(
        ReserveRequest(account, "job_1", 2000, details=JobDetails(model="m", width=1, height=1))
    )
    await ledger.settle("job_1", JobResult(image_url="https://x.test/i.png", width=1, height=1))  # spent
    half = await payments.refund("ch_test_1", PI, 1000)
    assert half.entry is not None
    assert half.entry.kind is EntryKind.REFUND
    assert half.entry.amount == -1250
    assert "ch_test_1" in half.entry.note
    assert half.purchase.flagged
    assert (await payments.refund("ch_test_1", PI, 1000)).entry is None  # replayed
    rest = await payments.refund("ch_test_1", PI, 2000)
    assert rest.entry is not None
    assert rest.entry.amount == -1250
    assert rest.entry.balance_after == 2500 - 2000 - 2500  # below zero: the credits were spent
    assert (await payments.refund("ch_test_1", PI, 1000)).entry is None  # an older total, late
    with pytest.raises(InsufficientCreditsError):
        await ledger.reserve(
            ReserveRequest(account, "job_2", 1, details=JobDetails(model="m", width=1, height=1))
        )
    await check_consistent(db)


async def test_a_dispute_takes_back_and_a_won_one_gives_back(
    payments: Payments, accounts_repo: Accounts, check_consistent: ConsistencyCheck, db: Database
) -> None:
    account = await _account(accounts_repo)
    await payments.fulfil(SESSION, account, "starter", PI)
    opened = await payments.dispute("dp_test_1", "ch_test_1", PI, 500, won=False)
    assert opened.entry is not None
    assert (opened.entry.kind, opened.entry.amount, opened.entry.balance_after) == (
        EntryKind.DISPUTE,
        -500,
        0,
    )
    assert "dp_test_1" in opened.entry.note
    assert (await payments.dispute("dp_test_1", "ch_test_1", PI, 500, won=False)).entry is None
    won = await payments.dispute("dp_test_1", "ch_test_1", PI, 500, won=True)
    assert won.entry is not None
    assert (won.entry.kind, won.entry.amount, won.entry.balance_after) == (
        EntryKind.DISPUTE_REVERSAL,
        500,
        500,
    )
    assert (await payments.dispute("dp_test_1", "ch_test_1", PI, 500, won=True)).entry is None
    with pytest.raises(PurchaseNotFoundError):
        await payments.refund("ch_test_2", "pi_test_unknown", 100)
    await check_consistent(db)


async def test_a_purchase_of_another_account_is_not_found(
    payments: Payments, accounts_repo: Accounts
) -> None:
    account = await _account(accounts_repo)
    other, _, _ = await accounts_repo.create("other@example.com", 0)
    await payments.record_checkout_session(SESSION, account, "starter")
    with pytest.raises(PurchaseNotFoundError):
        await payments.purchase(SESSION, other.id)
