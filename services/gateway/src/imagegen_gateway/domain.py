"""The gateway's own small types of a generation: what a job produced, how its credits stand.

The use cases (``generation``), the presenters and the webhook dispatcher speak these; protobuf stays at
the edges (``billing_client`` maps billing's messages, ``jobs`` the NATS payloads), so that a contract
change touches one mapper and the rules here are tested without gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from imagegen_common.catalog import Dimensions, PriceRule


class ErrorCode(enum.StrEnum):
    """Why a job failed; the value is the stable code clients see (``error.code``, MCP text, metrics)."""

    UNSPECIFIED = "failed"
    INVALID_INPUT = "invalid_input"
    INPUT_IMAGE_REFUSED = "input_image_refused"
    CONTENT_REJECTED = "content_rejected"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class ReleaseReason(enum.Enum):
    """Why a reservation's credits were given back."""

    UNSPECIFIED = enum.auto()
    FAILED = enum.auto()
    CANCELLED = enum.auto()
    TIMEOUT = enum.auto()
    EXPIRED = enum.auto()
    NOT_QUEUED = enum.auto()
    OPERATOR = enum.auto()


class ReservationState(enum.Enum):
    HELD = enum.auto()
    CAPTURED = enum.auto()
    RELEASED = enum.auto()


class WebhookState(enum.Enum):
    PENDING = enum.auto()
    DELIVERED = enum.auto()
    FAILED = enum.auto()


class SettleOutcome(enum.Enum):
    """What settling a job did (billing decides; the gateway only reports what happened)."""

    CAPTURED = enum.auto()
    RELEASED = enum.auto()
    DUPLICATE = enum.auto()
    CONFLICT = enum.auto()
    UNSPECIFIED = enum.auto()


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a job produced: an image (``image_url`` set) or a failure (``error`` set)."""

    image_url: str = ""
    mime_type: str = ""
    width: int = 0
    height: int = 0
    error: ErrorCode | None = None
    error_message: str = ""
    finish_time: datetime | None = None

    @property
    def succeeded(self) -> bool:
        return bool(self.image_url)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    url: str
    state: WebhookState
    attempt_count: int = 0
    last_status_code: int = 0
    last_error: str = ""
    last_attempt_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One delivery attempt, as billing records it."""

    job_id: str
    attempt: int
    status_code: int
    error: str
    attempt_time: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits held for one job, and what became of them and of the job."""

    job_id: str
    account_id: str
    amount: int
    state: ReservationState
    create_time: datetime
    expire_time: datetime
    model: str = ""
    width: int = 0
    height: int = 0
    request_fingerprint: str = ""
    #: The prompt the job was made for (the account's own history shows it).
    prompt: str = ""
    settle_time: datetime | None = None
    start_time: datetime | None = None
    release_reason: ReleaseReason = ReleaseReason.UNSPECIFIED
    release_detail: str = ""
    #: The job's outcome, once known.
    result: JobResult | None = None
    webhook: WebhookDelivery | None = None


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """Credits to hold for one job."""

    job_id: str
    amount: int
    model: str
    width: int
    height: int
    #: Hash of the whole request, so that a repeat with another request is told apart.
    fingerprint: str = ""
    webhook_url: str = ""
    #: Kept with the reservation for the account's history.
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """The answer of holding credits for several jobs at once."""

    reservations: tuple[Reservation, ...]
    #: The account's credits after the reservations.
    credits: int
    #: The job ids this call reserved; the others were already held (idempotent repeats).
    created_job_ids: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A settled job: the reservation as it now stands and what the call did."""

    reservation: Reservation
    outcome: SettleOutcome


@dataclass(frozen=True, slots=True)
class Model:
    """A catalog model as billing lists it: what it takes, what it costs, who makes it."""

    key: str
    name: str = ""
    description: str = ""
    provider: str = ""
    provider_model: str = ""
    provider_version: str = ""
    quality_rating: int = 0
    pricing_rating: int = 0
    supports_text_to_image: bool = False
    supports_image_to_image: bool = False
    max_input_images: int = 0
    dimensions: Dimensions = field(default_factory=lambda: Dimensions(0, 0, 0, 0))
    price_rule: PriceRule = field(default_factory=lambda: PriceRule(0, 0))
    price_description: str = ""
    #: Credits of a 1024x1024 image.
    default_cost: int = 0
    is_default: bool = False


@dataclass(frozen=True, slots=True)
class ModelListing:
    models: tuple[Model, ...]
    default_model: str


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    label: str
    prefix: str
    create_time: datetime
    last_used_time: datetime | None = None
    revoke_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    email: str
    credits: int
    reserved_credits: int
    create_time: datetime
    tokens: tuple[ApiToken, ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """An account's default webhook and its signing secret ("" when it has none)."""

    url: str
    has_secret: bool
    signing_secret: str = ""
