"""Domain records to protobuf messages and back: one function per record and direction.

Enums map by name (the domain's ``FAILED`` is the proto's ``RELEASE_REASON_FAILED``); the tables are
built at import, so a value one side lacks fails at start-up, not on the first request that has it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing.domain import (
    Account,
    ApiToken,
    EntryKind,
    JobDetails,
    JobError,
    JobResult,
    JobSettlement,
    LedgerEntry,
    ReleaseReason,
    Reservation,
    ReservationState,
    ReserveRequest,
    SettleOutcome,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSettings,
    WebhookState,
)
from imagegen_common import timestamps
from imagegen_common.catalog import Catalog, Model

_STATES = {
    ReservationState.HELD: resources_pb2.Reservation.STATE_HELD,
    ReservationState.CAPTURED: resources_pb2.Reservation.STATE_CAPTURED,
    ReservationState.RELEASED: resources_pb2.Reservation.STATE_RELEASED,
}
_WEBHOOK_STATES = {
    WebhookState.PENDING: resources_pb2.WebhookDelivery.STATE_PENDING,
    WebhookState.DELIVERED: resources_pb2.WebhookDelivery.STATE_DELIVERED,
    WebhookState.FAILED: resources_pb2.WebhookDelivery.STATE_FAILED,
}
_KINDS = {
    EntryKind.GRANT: resources_pb2.LedgerEntry.KIND_GRANT,
    EntryKind.RESERVE: resources_pb2.LedgerEntry.KIND_RESERVE,
    EntryKind.CAPTURE: resources_pb2.LedgerEntry.KIND_CAPTURE,
    EntryKind.RELEASE: resources_pb2.LedgerEntry.KIND_RELEASE,
    EntryKind.DEBIT: resources_pb2.LedgerEntry.KIND_DEBIT,
    EntryKind.PURCHASE: resources_pb2.LedgerEntry.KIND_PURCHASE,
    EntryKind.REFUND: resources_pb2.LedgerEntry.KIND_REFUND,
    EntryKind.DISPUTE: resources_pb2.LedgerEntry.KIND_DISPUTE,
    EntryKind.DISPUTE_REVERSAL: resources_pb2.LedgerEntry.KIND_DISPUTE_REVERSAL,
}
_RELEASE_REASONS = {
    reason: resources_pb2.ReleaseReason.Value(f"RELEASE_REASON_{reason.name}") for reason in ReleaseReason
}
_RELEASE_REASONS_BY_NUMBER = {number: reason for reason, number in _RELEASE_REASONS.items()}
_JOB_ERRORS = {error: jobs_pb2.ErrorCode.Value(f"ERROR_CODE_{error.name}") for error in JobError}
_JOB_ERRORS_BY_NUMBER = {number: error for error, number in _JOB_ERRORS.items()}
_SETTLE_OUTCOMES: dict[SettleOutcome, billing_service_pb2.SettleOutcome.ValueType] = {
    outcome: billing_service_pb2.SettleOutcome.Value(f"SETTLE_OUTCOME_{outcome.name}")
    for outcome in SettleOutcome
    if outcome is not SettleOutcome.UNKNOWN_JOB  # answered with NOT_FOUND instead
}


def timestamp(value: datetime | None) -> Timestamp | None:
    return timestamps.from_datetime(value) if value is not None else None


def datetime_of(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def release_reason(value: resources_pb2.ReleaseReason.ValueType) -> ReleaseReason | None:
    """The domain reason of a proto one (None for UNSPECIFIED, or a value newer than this build)."""
    return _RELEASE_REASONS_BY_NUMBER.get(value)


def job_error(value: jobs_pb2.ErrorCode.ValueType) -> JobError:
    """The domain error of a proto code (UNSPECIFIED for a code newer than this build)."""
    return _JOB_ERRORS_BY_NUMBER.get(value, JobError.UNSPECIFIED)


def settle_outcome(value: SettleOutcome) -> billing_service_pb2.SettleOutcome.ValueType:
    return _SETTLE_OUTCOMES[value]


def account(value: Account) -> resources_pb2.Account:
    return resources_pb2.Account(
        id=value.id,
        email=value.email,
        credits=value.credits,
        reserved_credits=value.reserved_credits,
        create_time=timestamp(value.create_time),
    )


def api_token(value: ApiToken) -> resources_pb2.ApiToken:
    return resources_pb2.ApiToken(
        id=value.id,
        account_id=value.account_id,
        label=value.label,
        prefix=value.prefix,
        create_time=timestamp(value.create_time),
        last_used_time=timestamp(value.last_used_time),
        revoke_time=timestamp(value.revoke_time),
    )


def reservation(value: Reservation) -> resources_pb2.Reservation:
    return resources_pb2.Reservation(
        job_id=value.job_id,
        account_id=value.account_id,
        amount=value.amount,
        state=_STATES[value.state],
        create_time=timestamp(value.create_time),
        expire_time=timestamp(value.expire_time),
        settle_time=timestamp(value.settle_time),
        details=job_details_message(value.details),
        release_reason=(
            _RELEASE_REASONS[value.release_reason]
            if value.release_reason is not None
            else resources_pb2.RELEASE_REASON_UNSPECIFIED
        ),
        release_detail=value.release_detail,
        result=job_result_message(value.result),
        start_time=timestamp(value.start_time),
        webhook=webhook_delivery(value.webhook) if value.webhook is not None else None,
    )


def job_details_message(value: JobDetails) -> resources_pb2.JobDetails:
    return resources_pb2.JobDetails(
        model=value.model,
        width=value.width,
        height=value.height,
        request_fingerprint=value.request_fingerprint,
        webhook_url=value.webhook_url,
        prompt=value.prompt,
    )


def job_details(value: resources_pb2.JobDetails) -> JobDetails:
    return JobDetails(
        model=value.model,
        width=value.width,
        height=value.height,
        request_fingerprint=value.request_fingerprint,
        webhook_url=value.webhook_url,
        prompt=value.prompt,
    )


def job_result_message(value: JobResult) -> resources_pb2.JobResult:
    return resources_pb2.JobResult(
        image_url=value.image_url,
        mime_type=value.mime_type,
        width=value.width,
        height=value.height,
        error=_JOB_ERRORS[value.error] if value.error is not None else jobs_pb2.ERROR_CODE_UNSPECIFIED,
        error_message=value.error_message,
        finish_time=timestamp(value.finish_time),
    )


def job_result(value: resources_pb2.JobResult) -> JobResult:
    """A result as a caller reports it. A failure is a result without an image: its error is
    UNSPECIFIED when the caller named none."""
    failed = not value.image_url and (value.error != jobs_pb2.ERROR_CODE_UNSPECIFIED or value.error_message)
    return JobResult(
        image_url=value.image_url,
        mime_type=value.mime_type,
        width=value.width,
        height=value.height,
        error=job_error(value.error) if failed else None,
        error_message=value.error_message,
        finish_time=datetime_of(value.finish_time) if value.HasField("finish_time") else None,
    )


def job_settlement(value: JobSettlement) -> billing_service_pb2.SettleJobResponse:
    return billing_service_pb2.SettleJobResponse(
        reservation=reservation(value.reservation) if value.reservation is not None else None,
        credits=value.credits,
        outcome=settle_outcome(value.outcome),
    )


def webhook_delivery(value: WebhookDelivery) -> resources_pb2.WebhookDelivery:
    return resources_pb2.WebhookDelivery(
        url=value.url,
        state=_WEBHOOK_STATES.get(value.state, resources_pb2.WebhookDelivery.STATE_UNSPECIFIED),
        attempt_count=value.attempt_count,
        last_status_code=value.last_status_code,
        last_error=value.last_error,
        last_attempt_time=timestamp(value.last_attempt_time),
    )


def webhook_attempt(value: WebhookAttempt) -> resources_pb2.WebhookAttempt:
    return resources_pb2.WebhookAttempt(
        job_id=value.job_id,
        attempt=value.attempt,
        status_code=value.status_code,
        error=value.error,
        attempt_time=timestamp(value.attempt_time),
    )


def webhook_attempt_request(value: resources_pb2.WebhookAttempt) -> WebhookAttempt:
    """An attempt as the gateway reports it (no attempt time: now)."""
    return WebhookAttempt(
        job_id=value.job_id,
        attempt=value.attempt,
        status_code=value.status_code,
        error=value.error,
        attempt_time=(
            datetime_of(value.attempt_time) if value.HasField("attempt_time") else datetime.now(UTC)
        ),
    )


def webhook_settings(value: WebhookSettings) -> resources_pb2.WebhookSettings:
    return resources_pb2.WebhookSettings(
        account_id=value.account_id,
        url=value.url,
        has_secret=value.has_secret,
        update_time=timestamp(value.update_time),
    )


def ledger_entry(value: LedgerEntry) -> resources_pb2.LedgerEntry:
    return resources_pb2.LedgerEntry(
        id=value.id,
        account_id=value.account_id,
        kind=_KINDS[value.kind],
        amount=value.amount,
        balance_after=value.balance_after,
        job_id=value.job_id,
        note=value.note,
        create_time=timestamp(value.create_time),
    )


def model(value: Model, catalog: Catalog) -> resources_pb2.Model:
    dims = value.dimensions
    return resources_pb2.Model(
        key=value.key,
        name=value.name,
        description=value.description,
        provider=value.provider,
        provider_model=value.replicate.model,
        provider_version=value.replicate.version,
        quality_rating=value.quality_rating,
        pricing_rating=value.pricing_rating,
        supports_text_to_image=value.supports_text_to_image,
        supports_image_to_image=value.supports_image_to_image,
        dimensions=resources_pb2.Dimensions(
            min_width=dims.min_width,
            max_width=dims.max_width,
            min_height=dims.min_height,
            max_height=dims.max_height,
            step=dims.step,
        ),
        price_rule=resources_pb2.PriceRule(
            credits_per_megapixel=value.price.credits_per_megapixel,
            minimum_credits=value.price.minimum_credits,
            description=value.price.describe(),
        ),
        default_cost=value.default_cost,
        is_default=value.key == catalog.default_model,
        max_input_images=value.max_input_images,
    )


def reserve_request(value: billing_service_pb2.ReserveRequest) -> ReserveRequest:
    """A ReserveRequest message as a domain request (no expire time: the default one)."""
    return ReserveRequest(
        account_id=value.account_id,
        job_id=value.job_id,
        amount=value.amount,
        expire_time=datetime_of(value.expire_time) if value.HasField("expire_time") else None,
        details=job_details(value.details),
    )
