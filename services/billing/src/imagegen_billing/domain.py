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
from urllib.parse import urlsplit

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


class WebhookState(enum.StrEnum):
    """Where a job's webhook delivery stands (NONE: the job has no webhook)."""

    NONE = ""
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


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
    #: Where the job's outcome is posted; empty for none.
    webhook_url: str = ""


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
class WebhookDelivery:
    """A job's webhook delivery, summarised from its attempts."""

    url: str
    state: WebhookState
    attempt_count: int = 0
    last_status_code: int = 0
    last_error: str = ""
    last_attempt_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    job_id: str
    #: 1 for the first attempt.
    attempt: int
    #: HTTP status of the answer; 0 when there was none.
    status_code: int
    error: str
    attempt_time: datetime


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    account_id: str
    url: str
    has_secret: bool
    update_time: datetime | None


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
    #: Delivery of the outcome to the job's webhook; None when it has none.
    webhook: WebhookDelivery | None = None


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
    if request.details.webhook_url:
        check_webhook_url(request.details.webhook_url)


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


def check_webhook_url(url: str) -> str:
    """The URL trimmed; raises InvalidArgumentError unless it is an http(s) URL with a host.

    Whether its address may be contacted is for the sender to decide when it delivers.
    """
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgumentError(f"the webhook URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        raise InvalidArgumentError(f"{url!r} is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"{url!r} is not an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError("a webhook URL must not carry credentials")
    return url


def webhook_state_after(
    current: WebhookState, attempt: int, count: int, status_code: int, final: bool
) -> WebhookState:
    """The state of a delivery after an attempt: delivered on a 2xx (and for good), failed after a
    failed final attempt, pending otherwise. A late report of an earlier attempt changes nothing."""
    if current is WebhookState.DELIVERED:
        return current
    if 200 <= status_code < 300:
        return WebhookState.DELIVERED
    if attempt < count:
        return current
    return WebhookState.FAILED if final else WebhookState.PENDING


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
