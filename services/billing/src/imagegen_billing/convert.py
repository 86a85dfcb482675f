"""Domain records to protobuf messages and back."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen_billing.domain import (
    Account,
    ApiToken,
    EntryKind,
    JobDetails,
    JobResult,
    LedgerEntry,
    Reservation,
    ReservationState,
    ReserveRequest,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSettings,
    WebhookState,
)
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
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


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
        details=resources_pb2.JobDetails(
            model=value.details.model,
            width=value.details.width,
            height=value.details.height,
            request_fingerprint=value.details.request_fingerprint,
            webhook_url=value.details.webhook_url,
        ),
        release_reason=value.release_reason,
        result=resources_pb2.JobResult(
            image_url=value.result.image_url,
            mime_type=value.result.mime_type,
            width=value.result.width,
            height=value.result.height,
            error_code=value.result.error_code,
            error_message=value.result.error_message,
            finish_time=timestamp(value.result.finish_time),
        ),
        start_time=timestamp(value.start_time),
        webhook=webhook_delivery(value.webhook) if value.webhook is not None else None,
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
            value.attempt_time.ToDatetime(tzinfo=UTC) if value.HasField("attempt_time") else datetime.now(UTC)
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
    expire_time = value.expire_time.ToDatetime(tzinfo=UTC) if value.HasField("expire_time") else None
    return ReserveRequest(
        account_id=value.account_id,
        job_id=value.job_id,
        amount=value.amount,
        expire_time=expire_time,
        details=JobDetails(
            model=value.details.model,
            width=value.details.width,
            height=value.details.height,
            request_fingerprint=value.details.request_fingerprint,
            webhook_url=value.details.webhook_url,
        ),
    )


def job_result(value: resources_pb2.JobResult) -> JobResult:
    return JobResult(
        image_url=value.image_url,
        mime_type=value.mime_type,
        width=value.width,
        height=value.height,
        error_code=value.error_code,
        error_message=value.error_message,
        finish_time=value.finish_time.ToDatetime(tzinfo=UTC) if value.HasField("finish_time") else None,
    )
