"""Rows to domain records, and the one way a ledger entry is written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing.domain import (
    Account,
    ApiToken,
    EntryKind,
    JobDetails,
    JobError,
    JobResult,
    LedgerEntry,
    ReleaseReason,
    Reservation,
    ReservationState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookState,
)
from imagegen_billing.models import accounts, api_tokens, ledger_entries

ACCOUNT_COLUMNS = (
    accounts.c.id,
    accounts.c.email,
    accounts.c.credits,
    accounts.c.reserved_credits,
    accounts.c.create_time,
)
TOKEN_COLUMNS = (
    api_tokens.c.id,
    api_tokens.c.account_id,
    api_tokens.c.label,
    api_tokens.c.prefix,
    api_tokens.c.create_time,
    api_tokens.c.last_used_time,
    api_tokens.c.revoke_time,
)


#: A result row of any shape.
AnyRow = Row[*tuple[Any, ...]]


_INSERT_ENTRY = insert(ledger_entries)


def now() -> datetime:
    return datetime.now(UTC)


def to_account(row: AnyRow) -> Account:
    return Account(
        id=row.id,
        email=row.email,
        credits=row.credits,
        reserved_credits=row.reserved_credits,
        create_time=row.create_time,
    )


def to_token(row: AnyRow) -> ApiToken:
    return ApiToken(
        id=row.id,
        account_id=row.account_id,
        label=row.label,
        prefix=row.prefix,
        create_time=row.create_time,
        last_used_time=row.last_used_time,
        revoke_time=row.revoke_time,
    )


def to_reservation(row: AnyRow) -> Reservation:
    """The reservation of a row; its result and webhook delivery are read by their own functions,
    the same ones every reader of a reservation row uses."""
    return Reservation(
        job_id=row.job_id,
        account_id=row.account_id,
        amount=row.amount,
        state=ReservationState(row.state),
        create_time=row.create_time,
        expire_time=row.expire_time,
        settle_time=row.settle_time,
        details=JobDetails(
            model=row.model,
            width=row.width,
            height=row.height,
            request_fingerprint=row.request_fingerprint,
            webhook_url=row.webhook_url,
            prompt=row.prompt,
        ),
        release_reason=ReleaseReason(row.release_reason) if row.release_reason else None,
        release_detail=row.release_detail,
        result=to_result(row),
        start_time=row.start_time,
        webhook=to_webhook_delivery(row),
    )


def to_result(row: AnyRow) -> JobResult:
    """The JobResult of a reservation row (the inverse of ``result_values``)."""
    return JobResult(
        image_url=row.result_image_url,
        mime_type=row.result_mime_type,
        width=row.result_width,
        height=row.result_height,
        error=JobError(row.result_error_code) if row.result_error_code else None,
        error_message=row.result_error_message,
        finish_time=row.result_finish_time,
    )


def to_webhook_delivery(row: AnyRow) -> WebhookDelivery | None:
    """The webhook delivery of a reservation row; None when its job has no webhook."""
    state = WebhookState(row.webhook_state)
    if state is WebhookState.NONE:
        return None
    return WebhookDelivery(
        url=row.webhook_url,
        state=state,
        attempt_count=row.webhook_attempt_count,
        last_status_code=row.webhook_last_status_code,
        last_error=row.webhook_last_error,
        last_attempt_time=row.webhook_last_attempt_time,
    )


def to_webhook_attempt(row: AnyRow) -> WebhookAttempt:
    return WebhookAttempt(
        job_id=row.job_id,
        attempt=row.attempt,
        status_code=row.status_code,
        error=row.error,
        attempt_time=row.attempt_time,
    )


def to_entry(row: AnyRow) -> LedgerEntry:
    return LedgerEntry(
        id=row.id,
        account_id=row.account_id,
        kind=EntryKind(row.kind),
        amount=row.amount,
        balance_after=row.balance_after,
        job_id=row.job_id or "",
        note=row.note,
        create_time=row.create_time,
    )


def reservation_values(reservation: Reservation) -> dict[str, Any]:
    """The row of a reservation (the inverse of ``to_reservation``)."""
    return {
        "job_id": reservation.job_id,
        "account_id": reservation.account_id,
        "amount": reservation.amount,
        "state": reservation.state.value,
        "create_time": reservation.create_time,
        "expire_time": reservation.expire_time,
        "settle_time": reservation.settle_time,
        "model": reservation.details.model,
        "width": reservation.details.width,
        "height": reservation.details.height,
        "request_fingerprint": reservation.details.request_fingerprint,
        "prompt": reservation.details.prompt,
        "release_reason": reservation.release_reason.value if reservation.release_reason else "",
        "release_detail": reservation.release_detail,
        "start_time": reservation.start_time,
        **result_values(reservation.result),
        **webhook_values(reservation.webhook),
    }


def webhook_values(delivery: WebhookDelivery | None) -> dict[str, Any]:
    if delivery is None:
        delivery = WebhookDelivery(url="", state=WebhookState.NONE)
    return {
        "webhook_url": delivery.url,
        "webhook_state": delivery.state.value,
        "webhook_attempt_count": delivery.attempt_count,
        "webhook_last_status_code": delivery.last_status_code,
        "webhook_last_error": delivery.last_error,
        "webhook_last_attempt_time": delivery.last_attempt_time,
    }


def result_values(result: JobResult) -> dict[str, Any]:
    return {
        "result_image_url": result.image_url,
        "result_mime_type": result.mime_type,
        "result_width": result.width,
        "result_height": result.height,
        "result_error_code": result.error.value if result.error is not None else "",
        "result_error_message": result.error_message,
        "result_finish_time": result.finish_time,
    }


def entry_values(
    account_id: str,
    kind: EntryKind,
    amount: int,
    balance_after: int,
    at: datetime,
    *,
    job_id: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "kind": kind.value,
        "amount": amount,
        "balance_after": balance_after,
        "job_id": job_id,
        "note": note,
        "create_time": at,
    }


def append_entries(conn: Connection, *entries: dict[str, Any]) -> None:
    """Appends ledger entries (built by ``entry_values``) in the caller's (sync) transaction."""
    if entries:
        conn.execute(_INSERT_ENTRY, entries[0] if len(entries) == 1 else list(entries))


async def append_entry(conn: AsyncConnection, **values: Any) -> LedgerEntry:
    """Appends one ledger entry and returns it with its id."""
    row = (
        await conn.execute(insert(ledger_entries).values(entry_values(**values)).returning(ledger_entries))
    ).one()
    return to_entry(row)
