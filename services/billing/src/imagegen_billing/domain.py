"""Billing's domain: records, errors and the ledger rules, as plain Python (no SQL, gRPC or NATS).

Credits are integers. Every change of a balance is one append-only ledger entry, and a balance always
equals the sum of its account's entries. Holding credits for a job (a reservation) takes them off the
balance at once; capturing it keeps them spent, releasing it gives them back.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

#: Longest free text (labels, notes, release reasons) kept in the database.
MAX_TEXT_CHARS = 200
MAX_URL_CHARS = 2048
MAX_MESSAGE_CHARS = 1000
#: Most reservations one ReserveBatch may hold.
MAX_BATCH_SIZE = 100
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class BillingError(Exception):
    """A request billing refuses; the message is fit to show the caller."""


class NotFoundError(BillingError):
    pass


class InvalidArgumentError(BillingError):
    pass


class AlreadyExistsError(BillingError):
    pass


class FailedPreconditionError(BillingError):
    pass


class UnauthenticatedError(BillingError):
    pass


class InsufficientCreditsError(FailedPreconditionError):
    def __init__(self, need: int, have: int) -> None:
        super().__init__(f"insufficient credits: need {need}, have {have}")
        self.need = need
        self.have = have


class AlreadySettledError(FailedPreconditionError):
    """Settling a reservation the other way than it was settled already."""

    def __init__(self, job_id: str, state: ReservationState) -> None:
        super().__init__(f"reservation for job {job_id} was already {state.value}")
        self.job_id = job_id
        self.state = state


class ReservationState(enum.StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"


class EntryKind(enum.StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    DEBIT = "debit"


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    email: str
    credits: int
    reserved_credits: int
    create_time: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    account_id: str
    label: str
    prefix: str
    create_time: datetime
    last_used_time: datetime | None
    revoke_time: datetime | None


@dataclass(frozen=True, slots=True)
class JobDetails:
    model: str = ""
    width: int = 0
    height: int = 0
    #: Hash of the whole request that made the job; the gateway compares it on a repeat.
    request_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class JobResult:
    """How a reservation's job ended: an image, or an error code and message."""

    image_url: str = ""
    mime_type: str = ""
    width: int = 0
    height: int = 0
    error_code: str = ""
    error_message: str = ""
    finish_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: str
    account_id: str
    amount: int
    state: ReservationState
    create_time: datetime
    expire_time: datetime
    settle_time: datetime | None
    details: JobDetails
    release_reason: str
    result: JobResult = JobResult()
    #: When a generator took the job (None while queued).
    start_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    account_id: str
    kind: EntryKind
    amount: int
    balance_after: int
    job_id: str
    note: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    account_id: str
    job_id: str
    amount: int
    #: None for the default life of a reservation.
    expire_time: datetime | None = None
    details: JobDetails = JobDetails()


@dataclass(frozen=True, slots=True)
class Settlement:
    """The answer to Reserve, Capture or Release: the reservation, the account's balance after it, and
    whether this call changed anything (False for an idempotent repeat)."""

    reservation: Reservation
    credits: int
    changed: bool


@dataclass(frozen=True, slots=True)
class BatchSettlement:
    reservations: list[Reservation]
    credits: int
    #: The reservations this call created (the others existed already).
    created: list[Reservation]


def check_reserve_request(request: ReserveRequest) -> None:
    """Raises InvalidArgumentError for a request that can never be served."""
    if not request.account_id:
        raise InvalidArgumentError("account_id is required")
    if not request.job_id:
        raise InvalidArgumentError("job_id is required")
    if request.amount <= 0:
        raise InvalidArgumentError(f"amount must be positive, not {request.amount}")


def check_batch(requests: Sequence[ReserveRequest]) -> str:
    """Validates a ReserveBatch and returns its one account id."""
    if not requests:
        raise InvalidArgumentError("a batch needs at least one request")
    if len(requests) > MAX_BATCH_SIZE:
        raise InvalidArgumentError(f"a batch holds at most {MAX_BATCH_SIZE} requests, not {len(requests)}")
    for request in requests:
        check_reserve_request(request)
    accounts = {request.account_id for request in requests}
    if len(accounts) > 1:
        raise InvalidArgumentError("every request of a batch must name the same account")
    job_ids = [request.job_id for request in requests]
    if len(set(job_ids)) != len(job_ids):
        raise InvalidArgumentError("the job ids of a batch must be distinct")
    return requests[0].account_id


def clip_result(result: JobResult) -> JobResult:
    """A result with its free text cut to what the database keeps."""
    return replace(
        result,
        image_url=result.image_url[:MAX_URL_CHARS],
        mime_type=result.mime_type[:MAX_TEXT_CHARS],
        error_code=result.error_code[:MAX_TEXT_CHARS],
        error_message=result.error_message[:MAX_MESSAGE_CHARS],
    )


def check_repeat(existing: Reservation, request: ReserveRequest) -> None:
    """A Reserve whose job id has a reservation already is a repeat when it names the same account and
    amount; the caller compares request fingerprints, if it keeps them. Anything else is refused."""
    if existing.account_id != request.account_id or existing.amount != request.amount:
        raise FailedPreconditionError(
            f"job {request.job_id} already has a reservation for a different request "
            f"({existing.amount} credits); use a new job id"
        )


def settle_is_repeat(reservation: Reservation, target: ReservationState) -> bool:
    """Whether settling ``reservation`` to ``target`` is a repeat (True) or must happen now (False).

    Raises AlreadySettledError when it was settled the other way.
    """
    if reservation.state is ReservationState.HELD:
        return False
    if reservation.state is target:
        return True
    raise AlreadySettledError(reservation.job_id, reservation.state)


def release_reason(reason: str) -> str:
    """The reason a release is recorded with: the caller's, trimmed, or ``requested``."""
    return clip(reason) or "requested"


def release_reason_label(reason: str) -> str:
    """The bounded metric label of a release reason: ``failed``, ``expired``, ``cancelled``, ``requested``."""
    lowered = reason.lower()
    if "cancel" in lowered:
        return "cancelled"
    if lowered.startswith(("expired", "timeout", "timed out")):
        return "expired"
    if lowered.startswith(("failed", "job failed")):
        return "failed"
    return "requested"


def check_grant(amount: int) -> EntryKind:
    """A grant adds credits (GRANT) or removes them (DEBIT); zero changes nothing and is refused."""
    if amount == 0:
        raise InvalidArgumentError("amount must not be zero")
    return EntryKind.GRANT if amount > 0 else EntryKind.DEBIT


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased; raises InvalidArgumentError when it is not an email address."""
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidArgumentError(f"{email!r} is not an email address")
    return email


def clip(text: str) -> str:
    return text.strip()[:MAX_TEXT_CHARS]
