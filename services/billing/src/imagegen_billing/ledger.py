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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, any_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
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
# expressions costs more Python time than a round trip to the database. A group's reads lock what they
# read (reservations first, then accounts, each in key order: one lock order for every writer) on
# PostgreSQL, FOR NO KEY UPDATE as the UPDATEs that follow would (foreign-key checks of other writers,
# a webhook attempt of a job, go on); SQLite's writer holds the whole database. PostgreSQL takes the
# ids as one array, so that one prepared statement serves groups of any size.
_JOB_IDS = bindparam("b_ids", type_=ARRAY(String))
_ACCOUNT_IDS = bindparam("b_ids", type_=ARRAY(String))
_LOCK_RESERVATIONS = {
    "postgresql": select(reservations)
    .where(reservations.c.job_id == any_(_JOB_IDS))
    .order_by(reservations.c.job_id)
    .with_for_update(key_share=True),
    "sqlite": select(reservations)
    .where(reservations.c.job_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(reservations.c.job_id),
}
_BALANCE_COLUMNS = (accounts.c.id, accounts.c.credits, accounts.c.reserved_credits)
_LOCK_ACCOUNTS = {
    "postgresql": select(*_BALANCE_COLUMNS)
    .where(accounts.c.id == any_(_ACCOUNT_IDS))
    .order_by(accounts.c.id)
    .with_for_update(key_share=True),
    "sqlite": select(*_BALANCE_COLUMNS)
    .where(accounts.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(accounts.c.id),
}
#: A group's new balance of an account, on condition that it is still the one the group read.
_SET_BALANCE = (
    update(accounts)
    .where(
        accounts.c.id == bindparam("b_account"),
        accounts.c.credits == bindparam("b_credits_before"),
        accounts.c.reserved_credits == bindparam("b_reserved_before"),
    )
    .values(credits=bindparam("b_credits"), reserved_credits=bindparam("b_reserved"))
)
#: A held reservation settled (its columns come as parameters named like them).
_SETTLE_RESERVATION = update(reservations).where(
    reservations.c.job_id == bindparam("b_job"), reservations.c.state == ReservationState.HELD.value
)
#: A reservation's first start (the group read it without one).
_START_RESERVATION = update(reservations).where(
    reservations.c.job_id == bindparam("b_job"), reservations.c.start_time.is_(None)
)
_INSERT_RESERVATION = insert(reservations)
#: The reservations of a list of jobs (the gateways' status watch asks every second or so). On
#: PostgreSQL one array parameter, so that one statement serves any number of jobs; SQLite expands.
_RESERVATIONS_OF_JOBS = {
    "postgresql": select(reservations).where(
        reservations.c.job_id == any_(bindparam("b_jobs", type_=ARRAY(String)))
    ),
    "sqlite": select(reservations).where(reservations.c.job_id.in_(bindparam("b_jobs", expanding=True))),
}

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
        self._batch = _LedgerBatch(self)

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
        try:
            settled: Settlement = await self._group.run_batched(
                self._batch, _Reserve(request, reservation), self._undo_settlement
            )
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
            self._batch, _ReserveAll(account_id, requests), self._undo_batch
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
        def release_all(conn: Connection) -> None:
            releases: list[_Item] = [
                _Settle(job_id, ReservationState.RELEASED, ReleaseReason.TIMEOUT, _ABANDONED, None)
                for job_id in job_ids
            ]
            for settled, _ in self._batch.run(conn, releases):
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
        """Records when a generator first took the job; False when the job has no reservation.

        Grouped with the reservations and settlements that arrive together (a job's start and its
        outcome, when it is quick)."""
        check_job_id(job_id)
        started: bool = await self._group.run_batched(self._batch, _Start(job_id, at))
        return started

    async def _settle(
        self,
        job_id: str,
        target: ReservationState,
        reason: ReleaseReason | None,
        detail: str,
        result: JobResult | None,
    ) -> JobSettlement:
        check_job_id(job_id)
        settled: JobSettlement = await self._group.run_batched(
            self._batch, _Settle(job_id, target, reason, detail, result)
        )
        if settled.outcome in (SettleOutcome.CAPTURED, SettleOutcome.RELEASED):
            assert settled.reservation is not None
            if reason is not None:
                metrics.released(settled.reservation.amount, reason)
            else:
                metrics.captured(settled.reservation.amount)
        return settled

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
            rows = (await conn.execute(_RESERVATIONS_OF_JOBS[_dialect(conn)], {"b_jobs": wanted})).all()
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


@dataclass(frozen=True, slots=True)
class _Reserve:
    """A Reserve call: its request and the reservation it makes unless the job id has one."""

    request: ReserveRequest
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class _ReserveAll:
    """A ReserveBatch call: all of its new reservations or none."""

    account_id: str
    requests: Sequence[ReserveRequest]


@dataclass(frozen=True, slots=True)
class _Settle:
    """A settlement of a job's reservation: captured, or released with a reason."""

    job_id: str
    target: ReservationState
    reason: ReleaseReason | None
    detail: str
    result: JobResult | None


@dataclass(frozen=True, slots=True)
class _Start:
    """A generator took the job at ``at`` (kept unless an earlier start was)."""

    job_id: str
    at: datetime


_Item = _Reserve | _ReserveAll | _Settle | _Start
_Answer = tuple[Any, BillingError | None]


@dataclass(slots=True)
class _Books:
    """What one group reads (its rows locked) and how its calls change it, in arrival order."""

    at: datetime
    #: Every reservation the group's calls name, as it stands after the calls decided so far.
    reservations: dict[str, Reservation]
    #: Account id -> [credits, reserved credits], as they stand after the calls decided so far.
    balances: dict[str, list[int]]
    #: The balances as read, for the conditional UPDATE.
    read: dict[str, tuple[int, int]]
    #: Reservations the group creates and existing ones it settles (their last version).
    created: dict[str, Reservation] = field(default_factory=dict)
    settled: dict[str, Reservation] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: Job id -> start time, for the existing reservations the group records a start of.
    started: dict[str, datetime] = field(default_factory=dict)

    def credits(self, account_id: str) -> int:
        balance = self.balances.get(account_id)
        if balance is None:
            raise AccountNotFoundError(f"no account {shown(account_id)!r}")
        return balance[0]

    def hold(self, reservation: Reservation) -> int:
        """Takes a new reservation's credits off its balance (the caller checked they are there)."""
        balance = self.balances[reservation.account_id]
        balance[0] -= reservation.amount
        balance[1] += reservation.amount
        self.reservations[reservation.job_id] = self.created[reservation.job_id] = reservation
        self.entries.append(_reserve_entry(reservation, balance[0]))
        return balance[0]

    def settle(self, held: Reservation, settled: Reservation, returned: int, note: str) -> int:
        balance = self.balances[held.account_id]
        balance[0] += returned
        balance[1] -= held.amount
        self.reservations[held.job_id] = settled
        (self.created if held.job_id in self.created else self.settled)[held.job_id] = settled
        kind = EntryKind.RELEASE if settled.state is ReservationState.RELEASED else EntryKind.CAPTURE
        self.entries.append(
            entry_values(held.account_id, kind, returned, balance[0], self.at, job_id=held.job_id, note=note)
        )
        return balance[0]


class _LedgerBatch:
    """Reserve, ReserveBatch and settlement calls that arrive together, as a handful of statements for
    all of them instead of a few per call: one SELECT of the reservations they name, one of the
    balances (rows locked on PostgreSQL), then one conditional UPDATE of the balances, one UPDATE of
    the settled reservations and two INSERTs (reservations, ledger entries), each one executemany.

    Each call is decided in arrival order against what the calls before it left, exactly as one
    transaction each would have (per-account order, the no-overdraw rule, repeats answered as they
    stand); a refusal is decided before anything is written. The balances' UPDATE applies only to the
    balances the decisions were made on, so the database still guards the no-overdraw rule: if a row
    changed anyway, the group fails and group_commit runs each call alone.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def run(self, conn: Connection, items: list[_Item]) -> list[_Answer]:
        books = self._read(conn, items)
        answers: list[_Answer] = []
        for item in items:
            try:
                if isinstance(item, _Settle):
                    answers.append((self._settle(books, item), None))
                elif isinstance(item, _Start):
                    answers.append((self._start(books, item), None))
                elif isinstance(item, _Reserve):
                    answers.append((self._reserve(books, item), None))
                else:
                    answers.append((self._reserve_all(books, item), None))
            except BillingError as refused:
                answers.append((None, refused))
        self._write(conn, books)
        return answers

    def _read(self, conn: Connection, items: list[_Item]) -> _Books:
        job_ids: set[str] = set()
        account_ids: set[str] = set()
        for item in items:
            if isinstance(item, _Settle | _Start):
                job_ids.add(item.job_id)
            elif isinstance(item, _Reserve):
                job_ids.add(item.request.job_id)
                account_ids.add(item.request.account_id)
            else:
                job_ids.update(r.job_id for r in item.requests)
                account_ids.add(item.account_id)
        dialect = _dialect(conn)
        rows = conn.execute(_LOCK_RESERVATIONS[dialect], {"b_ids": sorted(job_ids)})
        existing = {row.job_id: to_reservation(row) for row in rows}
        account_ids.update(r.account_id for r in existing.values())
        rows = conn.execute(_LOCK_ACCOUNTS[dialect], {"b_ids": sorted(account_ids)})
        read = {row.id: (row.credits, row.reserved_credits) for row in rows}
        return _Books(now(), existing, {a: list(b) for a, b in read.items()}, read)

    def _reserve(self, books: _Books, item: _Reserve) -> Settlement:
        request = item.request
        existing = books.reservations.get(request.job_id)
        if existing is not None:
            check_repeat(existing, request)
            return Settlement(existing, books.credits(request.account_id), changed=False)
        credits = books.credits(request.account_id)
        if credits < request.amount:
            raise InsufficientCreditsError(request.amount, credits)
        return Settlement(item.reservation, books.hold(item.reservation), changed=True)

    def _reserve_all(self, books: _Books, item: _ReserveAll) -> BatchSettlement:
        existing = books.reservations
        for request in item.requests:
            if request.job_id in existing:
                check_repeat(existing[request.job_id], request)
        credits = books.credits(item.account_id)
        new = [self._ledger._new_reservation(r, books.at) for r in item.requests if r.job_id not in existing]
        if len({r.job_id for r in new}) != len(new):
            raise InvalidArgumentError("a batch names one job id twice", field="requests")
        total = sum(r.amount for r in new)
        if credits < total:
            raise InsufficientCreditsError(total, credits)
        for reservation in new:
            credits = books.hold(reservation)
        return BatchSettlement([existing[r.job_id] for r in item.requests], credits, created=new)

    def _settle(self, books: _Books, item: _Settle) -> JobSettlement:
        held = books.reservations.get(item.job_id)
        if held is None:
            return JobSettlement(SettleOutcome.UNKNOWN_JOB, None, 0)
        outcome = settle_outcome(held.state, item.target)
        if held.state is not ReservationState.HELD:
            return JobSettlement(outcome, held, books.credits(held.account_id))
        settled = replace(
            held,
            state=item.target,
            settle_time=books.at,
            release_reason=item.reason,
            release_detail=clip(item.detail),
            result=clip_result(item.result) if item.result is not None else held.result,
        )
        returned = held.amount if item.target is ReservationState.RELEASED else 0
        note = item.reason.value if item.reason is not None else ""
        return JobSettlement(outcome, settled, books.settle(held, settled, returned, note))

    def _start(self, books: _Books, item: _Start) -> bool:
        reservation = books.reservations.get(item.job_id)
        if reservation is None:
            return False
        if reservation.start_time is None:
            started = replace(reservation, start_time=item.at)
            books.reservations[item.job_id] = started
            if item.job_id in books.created:  # made by this group: inserted with its start
                books.created[item.job_id] = started
            else:
                books.started[item.job_id] = item.at
                if item.job_id in books.settled:
                    books.settled[item.job_id] = started
        return True

    def _write(self, conn: Connection, books: _Books) -> None:
        changed = [
            {
                "b_account": account_id,
                "b_credits_before": books.read[account_id][0],
                "b_reserved_before": books.read[account_id][1],
                "b_credits": balance[0],
                "b_reserved": balance[1],
            }
            for account_id, balance in books.balances.items()
            if tuple(balance) != books.read[account_id]
        ]
        if changed:
            _execute_all(conn, _SET_BALANCE, changed, "an account's balance changed under a group")
        if books.created:
            conn.execute(_INSERT_RESERVATION, [reservation_values(r) for r in books.created.values()])
        if books.settled:
            settled = [_settle_values(r) for r in books.settled.values()]
            _execute_all(conn, _SETTLE_RESERVATION, settled, "a reservation settled under a group")
        if books.started:
            starts = [{"b_job": job_id, "start_time": at} for job_id, at in books.started.items()]
            _execute_all(conn, _START_RESERVATION, starts, "a reservation started under a group")
        append_entries(conn, *books.entries)


def _dialect(conn: Connection | AsyncConnection) -> str:
    """The key of the statement tables above: "postgresql" or "sqlite"."""
    return "postgresql" if conn.dialect.name == "postgresql" else "sqlite"


def _execute_all(conn: Connection, statement: Any, params: list[dict[str, Any]], why: str) -> None:
    """Runs a conditional UPDATE for each parameter set; raises RuntimeError (the group is then run
    again call by call) when one matched no row, where the driver reports how many rows matched."""
    result = conn.execute(statement, params)
    if (len(params) == 1 or conn.dialect.supports_sane_multi_rowcount) and result.rowcount != len(params):
        raise RuntimeError(why)


def _settle_values(reservation: Reservation) -> dict[str, Any]:
    """The parameters of _SETTLE_RESERVATION for a reservation as it stands settled."""
    return {
        "b_job": reservation.job_id,
        "state": reservation.state.value,
        "settle_time": reservation.settle_time,
        "release_reason": reservation.release_reason.value if reservation.release_reason else "",
        "release_detail": reservation.release_detail,
        **result_values(reservation.result),
    }


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
