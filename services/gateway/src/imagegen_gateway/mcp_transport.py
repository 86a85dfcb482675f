"""The ``/api/mcp`` endpoint: origin check and authentication in front of the SDK's stateless
Streamable HTTP transport.

Two session managers serve the same server: one answers with Server-Sent Events (what MCP clients
ask for: ``Accept: application/json, text/event-stream``; progress notifications ride the stream),
the other with one plain JSON body, for callers that do not ask for a stream — like the documented
curl example, which sends no Accept header at all.

Two things the SDK's stateless mode does not do are done here: a ``notifications/cancelled`` posted
on a request of its own reaches the call it names (the SDK would drop it with its one-request
transport), and a client that drops a plain-JSON call cancels it (the SDK only watches streams).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen_gateway.auth import Authenticator, bearer_token, unauthorized
from imagegen_gateway.billing_client import Principal
from imagegen_gateway.errors import GatewayError, InvalidTokenError
from imagegen_gateway.mcp_tools import PRINCIPAL_SCOPE_KEY, InFlightCalls

EVENT_STREAM = "text/event-stream"


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """Exact origins, ``scheme://host:*`` for any port, or ``*`` for any origin."""
    for pattern in allowed:
        if pattern in ("*", origin):
            return True
        if (
            pattern.endswith(":*")
            and origin.startswith(pattern[:-1])
            and origin[len(pattern) - 1 :].isdigit()
        ):
            return True
    return False


def wants_event_stream(headers: Headers) -> bool:
    accepted = [part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")]
    return EVENT_STREAM in accepted


def cancelled_request_id(body: bytes) -> Any:
    """The ``requestId`` of a ``notifications/cancelled`` message, or None for any other body."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if (
        isinstance(message, dict)
        and message.get("method") == "notifications/cancelled"
        and "id" not in message
    ):
        params = message.get("params")
        return params.get("requestId") if isinstance(params, dict) else None
    return None


def _trimmed_headers(scope: Scope) -> Scope:
    """The request with whitespace around header values removed (RFC 9110 §5.5: it is not part of
    the value); uvicorn keeps it, and the SDK compares ``Mcp-Name`` and friends as they come."""
    return {**scope, "headers": [(k, v.strip(b" \t")) for k, v in scope["headers"]]}


def _with_json_accept(scope: Scope) -> Scope:
    """The request as if it had said ``Accept: application/json`` (it said nothing, or ``*/*``)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"accept"]
    return {**scope, "headers": [*headers, (b"accept", b"application/json")]}


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": error, "message": message}, status, headers=headers)


class BodyTooLargeError(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise BodyTooLargeError
        if not message.get("more_body", False):
            return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then what the client sends next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class McpEndpoint:
    def __init__(
        self,
        server: Server[Any],
        authenticator: Authenticator,
        in_flight: InFlightCalls,
        allowed_origins: Sequence[str],
        max_body_bytes: int,
    ) -> None:
        no_host_check = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # origins: below
        self.streaming = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=False, security_settings=no_host_check
        )
        self.plain = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=True, security_settings=no_host_check
        )
        self.authenticator = authenticator
        self.in_flight = in_flight
        self.allowed_origins = list(allowed_origins)
        self.max_body_bytes = max_body_bytes

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.streaming.run(), self.plain.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._refusal(scope)
        if isinstance(refusal, Response):
            await refusal(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = refusal
        if scope["method"] != "POST":
            # Stateless: no stream for server-initiated messages (GET) and no session to end
            # (DELETE). 405 tells clients so; they would otherwise hold an idle stream open.
            only_post = "this stateless server takes only POST requests"
            await _error(405, "method_not_allowed", only_post, {"Allow": "POST"})(scope, receive, send)
            return
        scope = _trimmed_headers(scope)
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLargeError:
            too_large = f"request body over {self.max_body_bytes} bytes"
            await _error(413, "body_too_large", too_large)(scope, receive, send)
            return
        if body is None:
            return
        request_id = cancelled_request_id(body)
        if request_id is not None:
            self.in_flight.cancel(refusal.account_id, request_id)
            await Response(status_code=202)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if wants_event_stream(headers):
            await self.streaming.handle_request(scope, replaying(body, receive), send)
        else:
            await _cancelled_on_disconnect(
                self.plain.handle_request, _with_json_accept(scope), body, receive, send
            )

    async def _refusal(self, scope: Scope) -> Principal | Response:
        """The caller's principal, or the response that turns the request away."""
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin and not origin_allowed(origin, self.allowed_origins):
            return _error(403, "origin_not_allowed", f"origin {origin} is not allowed")
        token = bearer_token(headers)
        if token is None:
            return unauthorized("missing API token: send 'Authorization: Bearer <token>'", missing=True)
        try:
            return await self.authenticator.principal(token)
        except InvalidTokenError as exc:
            return unauthorized(exc.message, missing=False)
        except GatewayError as exc:
            return _error(exc.status, exc.code, exc.message)


async def _cancelled_on_disconnect(
    app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send
) -> None:
    """Runs ``app`` on ``body`` and cancels it when the client goes away before the answer."""
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch)
        await app(scope, replaying(body, _never), send)
        tasks.cancel_scope.cancel()


async def _never() -> Message:
    """The SDK's JSON mode reads nothing after the body; the watcher owns the real ``receive``."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")
