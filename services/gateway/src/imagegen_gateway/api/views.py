"""Billing's records as the REST API shows them (the image object is also the data of webhooks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import billing_service_pb2, resources_pb2
from imagegen_gateway.api.schemas import (
    AccountInfo,
    Image,
    ImageError,
    QueuedImage,
    StatusName,
    TokenInfo,
    WebhookSummary,
)
from imagegen_gateway.image_status import ImageStatus, failure_of, status_of

STATUS_NAMES: dict[ImageStatus, StatusName] = {
    ImageStatus.QUEUED: "queued",
    ImageStatus.PROCESSING: "processing",
    ImageStatus.COMPLETED: "completed",
    ImageStatus.FAILED: "failed",
}
_WEBHOOK_STATES: dict[int, Literal["pending", "delivered", "failed"]] = {
    resources_pb2.WebhookDelivery.STATE_PENDING: "pending",
    resources_pb2.WebhookDelivery.STATE_DELIVERED: "delivered",
    resources_pb2.WebhookDelivery.STATE_FAILED: "failed",
}


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds: ``2026-11-28T09:15:02.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_of(stamp: Timestamp) -> str:
    return iso(stamp.ToDatetime(tzinfo=UTC))


def optional_iso(message: Message, field: str) -> str | None:
    """The timestamp field of a message as ISO 8601, or None when it is unset."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return iso_of(stamp)


def queued_image(reservation: resources_pb2.Reservation) -> QueuedImage:
    """An image as the generate answer lists it."""
    status = status_of(reservation)
    return QueuedImage(
        id=reservation.job_id,
        status=status.value,
        status_name=STATUS_NAMES[status],
        width=reservation.details.width,
        height=reservation.details.height,
        created_at=iso_of(reservation.create_time),
    )


def image(reservation: resources_pb2.Reservation) -> Image:
    """The whole image object of ``GET /api/images/{id}``."""
    status = status_of(reservation)
    failure = failure_of(reservation)
    settled = status in (ImageStatus.COMPLETED, ImageStatus.FAILED)
    return Image(
        id=reservation.job_id,
        status=status.value,
        status_name=STATUS_NAMES[status],
        model=reservation.details.model,
        width=reservation.details.width,
        height=reservation.details.height,
        url=(reservation.result.image_url or None) if status is ImageStatus.COMPLETED else None,
        credits_used=0 if status is ImageStatus.FAILED else reservation.amount,
        error=ImageError(code=failure.code, message=failure.message) if failure else None,
        created_at=iso_of(reservation.create_time),
        started_at=optional_iso(reservation, "start_time"),
        completed_at=_completed_at(reservation) if settled else None,
        webhook=webhook_summary(reservation.webhook) if reservation.HasField("webhook") else None,
    )


def _completed_at(reservation: resources_pb2.Reservation) -> str | None:
    return optional_iso(reservation.result, "finish_time") or optional_iso(reservation, "settle_time")


def webhook_summary(delivery: resources_pb2.WebhookDelivery) -> WebhookSummary:
    return WebhookSummary(
        url=delivery.url,
        state=_WEBHOOK_STATES.get(delivery.state, "pending"),
        attempts=delivery.attempt_count,
        last_status=delivery.last_status_code or None,
        last_error=delivery.last_error or None,
        last_attempt_at=optional_iso(delivery, "last_attempt_time"),
    )


def account(
    reply: billing_service_pb2.GetAccountResponse, webhook: resources_pb2.WebhookSettings
) -> AccountInfo:
    return AccountInfo(
        id=reply.account.id,
        email=reply.account.email,
        credits=reply.account.credits,
        reserved_credits=reply.account.reserved_credits,
        created_at=iso_of(reply.account.create_time),
        webhook_url=webhook.url or None,
        webhook_secret_set=webhook.has_secret,
        tokens=[
            TokenInfo(
                id=token.id,
                label=token.label,
                prefix=token.prefix,
                created_at=iso_of(token.create_time),
                last_used_at=optional_iso(token, "last_used_time"),
                revoked_at=optional_iso(token, "revoke_time"),
            )
            for token in reply.tokens
        ],
    )
