"""Error answers over HTTP, for every surface (REST, the MCP endpoint's HTTP-level refusals, image
files, 404s): one body, ``{success: false, error, message}``, built by :func:`error_response` alone,
with ``required``/``available`` on 402, ``errors: {field: [messages]}`` on 422 and ``retry_after`` on
429; the exception handlers that produce them; and their OpenAPI descriptions. Never a stack trace:
anything unexpected is logged and answered 500 ``internal error``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegen_gateway.api.schemas import (
    ErrorBody,
    InsufficientCreditsBody,
    RateLimitedBody,
    ValidationErrorBody,
)
from imagegen_gateway.authentication import InsufficientScopeError, bearer_token
from imagegen_gateway.errors import (
    GatewayError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidTokenError,
    RateLimitedError,
)

log = logging.getLogger(__name__)

#: Field names of the generation flow as REST clients know them.
REST_FIELDS = {"input_images": "input", "idempotency_key": "Idempotency-Key"}
#: The key of a 422's errors map when a refusal is about the request as a whole.
WHOLE_REQUEST = "request"
INTERNAL_ERROR = "internal error"
REALM = "imagegen"
#: Codes of the errors Starlette raises itself (routing, body limits).
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}

RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": 'The quota policy (draft-ietf-httpapi-ratelimit-headers): `"generate";q=60;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of the quota and when it resets: `"generate";r=59;t=42`.',
        "schema": {"type": "string"},
    },
}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one error answer of every surface: ``{success: false, error: code, message, **extra}``."""
    body: dict[str, Any] = {"success": False, "error": code, "message": message, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(message: str, *, missing: bool) -> JSONResponse:
    """401 with the RFC 6750 challenge and a body saying what is wrong."""
    challenge = f'Bearer realm="{REALM}"'
    if not missing:
        challenge += f', error="invalid_token", error_description="{message}"'
    code = "missing_token" if missing else "invalid_token"
    return error_response(401, code, message, headers={"WWW-Authenticate": challenge})


def validation_response(errors: dict[str, list[str]]) -> JSONResponse:
    problems = "; ".join(f"{field}: {messages[0]}" for field, messages in errors.items())
    message = f"The request is invalid ({problems})."
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_error", message, errors=errors)


def invalid_json_response() -> JSONResponse:
    return error_response(HTTPStatus.BAD_REQUEST, "invalid_json", "The body is not valid UTF-8 JSON.")


def gateway_error_response(exc: GatewayError, *, token_sent: bool = True) -> JSONResponse:
    """The HTTP answer of an error of the generation flow."""
    if isinstance(exc, InvalidTokenError):
        return unauthorized(exc.message, missing=not token_sent)
    if isinstance(exc, InvalidInputError):
        field = REST_FIELDS.get(exc.field or "", exc.field) or WHOLE_REQUEST
        return validation_response({field: [exc.message]})
    if isinstance(exc, InsufficientCreditsError):
        return error_response(
            exc.status, exc.code, exc.message, required=exc.required, available=exc.available
        )
    if isinstance(exc, InsufficientScopeError):  # oauth: RFC 6750 §3.1
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{exc.scope}"'
        return error_response(exc.status, exc.code, exc.message, headers={"WWW-Authenticate": challenge})
    if isinstance(exc, RateLimitedError):
        return error_response(
            exc.status, exc.code, exc.message, headers=exc.headers, retry_after=exc.retry_after
        )
    return error_response(exc.status, exc.code, exc.message)


def _field(location: Sequence[Any]) -> str:
    """``("body", "input", 2)`` → ``input.2``; the body itself (missing or not JSON) → ``body``."""
    parts = [str(part) for part in location[1:]] if len(location) > 1 else [str(location[0])]
    if location and location[0] == "body" and len(location) == 2 and isinstance(location[1], int):
        return "body"  # a JSON syntax error, at a character offset
    return ".".join(parts) or "body"


def request_validation_response(exc: RequestValidationError) -> JSONResponse:
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        message = str(error.get("msg", "is invalid"))
        if error.get("type") == "json_invalid":
            message = "The body is not valid JSON."
        errors.setdefault(_field(error.get("loc", ("body",))), []).append(message)
    return validation_response(errors or {"body": ["The request is invalid."]})


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return gateway_error_response(exc, token_sent=bearer_token(request.headers) is not None)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return request_validation_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == HTTPStatus.BAD_REQUEST:  # Starlette could not decode the body
        return invalid_json_response()
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail) if exc.status_code != 404 else "Not found."
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", INTERNAL_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


class ApiRoute(APIRoute):
    """A route that answers an unexpected error itself (500, logged) instead of letting it reach the
    server, which would log it again and could close the connection."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (GatewayError, RequestValidationError, StarletteHTTPException):
                raise
            except Exception as exc:
                return await _on_unexpected(request, exc)

        return handle


def _doc(model: type[ErrorBody], description: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "description": description, **extra}


def error_doc(description: str) -> dict[str, Any]:
    """The OpenAPI description of an answer in the one error body."""
    return _doc(ErrorBody, description)


UNAUTHORIZED = _doc(
    ErrorBody,
    "Missing, unknown or revoked API token.",
    headers={"WWW-Authenticate": {"description": 'Bearer realm="imagegen"', "schema": {"type": "string"}}},
)
VALIDATION = _doc(ValidationErrorBody, "The request is invalid; `errors` names each field.")
INTERNAL = _doc(ErrorBody, "Something failed on our side (never a stack trace).")
UNAVAILABLE = _doc(ErrorBody, "Billing or the job queue is unreachable for a moment; try again.")
NOT_FOUND = _doc(ErrorBody, "No such image (or not one of the caller's).")
PAYMENT_REQUIRED = _doc(
    InsufficientCreditsBody, "Insufficient credits for all the images; nothing is reserved."
)
INVALID_JSON = _doc(ErrorBody, "The body is not valid UTF-8 JSON (`error` is `invalid_json`).")
PAYLOAD_TOO_LARGE = _doc(ErrorBody, "The body is larger than the gateway accepts (1 MiB by default).")
CONFLICT = _doc(ErrorBody, "A request with this Idempotency-Key is still in progress.")
RATE_LIMITED = _doc(
    RateLimitedBody,
    "Too many generate requests with this token; nothing is charged.",
    headers={
        "Retry-After": {
            "description": "Seconds until the quota resets.",
            "required": True,
            "schema": {"type": "integer"},
        },
        **RATE_LIMIT_HEADERS,
    },
)
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    422: VALIDATION,
    500: INTERNAL,
    503: UNAVAILABLE,
}
