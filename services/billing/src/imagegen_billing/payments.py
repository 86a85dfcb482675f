"""Purchases of credit packs in the database: each change of credits is one transaction that writes
the ledger entry (keyed by its payment, unique) and the balance together, so a Stripe event delivered
twice, concurrently, or as both ``completed`` and ``async_payment_succeeded`` changes credits once.
The rules are in payment_rules.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing import metrics
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    AccountNotFoundError,
    EntryKind,
    InvalidArgumentError,
    LedgerEntry,
    NotFoundError,
    check_account_id,
    shown,
)
from imagegen_billing.models import accounts, ledger_entries, purchases
from imagegen_billing.payment_rules import (
    Purchase,
    PurchaseState,
    can_close,
    check_stripe_id,
    dispute_key,
    proportional_credits,
    purchase_key,
    refund_key,
    refund_take_back,
)
from imagegen_billing.store import entry_values, now, to_entry
from imagegen_common.credit_packs import CreditPack, CreditPacks

log = logging.getLogger(__name__)


class PackNotFoundError(NotFoundError):
    def __init__(self, pack_id: str) -> None:
        super().__init__(f"no credit pack {shown(pack_id)!r}")


class PurchaseNotFoundError(NotFoundError):
    pass


@dataclass(frozen=True, slots=True)
class Fulfilment:
    purchase: Purchase
    granted: bool
    entry: LedgerEntry | None
    credits: int


@dataclass(frozen=True, slots=True)
class TakeBack:
    purchase: Purchase
    entry: LedgerEntry | None


class Payments:
    """Credit packs, purchases, and the ledger entries of payments, refunds and disputes."""

    def __init__(self, db: Database, packs: CreditPacks) -> None:
        self.db = db
        self.packs = packs

    def pack(self, pack_id: str) -> CreditPack:
        pack = self.packs.get(pack_id)
        if pack is None:
            raise PackNotFoundError(pack_id)
        return pack

    async def record_checkout_session(self, session_id: str, account_id: str, pack_id: str) -> Purchase:
        """A pending purchase of ``pack_id``'s credits and price as they are now (idempotent)."""
        check_stripe_id(session_id, "checkout_session_id", "cs")
        check_account_id(account_id)
        pack = self.pack(pack_id)
        try:
            async with self.db.write() as conn:
                await _check_account(conn, account_id)
                await conn.execute(insert(purchases).values(_new_purchase(session_id, account_id, pack)))
        except IntegrityError:
            pass  # recorded already (a retried call)
        return await self.purchase(session_id)

    async def fulfil(
        self, session_id: str, account_id: str, pack_id: str, payment_intent_id: str
    ) -> Fulfilment:
        """Grants a paid session's credits once. Account and pack come from the pending purchase when
        one was recorded, else from the session (client_reference_id, metadata); NOT_FOUND when either
        is unknown."""
        check_stripe_id(session_id, "checkout_session_id", "cs")
        if payment_intent_id:
            check_stripe_id(payment_intent_id, "payment_intent_id", "pi")
        for attempt in range(2):
            try:
                return await self._fulfil_once(session_id, account_id, pack_id, payment_intent_id)
            except IntegrityError:
                # A concurrent delivery of the same session granted (or recorded) it first; the next
                # attempt finds that and answers it as a repeat.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _fulfil_once(
        self, session_id: str, account_id: str, pack_id: str, payment_intent_id: str
    ) -> Fulfilment:
        at = now()
        async with self.db.write() as conn:
            existing = await _purchase(conn, session_id, lock=True)
            if existing is None:
                check_account_id(account_id)
                pack = self.pack(pack_id)
                await _check_account(conn, account_id)
                await conn.execute(insert(purchases).values(_new_purchase(session_id, account_id, pack)))
                existing = await _purchase(conn, session_id)
                assert existing is not None
            key = purchase_key(session_id)
            done = (
                await conn.execute(select(ledger_entries).where(ledger_entries.c.payment_key == key))
            ).first()
            if done is not None:
                return Fulfilment(existing, False, to_entry(done), await _credits(conn, existing.account_id))
            await conn.execute(
                update(purchases)
                .where(purchases.c.checkout_session_id == session_id)
                .values(
                    state=PurchaseState.PAID.value, payment_intent_id=payment_intent_id or None, paid_time=at
                )
            )
            note = f"{existing.pack_id} pack: Checkout Session {session_id}"
            if payment_intent_id:
                note += f", PaymentIntent {payment_intent_id}"
            entry = await _change_credits(
                conn, existing.account_id, EntryKind.PURCHASE, existing.credits, key=key, note=note
            )
            purchase = await _purchase(conn, session_id)
            assert purchase is not None
        metrics.purchased(purchase.pack_id, purchase.credits)
        log.info(
            "purchase granted",
            extra={"account_id": purchase.account_id, "pack": purchase.pack_id, "credits": purchase.credits},
        )
        return Fulfilment(purchase, True, entry, entry.balance_after)

    async def close(self, session_id: str, state: PurchaseState) -> Purchase | None:
        """Marks a pending purchase failed or expired; a paid one is left as it is."""
        check_stripe_id(session_id, "checkout_session_id", "cs")
        if state not in (PurchaseState.FAILED, PurchaseState.EXPIRED):
            raise InvalidArgumentError("state must be failed or expired", field="state")
        async with self.db.write() as conn:
            found = await _purchase(conn, session_id, lock=True)
            if found is None:
                return None
            if can_close(found.state):
                await conn.execute(
                    update(purchases)
                    .where(purchases.c.checkout_session_id == session_id)
                    .values(state=state.value)
                )
            return await _purchase(conn, session_id)

    async def refund(self, charge_id: str, payment_intent_id: str, amount_refunded: int) -> TakeBack:
        """Takes back what the charge's cumulative refunded amount stands for, less earlier refunds."""
        check_stripe_id(charge_id, "charge_id", "ch")
        check_stripe_id(payment_intent_id, "payment_intent_id", "pi")
        if amount_refunded <= 0:
            raise InvalidArgumentError("amount_refunded must be positive", field="amount_refunded")
        key = refund_key(charge_id, amount_refunded)

        async def change(conn: AsyncConnection, purchase: Purchase) -> LedgerEntry | None:
            before = -int(
                await conn.scalar(
                    select(func.coalesce(func.sum(ledger_entries.c.amount), 0)).where(
                        ledger_entries.c.payment_key.like(f"refund:{charge_id}:%")
                    )
                )
                or 0
            )
            take = refund_take_back(purchase.credits, purchase.amount, amount_refunded, before)
            if take == 0:
                return None
            note = f"refund of charge {charge_id} (PaymentIntent {payment_intent_id})"
            return await _change_credits(
                conn, purchase.account_id, EntryKind.REFUND, -take, key=key, note=note
            )

        result = await self._take_back(payment_intent_id, key, change)
        if result.entry is not None:
            metrics.refunded(-result.entry.amount)
        return result

    async def dispute(
        self, dispute_id: str, charge_id: str, payment_intent_id: str, amount: int, won: bool
    ) -> TakeBack:
        """An opened dispute takes back its share of the credits; a won one gives back what it took."""
        check_stripe_id(dispute_id, "dispute_id", None)
        check_stripe_id(payment_intent_id, "payment_intent_id", "pi")
        key = dispute_key(dispute_id, won)

        async def change(conn: AsyncConnection, purchase: Purchase) -> LedgerEntry | None:
            if won:
                opened = await conn.scalar(
                    select(ledger_entries.c.amount).where(
                        ledger_entries.c.payment_key == dispute_key(dispute_id, won=False)
                    )
                )
                if not opened:
                    return None
                note = f"dispute {dispute_id} won (charge {charge_id})"
                return await _change_credits(
                    conn, purchase.account_id, EntryKind.DISPUTE_REVERSAL, -int(opened), key=key, note=note
                )
            take = proportional_credits(purchase.credits, purchase.amount, amount)
            if take == 0:
                return None
            note = f"dispute {dispute_id} of charge {charge_id} (PaymentIntent {payment_intent_id})"
            return await _change_credits(
                conn, purchase.account_id, EntryKind.DISPUTE, -take, key=key, note=note
            )

        result = await self._take_back(payment_intent_id, key, change)
        if result.entry is not None:
            metrics.disputed("won" if won else "opened", abs(result.entry.amount))
        return result

    async def _take_back(self, payment_intent_id: str, key: str, change: Any) -> TakeBack:
        for attempt in range(2):
            try:
                async with self.db.write() as conn:
                    purchase = await _purchase_by_payment(conn, payment_intent_id)
                    if purchase is None:
                        raise PurchaseNotFoundError(f"no purchase paid by {shown(payment_intent_id)}")
                    exists = await conn.scalar(
                        select(ledger_entries.c.id).where(ledger_entries.c.payment_key == key)
                    )
                    if exists is not None:
                        return TakeBack(purchase, None)
                    entry: LedgerEntry | None = await change(conn, purchase)
                    if entry is not None:
                        await conn.execute(
                            update(purchases)
                            .where(purchases.c.checkout_session_id == purchase.checkout_session_id)
                            .values(
                                credits_taken_back=purchases.c.credits_taken_back - entry.amount,
                                flagged=True,
                            )
                        )
                    updated = await _purchase(conn, purchase.checkout_session_id)
                    assert updated is not None
                if entry is not None:
                    log.warning(
                        "payment taken back; account flagged for an operator",
                        extra={
                            "account_id": updated.account_id,
                            "kind": entry.kind.value,
                            "amount": entry.amount,
                            "credits": entry.balance_after,
                        },
                    )
                return TakeBack(updated, entry)
            except IntegrityError:
                if attempt:  # a concurrent delivery wrote the same key: answer it as a repeat
                    raise
        raise AssertionError("unreachable")

    async def purchase(self, session_id: str, account_id: str = "") -> Purchase:
        """One purchase; NOT_FOUND when there is none or (with ``account_id``) it is another's."""
        check_stripe_id(session_id, "checkout_session_id", "cs")
        async with self.db.read() as conn:
            found = await _purchase(conn, session_id)
        if found is None or (account_id and found.account_id != account_id):
            raise PurchaseNotFoundError(f"no purchase {shown(session_id)}")
        return found

    async def credits(self, account_id: str) -> int:
        async with self.db.read() as conn:
            return await _credits(conn, account_id)


async def _change_credits(
    conn: AsyncConnection, account_id: str, kind: EntryKind, amount: int, *, key: str, note: str
) -> LedgerEntry:
    """Changes the balance by ``amount`` and appends its entry keyed by ``key`` (unique: a concurrent
    writer of the same key fails the whole transaction with IntegrityError). Not conditional: only
    purchase, refund, dispute and reversal entries come here (a refund may take it below zero)."""
    balance = await conn.scalar(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(credits=accounts.c.credits + amount)
        .returning(accounts.c.credits)
    )
    if balance is None:
        raise AccountNotFoundError(f"no account {shown(account_id)!r}")
    values = entry_values(account_id, kind, amount, int(balance), now(), note=note[:200])
    row = (
        await conn.execute(insert(ledger_entries).values(**values, payment_key=key).returning(ledger_entries))
    ).one()
    return to_entry(row)


def _new_purchase(session_id: str, account_id: str, pack: CreditPack) -> dict[str, object]:
    return {
        "checkout_session_id": session_id,
        "account_id": account_id,
        "pack_id": pack.id,
        "credits": pack.credits,
        "amount": pack.amount,
        "currency": pack.currency,
        "state": PurchaseState.PENDING.value,
        "payment_intent_id": None,
        "credits_taken_back": 0,
        "flagged": False,
        "create_time": now(),
        "paid_time": None,
    }


async def _check_account(conn: AsyncConnection, account_id: str) -> None:
    if await conn.scalar(select(accounts.c.id).where(accounts.c.id == account_id)) is None:
        raise AccountNotFoundError(f"no account {shown(account_id)!r}")


async def _credits(conn: AsyncConnection, account_id: str) -> int:
    credits = await conn.scalar(select(accounts.c.credits).where(accounts.c.id == account_id))
    if credits is None:
        raise AccountNotFoundError(f"no account {shown(account_id)!r}")
    return int(credits)


async def _purchase(conn: AsyncConnection, session_id: str, lock: bool = False) -> Purchase | None:
    query = select(purchases).where(purchases.c.checkout_session_id == session_id)
    if lock and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _to_purchase(row) if row else None


async def _purchase_by_payment(conn: AsyncConnection, payment_intent_id: str) -> Purchase | None:
    query = select(purchases).where(purchases.c.payment_intent_id == payment_intent_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _to_purchase(row) if row else None


def _to_purchase(row: Any) -> Purchase:
    return Purchase(
        checkout_session_id=row.checkout_session_id,
        account_id=row.account_id,
        pack_id=row.pack_id,
        credits=row.credits,
        amount=row.amount,
        currency=row.currency,
        state=PurchaseState(row.state),
        payment_intent_id=row.payment_intent_id or "",
        credits_taken_back=row.credits_taken_back,
        flagged=bool(row.flagged),
        create_time=row.create_time,
        paid_time=row.paid_time,
    )
