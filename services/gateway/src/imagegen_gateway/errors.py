"""Errors of the generation flow, shared by the MCP and REST front ends.

Each carries a stable ``code`` and a sentence a person can act on; the front ends turn them into
an MCP tool error (``isError``) or a REST error body with the matching HTTP status.
"""

from __future__ import annotations

from http import HTTPStatus


class GatewayError(Exception):
    code = "internal"
    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTokenError(GatewayError):
    code = "invalid_token"
    status = HTTPStatus.UNAUTHORIZED


class InvalidInputError(GatewayError):
    code = "invalid_input"
    status = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InsufficientCreditsError(GatewayError):
    code = "insufficient_credits"
    status = HTTPStatus.PAYMENT_REQUIRED

    def __init__(self, required: int, available: int, images: int = 1) -> None:
        what = "this image costs" if images == 1 else f"these {images} images cost"
        super().__init__(
            f"Insufficient credits: {what} {required} credits; you have {available}. "
            "Add credits, or choose a smaller size or a cheaper model (see list_models)."
        )
        self.required = required
        self.available = available


class GenerationFailedError(GatewayError):
    """The job ran and failed; ``code`` is the generator's error code (``content_rejected``, …)."""

    status = HTTPStatus.BAD_GATEWAY

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GenerationTimeoutError(GatewayError):
    code = "timeout"
    status = HTTPStatus.GATEWAY_TIMEOUT


class ServiceUnavailableError(GatewayError):
    code = "unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE


class NotFoundError(GatewayError):
    """The thing asked for does not exist, or belongs to another account (the same answer for both)."""

    code = "not_found"
    status = HTTPStatus.NOT_FOUND


class ReservationNotFoundError(NotFoundError):
    """Billing holds no reservation for the job id."""


class AlreadySettledError(GatewayError):
    """The reservation was already settled the other way (captured before a release, say)."""

    code = "conflict"
    status = HTTPStatus.CONFLICT


class ConflictError(GatewayError):
    """The request collides with another one still in progress (the same idempotency key)."""

    code = "conflict"
    status = HTTPStatus.CONFLICT


class RateLimitedError(GatewayError):
    code = "rate_limited"
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: Headers of the answer (Retry-After and the RateLimit fields).
        self.headers = headers or {"Retry-After": str(retry_after)}
