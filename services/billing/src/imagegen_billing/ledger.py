"""The credit ledger in the database: reserve, capture, release and grant, each one transaction.

A balance only changes through a conditional UPDATE that cannot take it below zero, in the same
transaction as the ledger entry that records the change, so ``accounts.credits`` always equals the
sum of the account's entries and concurrent reservations never overdraw. Every operation on a job is
idempotent on its job id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing import metrics
from imagegen_billing.accounts import account_by_alias
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    MAX_PROMPT_CHARS,
    Account,
    AccountNotFoundError,
    AlreadySettledError,
    BatchSettlement,
    BillingError,
    EntryKind,
    InsufficientCreditsError,
    InvalidArgumentError,
    JobResult,
    JobSettlement,
    LedgerEntry,
    ReleaseReason,
    Reservation,
    ReservationNotFoundError,
    ReservationState,
    ReserveRequest,
    Settlement,
    SettleOutcome,
    WebhookDelivery,
    WebhookState,
    check_account_id,
    check_batch,
    check_batch_get,
    check_grant,
    check_job_id,
    check_release_reason,
    check_repeat,
    check_reserve_request,
    clip,
    clip_result,
    failure_release_reason,
    settle_outcome,
    settle_target,
    shown,
)
from imagegen_billing.group_commit import GroupCommit, Work
from imagegen_billing.models import accounts, ledger_entries, reservations
from imagegen_billing.store import (
    ACCOUNT_COLUMNS,
    append_entries,
    append_entry,
    entry_values,
    now,
    reservation_values,
    result_values,
    to_account,
    to_entry,
    to_reservation,
)

# The hot path's statements are built once and only bound per call: building and coercing SQLAlchemy
# expressions costs more Python time than a round trip to the database.
_TAKE = (
    update(accounts)
    .where(accounts.c.id == bindparam("b_account"), accounts.c.credits >= bindparam("b_amount"))
    .values(
        credits=accounts.c.credits - bindparam("b_amount"),
        reserved_credits=accounts.c.reserved_credits + bindparam("b_amount"),
    )
    .returning(accounts.c.credits)
)
_SETTLE_ACCOUNT = (
    update(accounts)
    .where(accounts.c.id == bindparam("b_account"))
    .values(
        credits=accounts.c.credits + bindparam("b_returned"),
        reserved_credits=accounts.c.reserved_credits - bindparam("b_amount"),
    )
    .returning(accounts.c.credits)
)
_SETTLE_RESERVATION = (
    update(reservations)
    .where(reservations.c.job_id == bindparam("b_job"), reservations.c.state == ReservationState.HELD.value)
    .returning(reservations)
)
_INSERT_RESERVATION = insert(reservations)
_RESERVATIONS_OF_JOBS = select(reservations).where(
    reservations.c.job_id.in_(bindparam("b_jobs", expanding=True))
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: A batch that races with another call on the same job ids is retried this many times.
_BATCH_ATTEMPTS = 3
#: Detail of a reservation released because its caller gave up before billing answered.
_ABANDONED = "the reservation request ended before billing answered"


class Ledger:
    """Credits of accounts: reservations for jobs and grants by administrators."""

    def __init__(self, db: Database, default_ttl: timedelta = timedelta(minutes=15)) -> None:
        self.db = db
        self.default_ttl = default_ttl
        # Reservations and settlements: grouped into shared transactions (group_commit.py).
        self._group = GroupCommit(db)
        self._reservations = _ReservationBatch(self)

    @property
    def group(self) -> GroupCommit:
        """The group commit of the ledger's writes (its counters tell how well it groups)."""
        return self._group

    async def aclose(self) -> None:
        """Stops the group commit loop; call before closing the database."""
        await self._group.aclose()

    async def reserve(self, request: ReserveRequest) -> Settlement:
        """Holds ``request.amount`` credits for a job.

        Raises InsufficientCreditsError, AccountNotFoundError, InvalidArgumentError, and
        JobIdReusedError when the job id holds a reservation for another account or amount.
        """
        check_reserve_request(request)
        reservation = self._new_reservation(request, now())

        async def work(conn: AsyncConnection) -> Settlement:
            credits = await _take(conn, request.account_id, request.amount)
            if credits is None:
                return await _repeat_or_refuse(conn, request)
            await conn.execute(_INSERT_RESERVATION, reservation_values(reservation))
            await append_entries(conn, _reserve_entry(reservation, credits))
            return Settlement(reservation, credits, changed=True)

        try:
            settled = await self._group.run(work, self._undo_settlement)
        except IntegrityError:
            # The job id has a reservation already (made by an earlier call, or one running right now).
            async with self.db.read() as conn:
                existing = await _reservation(conn, request.job_id)
                if existing is None:
                    raise
                check_repeat(existing, request)
                return Settlement(existing, await _credits(conn, request.account_id), changed=False)
        if settled.changed:
            metrics.reserved(request.amount)
        return settled

    async def reserve_batch(self, requests: Sequence[ReserveRequest]) -> BatchSettlement:
        """Holds credits for several jobs of one account: all of them or none.

        Job ids that hold a matching reservation already are repeats and are returned as they are.
        """
        account_id = check_batch(requests)
        for _ in range(_BATCH_ATTEMPTS - 1):
            # Another call reserved one of the job ids meanwhile: look again, it is a repeat now.
            with contextlib.suppress(IntegrityError):
                return await self._reserve_batch_once(account_id, requests)
        return await self._reserve_batch_once(account_id, requests)

    async def _reserve_batch_once(
        self, account_id: str, requests: Sequence[ReserveRequest]
    ) -> BatchSettlement:
        settled: BatchSettlement = await self._group.run_batched(
            self._reservations, (account_id, requests), self._undo_batch
        )
        if settled.created:
            metrics.reserved(sum(r.amount for r in settled.created), count=len(settled.created))
        return settled

    def _undo_settlement(self, settled: Settlement) -> Work[Any] | None:
        """Releases the reservation a Reserve made for a caller that gave up before its answer."""
        if not settled.changed:
            return None
        return self._undo([settled.reservation.job_id])

    def _undo_batch(self, settled: BatchSettlement) -> Work[Any] | None:
        """Releases the reservations a ReserveBatch made for a caller that gave up before its answer."""
        return self._undo([r.job_id for r in settled.created]) if settled.created else None

    def _undo(self, job_ids: list[str]) -> Work[Any]:
        async def release_all(conn: AsyncConnection) -> None:
            for job_id in job_ids:
                settled = await self._settle_in(
                    conn,
                    job_id=job_id,
                    target=ReservationState.RELEASED,
                    reason=ReleaseReason.TIMEOUT,
                    detail=_ABANDONED,
                    result=None,
                )
                if settled.outcome is SettleOutcome.RELEASED and settled.reservation is not None:
                    metrics.released(settled.reservation.amount, ReleaseReason.TIMEOUT)

        return release_all

    async def settle(self, job_id: str, result: JobResult) -> JobSettlement:
        """Settles a job from its result, the one way an outcome reaches the credits: an image captures
        the held reservation, a failure releases it (reason FAILED, or CANCELLED/TIMEOUT for a job
        stopped because its submitter gave up or its deadline passed); either way the result is kept.

        A repeat is DUPLICATE, a reservation settled the other way already is CONFLICT (nothing
        changes), a job without reservation UNKNOWN_JOB. Raises InvalidArgumentError for a result
        with neither an image nor an error.
        """
        target = settle_target(result)
        if target is ReservationState.CAPTURED:
            return await self._settle(job_id, target, None, "", result)
        return await self._settle(
            job_id, target, failure_release_reason(result.error), result.error_message, result
        )

    async def release(
        self, job_id: str, reason: ReleaseReason | None, detail: str = "", result: JobResult | None = None
    ) -> Settlement:
        """Gives a held reservation's credits back for a job that did not run to an outcome, keeping
        why; a repeat returns the released reservation as it is.

        Raises InvalidArgumentError for no reason or FAILED (``settle`` releases a failed job),
        ReservationNotFoundError, and AlreadySettledError when the reservation was captured.
        """
        reason = check_release_reason(reason)
        settled = await self._settle(job_id, ReservationState.RELEASED, reason, detail, result)
        if settled.reservation is None:
            raise ReservationNotFoundError(job_id)
        if settled.outcome is SettleOutcome.CONFLICT:
            raise AlreadySettledError(job_id, settled.reservation.state)
        return Settlement(
            settled.reservation, settled.credits, changed=settled.outcome is SettleOutcome.RELEASED
        )

    async def mark_started(self, job_id: str, at: datetime) -> bool:
        """Records when a generator first took the job; False when the job has no reservation."""
        async with self.db.write() as conn:
            await conn.execute(
                update(reservations)
                .where(reservations.c.job_id == job_id, reservations.c.start_time.is_(None))
                .values(start_time=at)
            )
            return await _reservation(conn, job_id) is not None

    async def _settle(
        self,
        job_id: str,
        target: ReservationState,
        reason: ReleaseReason | None,
        detail: str,
        result: JobResult | None,
    ) -> JobSettlement:
        check_job_id(job_id)
        settled = await self._group.run(
            partial(
                self._settle_in, job_id=job_id, target=target, reason=reason, detail=detail, result=result
            )
        )
        if settled.outcome in (SettleOutcome.CAPTURED, SettleOutcome.RELEASED):
            assert settled.reservation is not None
            if reason is not None:
                metrics.released(settled.reservation.amount, reason)
            else:
                metrics.captured(settled.reservation.amount)
        return settled

    async def _settle_in(
        self,
        conn: AsyncConnection,
        *,
        job_id: str,
        target: ReservationState,
        reason: ReleaseReason | None,
        detail: str,
        result: JobResult | None,
    ) -> JobSettlement:
        at = now()
        values: dict[str, object] = {
            "state": target.value,
            "settle_time": at,
            "release_reason": reason.value if reason is not None else "",
            "release_detail": clip(detail),
        }
        if result is not None:
            values.update(result_values(clip_result(result)))
        row = (await conn.execute(_SETTLE_RESERVATION, {"b_job": job_id, **values})).first()
        if row is None:
            existing = await _reservation(conn, job_id)
            if existing is None:
                return JobSettlement(SettleOutcome.UNKNOWN_JOB, None, 0)
            outcome = settle_outcome(existing.state, target)
            return JobSettlement(outcome, existing, await _credits(conn, existing.account_id))
        reservation = to_reservation(row)
        returned = reservation.amount if target is ReservationState.RELEASED else 0
        credits = await conn.scalar(
            _SETTLE_ACCOUNT,
            {"b_account": reservation.account_id, "b_returned": returned, "b_amount": reservation.amount},
        )
        assert credits is not None  # the foreign key keeps the account
        kind = EntryKind.RELEASE if target is ReservationState.RELEASED else EntryKind.CAPTURE
        note = reason.value if reason is not None else ""
        await append_entries(
            conn,
            entry_values(reservation.account_id, kind, returned, credits, at, job_id=job_id, note=note),
        )
        return JobSettlement(settle_outcome(ReservationState.HELD, target), reservation, credits)

    async def grant(self, alias: str, amount: int, note: str = "") -> tuple[Account, LedgerEntry]:
        """Adds credits to an account (positive amount) or removes them (negative, never below zero)."""
        kind = check_grant(amount)
        at = now()
        async with self.db.write() as conn:
            account = await account_by_alias(conn, alias)
            query = update(accounts).where(accounts.c.id == account.id)
            if amount < 0:
                query = query.where(accounts.c.credits >= -amount)
            row = (
                await conn.execute(
                    query.values(credits=accounts.c.credits + amount).returning(*ACCOUNT_COLUMNS)
                )
            ).first()
            if row is None:
                have = await _credits(conn, account.id)
                raise InsufficientCreditsError(
                    -amount, have, f"cannot remove {-amount} credits: the account has {have}"
                )
            entry = await append_entry(
                conn,
                account_id=account.id,
                kind=kind,
                amount=amount,
                balance_after=row.credits,
                at=at,
                note=clip(note),
            )
        return to_account(row), entry

    async def entries(
        self, alias: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[LedgerEntry], str]:
        """An account's ledger entries, newest first, and the token of the next page."""
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self.db.read() as conn:
            account = await account_by_alias(conn, alias)
            query = (
                select(ledger_entries)
                .where(ledger_entries.c.account_id == account.id)
                .order_by(ledger_entries.c.id.desc())
                .limit(size + 1)
            )
            if page_token:
                query = query.where(ledger_entries.c.id < _decode_entry_token(page_token))
            rows = (await conn.execute(query)).all()
        page = [to_entry(row) for row in rows[:size]]
        return page, (str(page[-1].id) if len(rows) > size else "")

    async def reservations_page(
        self, account_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Reservation], str]:
        """An account's reservations, newest first, and the token of the next page ("" after the last).

        Keyset pagination on (create_time, job_id), which ix_reservations_account_id_create_time
        serves, so a page costs the same however deep it is.
        """
        check_account_id(account_id)
        if page_size < 0:
            raise InvalidArgumentError(f"page_size must not be negative, not {page_size}", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = (
            select(reservations)
            .where(reservations.c.account_id == account_id)
            .order_by(reservations.c.create_time.desc(), reservations.c.job_id.desc())
            .limit(size + 1)
        )
        if page_token:
            created, job_id = _decode_reservation_token(page_token)
            query = query.where(
                or_(
                    reservations.c.create_time < created,
                    and_(reservations.c.create_time == created, reservations.c.job_id < job_id),
                )
            )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        page = [to_reservation(row) for row in rows[:size]]
        next_token = _encode_reservation_token(page[-1]) if len(rows) > size else ""
        return page, next_token

    async def reservation(self, job_id: str) -> Reservation:
        check_job_id(job_id)
        async with self.db.read() as conn:
            found = await _reservation(conn, job_id)
        if found is None:
            raise ReservationNotFoundError(job_id)
        return found

    async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
        """The reservations of those jobs that have one, in the order of ``job_ids`` (a repeated id
        once); unknown ids are left out. One SELECT … WHERE job_id IN (…), whatever the number."""
        wanted = check_batch_get(job_ids)
        if not wanted:
            return []
        async with self.db.read() as conn:
            rows = (await conn.execute(_RESERVATIONS_OF_JOBS, {"b_jobs": wanted})).all()
        found = {row.job_id: to_reservation(row) for row in rows}
        return [found[job_id] for job_id in wanted if job_id in found]

    async def expired_job_ids(self, at: datetime, limit: int = 100) -> list[str]:
        """Job ids of held reservations whose expire time has passed, oldest first."""
        query = (
            select(reservations.c.job_id)
            .where(reservations.c.state == ReservationState.HELD.value, reservations.c.expire_time <= at)
            .order_by(reservations.c.expire_time)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return list((await conn.scalars(query)).all())

    async def open_reservations(self) -> int:
        query = select(func.count()).where(reservations.c.state == ReservationState.HELD.value)
        async with self.db.read() as conn:
            return int(await conn.scalar(query) or 0)

    def _new_reservation(self, request: ReserveRequest, at: datetime) -> Reservation:
        webhook_url = request.details.webhook_url
        return Reservation(
            job_id=request.job_id,
            account_id=request.account_id,
            amount=request.amount,
            state=ReservationState.HELD,
            create_time=at,
            expire_time=request.expire_time or at + self.default_ttl,
            settle_time=None,
            details=replace(
                request.details,
                model=clip(request.details.model),
                request_fingerprint=request.details.request_fingerprint[:128],
                prompt=request.details.prompt[:MAX_PROMPT_CHARS],
            ),
            webhook=WebhookDelivery(url=webhook_url, state=WebhookState.PENDING) if webhook_url else None,
        )


class _ReservationBatch:
    """ReserveBatch calls that arrive together, as a handful of statements for all of them: one
    SELECT of the job ids, one of the balances (rows locked on PostgreSQL; SQLite's writer holds
    the database), one conditional UPDATE per account, two multi-row INSERTs. Each call is decided
    in arrival order against the balance the calls before it left, exactly as one transaction each
    would have; the UPDATE's ``credits >= total`` still guards the no-overdraw rule in the database.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def run(
        self, conn: AsyncConnection, items: list[tuple[str, Sequence[ReserveRequest]]]
    ) -> list[tuple[BatchSettlement | None, BillingError | None]]:
        at = now()
        job_ids = [r.job_id for _, requests in items for r in requests]
        rows = await conn.execute(select(reservations).where(reservations.c.job_id.in_(job_ids)))
        existing = {row.job_id: to_reservation(row) for row in rows}
        account_ids = sorted({account_id for account_id, _ in items})  # one lock order for all
        balances: dict[str, int] = {
            row.id: row.credits
            for row in await conn.execute(
                select(accounts.c.id, accounts.c.credits)
                .where(accounts.c.id.in_(account_ids))
                .order_by(accounts.c.id)
                .with_for_update()
            )
        }
        answers: list[tuple[BatchSettlement | None, BillingError | None]] = []
        taken: dict[str, int] = {}
        new_rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        for account_id, requests in items:
            try:
                answers.append((self._decide(account_id, requests, at, existing, balances), None))
            except BillingError as refused:
                answers.append((None, refused))
                continue
            settled = answers[-1][0]
            assert settled is not None
            balance = settled.credits + sum(r.amount for r in settled.created)
            for reservation in settled.created:
                existing[reservation.job_id] = reservation
                new_rows.append(reservation_values(reservation))
                balance -= reservation.amount
                entries.append(_reserve_entry(reservation, balance))
                taken[account_id] = taken.get(account_id, 0) + reservation.amount
        for account_id, total in taken.items():
            credits = await _take(conn, account_id, total)
            if credits != balances[account_id]:  # another writer moved the balance: run alone
                raise RuntimeError("an account's balance changed under a grouped reservation")
        if new_rows:
            await conn.execute(_INSERT_RESERVATION, new_rows)
            await append_entries(conn, *entries)
        return answers

    def _decide(
        self,
        account_id: str,
        requests: Sequence[ReserveRequest],
        at: datetime,
        existing: dict[str, Reservation],
        balances: dict[str, int],
    ) -> BatchSettlement:
        """One call, against the balances the calls before it left (which it updates)."""
        for request in requests:
            if request.job_id in existing:
                check_repeat(existing[request.job_id], request)
        if account_id not in balances:
            raise AccountNotFoundError(f"no account {shown(account_id)!r}")
        new = [self._ledger._new_reservation(r, at) for r in requests if r.job_id not in existing]
        if len({r.job_id for r in new}) != len(new):
            raise InvalidArgumentError("a batch names one job id twice", field="requests")
        total = sum(r.amount for r in new)
        if balances[account_id] < total:
            raise InsufficientCreditsError(total, balances[account_id])
        balances[account_id] -= total
        by_job = {**existing, **{r.job_id: r for r in new}}
        return BatchSettlement([by_job[r.job_id] for r in requests], balances[account_id], created=new)


async def _take(conn: AsyncConnection, account_id: str, amount: int) -> int | None:
    """Moves ``amount`` credits from the balance to held, unless the balance is short; returns the new
    balance, or None when the account is short of credits or does not exist."""
    credits: int | None = await conn.scalar(_TAKE, {"b_account": account_id, "b_amount": amount})
    return credits


async def _repeat_or_refuse(conn: AsyncConnection, request: ReserveRequest) -> Settlement:
    """A Reserve that could not take its credits: a repeat of an earlier one, or refused."""
    existing = await _reservation(conn, request.job_id)
    if existing is not None:
        check_repeat(existing, request)
    credits = await _credits(conn, request.account_id)
    if existing is not None:
        return Settlement(existing, credits, changed=False)
    raise InsufficientCreditsError(request.amount, credits)


async def _credits(conn: AsyncConnection, account_id: str) -> int:
    credits = await conn.scalar(select(accounts.c.credits).where(accounts.c.id == account_id))
    if credits is None:
        raise AccountNotFoundError(f"no account {shown(account_id)!r}")
    return int(credits)


async def _reservation(conn: AsyncConnection, job_id: str) -> Reservation | None:
    row = (await conn.execute(select(reservations).where(reservations.c.job_id == job_id))).first()
    return to_reservation(row) if row else None


def _reserve_entry(reservation: Reservation, balance_after: int) -> dict[str, object]:
    return entry_values(
        reservation.account_id,
        EntryKind.RESERVE,
        -reservation.amount,
        balance_after,
        reservation.create_time,
        job_id=reservation.job_id,
    )


def _decode_entry_token(token: str) -> int:
    if not token.isdigit():
        raise InvalidArgumentError("invalid page_token", field="page_token")
    return int(token)


def _encode_reservation_token(last: Reservation) -> str:
    key = f"{last.create_time.astimezone(UTC).isoformat()}|{last.job_id}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_reservation_token(token: str) -> tuple[datetime, str]:
    try:
        created, _, job_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().partition("|")
        moment = datetime.fromisoformat(created)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentError("invalid page_token", field="page_token") from exc
    if moment.tzinfo is None or not job_id:
        raise InvalidArgumentError("invalid page_token", field="page_token")
    return moment, job_id
