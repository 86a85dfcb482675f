"""protobuf ↔ the gateway's domain types: the one module that knows both (billing's resources and the
jobs' NATS payloads). Enums map by their names in the proto, never by any text a message carries."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import timestamps
from imagegen_common.catalog import Dimensions, PriceRule
from imagegen_gateway.domain import (
    Account,
    ApiToken,
    ErrorCode,
    JobResult,
    Model,
    ModelListing,
    ReleaseReason,
    Reservation,
    ReservationState,
    SettleOutcome,
    WebhookDelivery,
    WebhookSettings,
    WebhookState,
)

_ERROR_CODES: dict[jobs_pb2.ErrorCode.ValueType, ErrorCode] = {
    jobs_pb2.ERROR_CODE_UNSPECIFIED: ErrorCode.UNSPECIFIED,
    jobs_pb2.ERROR_CODE_INVALID_INPUT: ErrorCode.INVALID_INPUT,
    jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED: ErrorCode.INPUT_IMAGE_REFUSED,
    jobs_pb2.ERROR_CODE_CONTENT_REJECTED: ErrorCode.CONTENT_REJECTED,
    jobs_pb2.ERROR_CODE_PROVIDER_ERROR: ErrorCode.PROVIDER_ERROR,
    jobs_pb2.ERROR_CODE_PROVIDER_UNAVAILABLE: ErrorCode.PROVIDER_UNAVAILABLE,
    jobs_pb2.ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode.DEADLINE_EXCEEDED,
    jobs_pb2.ERROR_CODE_CANCELLED: ErrorCode.CANCELLED,
    jobs_pb2.ERROR_CODE_INTERNAL: ErrorCode.INTERNAL,
}
_ERROR_NUMBERS = {code: number for number, code in _ERROR_CODES.items()}
_RELEASE_REASONS: dict[resources_pb2.ReleaseReason.ValueType, ReleaseReason] = {
    resources_pb2.RELEASE_REASON_UNSPECIFIED: ReleaseReason.UNSPECIFIED,
    resources_pb2.RELEASE_REASON_FAILED: ReleaseReason.FAILED,
    resources_pb2.RELEASE_REASON_CANCELLED: ReleaseReason.CANCELLED,
    resources_pb2.RELEASE_REASON_TIMEOUT: ReleaseReason.TIMEOUT,
    resources_pb2.RELEASE_REASON_EXPIRED: ReleaseReason.EXPIRED,
    resources_pb2.RELEASE_REASON_NOT_QUEUED: ReleaseReason.NOT_QUEUED,
    resources_pb2.RELEASE_REASON_OPERATOR: ReleaseReason.OPERATOR,
}
_RELEASE_NUMBERS = {reason: number for number, reason in _RELEASE_REASONS.items()}
_STATES = {
    resources_pb2.Reservation.STATE_HELD: ReservationState.HELD,
    resources_pb2.Reservation.STATE_CAPTURED: ReservationState.CAPTURED,
    resources_pb2.Reservation.STATE_RELEASED: ReservationState.RELEASED,
}
_WEBHOOK_STATES = {
    resources_pb2.WebhookDelivery.STATE_PENDING: WebhookState.PENDING,
    resources_pb2.WebhookDelivery.STATE_DELIVERED: WebhookState.DELIVERED,
    resources_pb2.WebhookDelivery.STATE_FAILED: WebhookState.FAILED,
}
_SETTLE_OUTCOMES: dict[billing_service_pb2.SettleOutcome.ValueType, SettleOutcome] = {
    billing_service_pb2.SETTLE_OUTCOME_CAPTURED: SettleOutcome.CAPTURED,
    billing_service_pb2.SETTLE_OUTCOME_RELEASED: SettleOutcome.RELEASED,
    billing_service_pb2.SETTLE_OUTCOME_DUPLICATE: SettleOutcome.DUPLICATE,
    billing_service_pb2.SETTLE_OUTCOME_CONFLICT: SettleOutcome.CONFLICT,
}


def error_code(number: int) -> ErrorCode:
    """A job's ``ErrorCode``; one newer than this build reads as UNSPECIFIED ("failed")."""
    return _ERROR_CODES.get(jobs_pb2.ErrorCode.ValueType(number), ErrorCode.UNSPECIFIED)


def error_code_number(code: ErrorCode) -> jobs_pb2.ErrorCode.ValueType:
    return _ERROR_NUMBERS[code]


def release_reason_number(reason: ReleaseReason) -> resources_pb2.ReleaseReason.ValueType:
    return _RELEASE_NUMBERS[reason]


def settle_outcome(number: billing_service_pb2.SettleOutcome.ValueType) -> SettleOutcome:
    return _SETTLE_OUTCOMES.get(number, SettleOutcome.UNSPECIFIED)


def moment(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def optional_moment(message: Message, field: str) -> datetime | None:
    """A Timestamp field as a datetime, or None when it is unset."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return moment(stamp)


def job_result(result: resources_pb2.JobResult) -> JobResult:
    return JobResult(
        image_url=result.image_url,
        mime_type=result.mime_type,
        width=result.width,
        height=result.height,
        error=None if result.image_url else error_code(result.error) if result.error else None,
        error_message=result.error_message,
        finish_time=optional_moment(result, "finish_time"),
    )


def job_result_message(result: JobResult) -> resources_pb2.JobResult:
    message = resources_pb2.JobResult(
        image_url=result.image_url,
        mime_type=result.mime_type,
        width=result.width,
        height=result.height,
        error_message=result.error_message,
    )
    if result.error is not None:
        message.error = error_code_number(result.error)
    if result.finish_time is not None:
        message.finish_time.CopyFrom(timestamps.from_datetime(result.finish_time))
    return message


def outcome_result(outcome: jobs_pb2.JobOutcome) -> JobResult:
    """A job's outcome (from NATS) as its result."""
    finished = optional_moment(outcome, "finish_time")
    if outcome.HasField("image"):
        image = outcome.image
        return JobResult(
            image_url=image.url,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            finish_time=finished,
        )
    return JobResult(
        error=error_code(outcome.failure.code),
        error_message=outcome.failure.message,
        finish_time=finished,
    )


def _webhook(delivery: resources_pb2.WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery(
        url=delivery.url,
        state=_WEBHOOK_STATES.get(delivery.state, WebhookState.PENDING),
        attempt_count=delivery.attempt_count,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        last_attempt_time=optional_moment(delivery, "last_attempt_time"),
    )


def reservation(message: resources_pb2.Reservation) -> Reservation:
    """Billing's reservation as the gateway's."""
    return Reservation(
        job_id=message.job_id,
        account_id=message.account_id,
        amount=message.amount,
        state=_STATES.get(message.state, ReservationState.HELD),
        create_time=moment(message.create_time),
        expire_time=moment(message.expire_time),
        model=message.details.model,
        width=message.details.width,
        height=message.details.height,
        request_fingerprint=message.details.request_fingerprint,
        prompt=message.details.prompt,
        settle_time=optional_moment(message, "settle_time"),
        start_time=optional_moment(message, "start_time"),
        release_reason=_RELEASE_REASONS.get(message.release_reason, ReleaseReason.UNSPECIFIED),
        release_detail=message.release_detail,
        result=job_result(message.result) if message.HasField("result") else None,
        webhook=_webhook(message.webhook) if message.HasField("webhook") else None,
    )


def model(message: resources_pb2.Model) -> Model:
    dims, rule = message.dimensions, message.price_rule
    return Model(
        key=message.key,
        name=message.name,
        description=message.description,
        provider=message.provider,
        provider_model=message.provider_model,
        provider_version=message.provider_version,
        quality_rating=message.quality_rating,
        pricing_rating=message.pricing_rating,
        supports_text_to_image=message.supports_text_to_image,
        supports_image_to_image=message.supports_image_to_image,
        max_input_images=message.max_input_images,
        dimensions=Dimensions(dims.min_width, dims.max_width, dims.min_height, dims.max_height, dims.step),
        price_rule=PriceRule(rule.credits_per_megapixel, rule.minimum_credits),
        price_description=rule.description,
        default_cost=message.default_cost,
        is_default=message.is_default,
    )


def model_listing(message: billing_service_pb2.ListModelsResponse) -> ModelListing:
    return ModelListing(tuple(model(m) for m in message.models), message.default_model)


def account(message: billing_service_pb2.GetAccountResponse) -> Account:
    return Account(
        id=message.account.id,
        email=message.account.email,
        credits=message.account.credits,
        reserved_credits=message.account.reserved_credits,
        create_time=moment(message.account.create_time),
        tokens=tuple(
            ApiToken(
                id=token.id,
                label=token.label,
                prefix=token.prefix,
                create_time=moment(token.create_time),
                last_used_time=optional_moment(token, "last_used_time"),
                revoke_time=optional_moment(token, "revoke_time"),
            )
            for token in message.tokens
        ),
    )


def webhook_settings(message: billing_service_pb2.GetWebhookSettingsResponse) -> WebhookSettings:
    return WebhookSettings(
        url=message.settings.url,
        has_secret=message.settings.has_secret,
        signing_secret=message.signing_secret,
    )
