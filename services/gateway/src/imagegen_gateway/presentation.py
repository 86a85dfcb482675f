"""How models, images and accounts look to clients: the same objects for MCP, the REST API and the
webhooks (whose ``data`` is the REST image object)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from imagegen_gateway.api.schemas import (
    AccountInfo,
    Image,
    ImageError,
    QueuedImage,
    StatusName,
    TokenInfo,
    WebhookSummary,
)
from imagegen_gateway.domain import (
    Account,
    Model,
    Reservation,
    WebhookDelivery,
    WebhookSettings,
    WebhookState,
)
from imagegen_gateway.image_status import ImageStatus, failure_of, status_of

STATUS_NAMES: dict[ImageStatus, StatusName] = {
    ImageStatus.QUEUED: "queued",
    ImageStatus.PROCESSING: "processing",
    ImageStatus.COMPLETED: "completed",
    ImageStatus.FAILED: "failed",
}
_WEBHOOK_STATES: dict[WebhookState, Literal["pending", "delivered", "failed"]] = {
    WebhookState.PENDING: "pending",
    WebhookState.DELIVERED: "delivered",
    WebhookState.FAILED: "failed",
}


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds: ``2026-11-28T09:15:02.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def optional_iso(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


def model_view(model: Model, served_by: str) -> dict[str, Any]:
    """Every documented field of a model, plus its sizes, prices and who serves it."""
    dims = model.dimensions
    return {
        "key": model.key,
        "name": model.name,
        "description": model.description,
        "provider": model.provider,
        "provider_model": model.provider_model,
        "quality_rating": model.quality_rating,
        "pricing_rating": model.pricing_rating,
        "supports_text_to_image": model.supports_text_to_image,
        "supports_image_to_image": model.supports_image_to_image,
        "max_input_images": model.max_input_images,
        "supported_dimensions": {
            "min_width": dims.min_width,
            "max_width": dims.max_width,
            "min_height": dims.min_height,
            "max_height": dims.max_height,
            "step": dims.step,
        },
        "credits_for_1024x1024": model.default_cost,
        "price_rule": {
            "credits_per_megapixel": model.price_rule.credits_per_megapixel,
            "minimum_credits": model.price_rule.minimum_credits,
            "description": model.price_description,
        },
        "is_default": model.is_default,
        "served_by": served_by,
    }


def queued_image(reservation: Reservation) -> QueuedImage:
    """An image as the generate answer lists it."""
    status = status_of(reservation)
    return QueuedImage(
        id=reservation.job_id,
        status=status.value,
        status_name=STATUS_NAMES[status],
        width=reservation.width,
        height=reservation.height,
        created_at=iso(reservation.create_time),
    )


def image(reservation: Reservation) -> Image:
    """The whole image object of ``GET /api/images/{id}`` and of webhooks."""
    status = status_of(reservation)
    failure = failure_of(reservation)
    settled = status in (ImageStatus.COMPLETED, ImageStatus.FAILED)
    result = reservation.result
    return Image(
        id=reservation.job_id,
        status=status.value,
        status_name=STATUS_NAMES[status],
        model=reservation.model,
        width=reservation.width,
        height=reservation.height,
        url=(result.image_url or None) if status is ImageStatus.COMPLETED and result else None,
        credits_used=0 if status is ImageStatus.FAILED else reservation.amount,
        error=ImageError(code=failure.code, message=failure.message) if failure else None,
        created_at=iso(reservation.create_time),
        started_at=optional_iso(reservation.start_time),
        completed_at=_completed_at(reservation) if settled else None,
        webhook=webhook_summary(reservation.webhook) if reservation.webhook is not None else None,
    )


def _completed_at(reservation: Reservation) -> str | None:
    finished = reservation.result.finish_time if reservation.result is not None else None
    return optional_iso(finished or reservation.settle_time)


def webhook_summary(delivery: WebhookDelivery) -> WebhookSummary:
    return WebhookSummary(
        url=delivery.url,
        state=_WEBHOOK_STATES[delivery.state],
        attempts=delivery.attempt_count,
        last_status=delivery.last_status_code or None,
        last_error=delivery.last_error or None,
        last_attempt_at=optional_iso(delivery.last_attempt_time),
    )


def account(details: Account, webhook: WebhookSettings) -> AccountInfo:
    return AccountInfo(
        id=details.id,
        email=details.email,
        credits=details.credits,
        reserved_credits=details.reserved_credits,
        created_at=iso(details.create_time),
        webhook_url=webhook.url or None,
        webhook_secret_set=webhook.has_secret,
        tokens=[
            TokenInfo(
                id=token.id,
                label=token.label,
                prefix=token.prefix,
                created_at=iso(token.create_time),
                last_used_at=optional_iso(token.last_used_time),
                revoked_at=optional_iso(token.revoke_time),
            )
            for token in details.tokens
        ],
    )
