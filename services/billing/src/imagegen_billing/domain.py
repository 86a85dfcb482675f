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

#: Longest free text (labels, notes, release details) kept in the database.
MAX_TEXT_CHARS = 200
MAX_URL_CHARS = 2048
MAX_MESSAGE_CHARS = 1000
#: The longest prompt either front end takes; billing keeps no more.
MAX_PROMPT_CHARS = 1024
#: Most reservations one ReserveBatch may hold.
MAX_BATCH_SIZE = 100
#: Most job ids one BatchGetReservations may name.
MAX_BATCH_GET_SIZE = 1000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


#: Longest id shown in a message: ids come from clients, and an error's message travels in a trailer.
MAX_SHOWN_ID_CHARS = 64
#: Longest job id (the database's key column) and account id.
MAX_JOB_ID_CHARS = 128
MAX_ACCOUNT_ID_CHARS = 64
# Ids are printable ASCII without spaces: what the gateway mints (``img_…``) and what a person types.
_ID = re.compile(r"^[\x21-\x7e]+$")


class ErrorReason(enum.Enum):
    """Why billing refuses a request; mirrors ``imagegen.billing.v1.ErrorReason`` by name (the
    transport maps one to the other, and a test keeps them in step)."""

    UNSPECIFIED = enum.auto()
    INVALID_TOKEN = enum.auto()
    INSUFFICIENT_CREDITS = enum.auto()
    ALREADY_SETTLED = enum.auto()
    JOB_ID_REUSED = enum.auto()
    ACCOUNT_NOT_FOUND = enum.auto()
    RESERVATION_NOT_FOUND = enum.auto()
    MODEL_NOT_FOUND = enum.auto()
    INVALID_ARGUMENT = enum.auto()
    ALREADY_EXISTS = enum.auto()
    TOKEN_NOT_FOUND = enum.auto()
    CALLER_UNAUTHENTICATED = enum.auto()
    CALLER_NOT_PERMITTED = enum.auto()


class BillingError(Exception):
    """A request billing refuses; the message is fit to show the caller. ``reason`` is what a client
    switches on and ``metadata()`` the values it acts on."""

    reason: ErrorReason = ErrorReason.UNSPECIFIED

    def metadata(self) -> dict[str, str]:
        return {}


class NotFoundError(BillingError):
    pass


class AccountNotFoundError(NotFoundError):
    reason = ErrorReason.ACCOUNT_NOT_FOUND


class ReservationNotFoundError(NotFoundError):
    reason = ErrorReason.RESERVATION_NOT_FOUND

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no reservation for job {shown(job_id)}")


class TokenNotFoundError(NotFoundError):
    reason = ErrorReason.TOKEN_NOT_FOUND


class InvalidArgumentError(BillingError):
    """A malformed request; ``field`` names the request field at fault, when one is."""

    reason = ErrorReason.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class AlreadyExistsError(BillingError):
    reason = ErrorReason.ALREADY_EXISTS


class FailedPreconditionError(BillingError):
    pass


class UnauthenticatedError(BillingError):
    reason = ErrorReason.INVALID_TOKEN


class InsufficientCreditsError(FailedPreconditionError):
    reason = ErrorReason.INSUFFICIENT_CREDITS

    def __init__(self, need: int, have: int, message: str = "") -> None:
        super().__init__(message or f"insufficient credits: need {need}, have {have}")
        self.need = need
        self.have = have

    def metadata(self) -> dict[str, str]:
        return {"required_credits": str(self.need), "available_credits": str(self.have)}


class AlreadySettledError(FailedPreconditionError):
    """Settling a reservation the other way than it was settled already."""

    reason = ErrorReason.ALREADY_SETTLED

    def __init__(self, job_id: str, state: ReservationState) -> None:
        super().__init__(f"reservation for job {shown(job_id)} was already {state.value}")
        self.job_id = job_id
        self.state = state

    def metadata(self) -> dict[str, str]:
        return {"state": self.state.value}


class JobIdReusedError(FailedPreconditionError):
    """A Reserve naming a job id that holds a reservation of another account or amount."""

    reason = ErrorReason.JOB_ID_REUSED

    def __init__(self, job_id: str, amount: int) -> None:
        super().__init__(
            f"job {shown(job_id)} already has a reservation for a different request "
            f"({amount} credits); use a new job id"
        )
        self.job_id = job_id


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


class ReleaseReason(enum.StrEnum):
    """Why a reservation's credits were given back; mirrors ``imagegen.billing.v1.ReleaseReason`` by
    name. The value is what the database keeps and the metric label."""

    #: The job ran and failed (its result says how); only ``Ledger.settle`` releases with it.
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    NOT_QUEUED = "not_queued"
    OPERATOR = "operator"


class JobError(enum.StrEnum):
    """Why a job failed; mirrors ``imagegen.jobs.v1.ErrorCode`` by name. The value is the stable name
    the database keeps (``content_rejected``)."""

    UNSPECIFIED = "unspecified"
    INVALID_INPUT = "invalid_input"
    INPUT_IMAGE_REFUSED = "input_image_refused"
    CONTENT_REJECTED = "content_rejected"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class SettleOutcome(enum.StrEnum):
    """What settling a job's result did; the value is the settlement metric's label."""

    CAPTURED = "captured"
    RELEASED = "released"
    #: Already settled the same way.
    DUPLICATE = "duplicate"
    #: Already settled the other way; nothing changed.
    CONFLICT = "conflict"
    #: The job has no reservation.
    UNKNOWN_JOB = "unknown_job"


class EntryKind(enum.StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    CAPTURE = "capture"
    RELEASE = "release"
    DEBIT = "debit"
    # Payments (payment_rules.py): the only entries that may take a balance below zero are REFUND and
    # DISPUTE, which take back credits of a payment already spent.
    PURCHASE = "purchase"
    REFUND = "refund"
    DISPUTE = "dispute"
    DISPUTE_REVERSAL = "dispute_reversal"


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
    #: The prompt, shown to the account itself in its history (never logged whole).
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class JobResult:
    """How a reservation's job ended: an image, or an error and a message (``error`` None: none)."""

    image_url: str = ""
    mime_type: str = ""
    width: int = 0
    height: int = 0
    error: JobError | None = None
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
    #: Set once released.
    release_reason: ReleaseReason | None = None
    #: Free text beside the reason, for people and logs (never parsed).
    release_detail: str = ""
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
    """The answer to Reserve or Release: the reservation, the account's balance after it, and whether
    this call changed anything (False for an idempotent repeat)."""

    reservation: Reservation
    credits: int
    changed: bool


@dataclass(frozen=True, slots=True)
class JobSettlement:
    """The answer to settling a job's result: what it did, the reservation as it stands after it
    (None for an unknown job) and the account's balance."""

    outcome: SettleOutcome
    reservation: Reservation | None
    credits: int


@dataclass(frozen=True, slots=True)
class BatchSettlement:
    reservations: list[Reservation]
    credits: int
    #: The reservations this call created (the others existed already).
    created: list[Reservation]


def check_reserve_request(request: ReserveRequest) -> None:
    """Raises InvalidArgumentError for a request that can never be served."""
    check_account_id(request.account_id)
    check_job_id(request.job_id)
    if request.amount <= 0:
        raise InvalidArgumentError(f"amount must be positive, not {request.amount}", field="amount")
    if request.details.webhook_url:
        check_webhook_url(request.details.webhook_url)


def check_batch(requests: Sequence[ReserveRequest]) -> str:
    """Validates a ReserveBatch and returns its one account id."""
    if not requests:
        raise InvalidArgumentError("a batch needs at least one request", field="requests")
    if len(requests) > MAX_BATCH_SIZE:
        raise InvalidArgumentError(
            f"a batch holds at most {MAX_BATCH_SIZE} requests, not {len(requests)}", field="requests"
        )
    for request in requests:
        check_reserve_request(request)
    accounts = {request.account_id for request in requests}
    if len(accounts) > 1:
        raise InvalidArgumentError(
            "every request of a batch must name the same account", field="requests.account_id"
        )
    job_ids = [request.job_id for request in requests]
    if len(set(job_ids)) != len(job_ids):
        raise InvalidArgumentError("the job ids of a batch must be distinct", field="requests.job_id")
    return requests[0].account_id


def check_batch_get(job_ids: Sequence[str]) -> list[str]:
    """Validates a BatchGetReservations and returns its distinct job ids, in order of first mention."""
    if len(job_ids) > MAX_BATCH_GET_SIZE:
        raise InvalidArgumentError(
            f"a batch names at most {MAX_BATCH_GET_SIZE} job ids, not {len(job_ids)}", field="job_ids"
        )
    for job_id in job_ids:
        check_job_id(job_id, field="job_ids")
    return list(dict.fromkeys(job_ids))


def clip_result(result: JobResult) -> JobResult:
    """A result with its free text cut to what the database keeps."""
    return replace(
        result,
        image_url=result.image_url[:MAX_URL_CHARS],
        mime_type=result.mime_type[:MAX_TEXT_CHARS],
        error_message=result.error_message[:MAX_MESSAGE_CHARS],
    )


def check_repeat(existing: Reservation, request: ReserveRequest) -> None:
    """A Reserve whose job id has a reservation already is a repeat when it names the same account and
    amount; the caller compares request fingerprints, if it keeps them. Anything else is refused."""
    if existing.account_id != request.account_id or existing.amount != request.amount:
        raise JobIdReusedError(request.job_id, existing.amount)


def settle_target(result: JobResult) -> ReservationState:
    """What a job's result means for its credits: an image captures them, a failure releases them.

    Raises InvalidArgumentError for a result that is neither.
    """
    if result.image_url:
        return ReservationState.CAPTURED
    if result.error is not None:
        return ReservationState.RELEASED
    raise InvalidArgumentError("a result needs an image_url or an error", field="result")


def failure_release_reason(error: JobError | None) -> ReleaseReason:
    """Why a failed job's credits go back: a job the generator stopped because its submitter gave up
    (or its deadline passed) reads the same as one the submitter released itself."""
    if error is JobError.CANCELLED:
        return ReleaseReason.CANCELLED
    if error is JobError.DEADLINE_EXCEEDED:
        return ReleaseReason.TIMEOUT
    return ReleaseReason.FAILED


def settle_outcome(before: ReservationState | None, target: ReservationState) -> SettleOutcome:
    """What settling a reservation in state ``before`` (None: there is none) to ``target`` does."""
    if before is None:
        return SettleOutcome.UNKNOWN_JOB
    if before is ReservationState.HELD:
        return SettleOutcome.CAPTURED if target is ReservationState.CAPTURED else SettleOutcome.RELEASED
    return SettleOutcome.DUPLICATE if before is target else SettleOutcome.CONFLICT


def check_release_reason(reason: ReleaseReason | None) -> ReleaseReason:
    """The reason of a Release call: given, and not FAILED (a failed job is settled from its result)."""
    if reason is None:
        raise InvalidArgumentError("a release needs a reason", field="reason")
    if reason is ReleaseReason.FAILED:
        raise InvalidArgumentError("a failed job is settled with SettleJob, not released", field="reason")
    return reason


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """Raises InvalidArgumentError unless ``job_id`` is a possible job id."""
    _check_id(job_id, field, MAX_JOB_ID_CHARS)
    return job_id


def check_account_id(account_id: str, field: str = "account_id") -> str:
    _check_id(account_id, field, MAX_ACCOUNT_ID_CHARS)
    return account_id


def _check_id(value: str, field: str, longest: int) -> None:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if len(value) > longest:
        raise InvalidArgumentError(f"{field} is longer than {longest} characters", field=field)
    if not _ID.match(value):
        raise InvalidArgumentError(f"{field} must be printable ASCII without spaces", field=field)


def shown(value: str) -> str:
    """An id as a message shows it: cut short, as it came from a client and a message travels in a
    trailer of bounded size."""
    return value if len(value) <= MAX_SHOWN_ID_CHARS else value[:MAX_SHOWN_ID_CHARS] + "…"


def check_webhook_url(url: str) -> str:
    """The URL trimmed; raises InvalidArgumentError unless it is an http(s) URL with a host.

    Whether its address may be contacted is for the sender to decide when it delivers.
    """
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgumentError(
            f"the webhook URL is longer than {MAX_URL_CHARS} characters", field="webhook_url"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        raise InvalidArgumentError("the webhook URL is not a valid URL", field="webhook_url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError("the webhook URL is not an http or https URL", field="webhook_url")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError("a webhook URL must not carry credentials", field="webhook_url")
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
        raise InvalidArgumentError("amount must not be zero", field="amount")
    return EntryKind.GRANT if amount > 0 else EntryKind.DEBIT


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased; raises InvalidArgumentError when it is not an email address."""
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidArgumentError(f"{shown(email)!r} is not an email address", field="email")
    return email


def clip(text: str) -> str:
    return text.strip()[:MAX_TEXT_CHARS]
