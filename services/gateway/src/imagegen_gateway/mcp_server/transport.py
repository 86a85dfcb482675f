"""The ``/api/mcp`` endpoint: origin check and authentication in front of the SDK's stateless
Streamable HTTP transport.

Two session managers serve the same server: one answers with Server-Sent Events (what MCP clients
ask for: ``Accept: application/json, text/event-stream``; progress notifications ride the stream),
the other with one plain JSON body, for callers that do not ask for a stream — like the documented
curl example, which sends no Accept header at all.

Three things the SDK's stateless mode does not do are done here: a ``notifications/cancelled`` posted
on a request of its own reaches the call it names (the SDK would drop it with its one-request
transport); a client that drops a plain-JSON call cancels it (the SDK only watches streams); and a
request whose ``id`` JSON-RPC 2.0 forbids (object, array, null, float, boolean) is refused with
``-32600 Invalid Request`` (the SDK would take it for a notification and answer 202 with nothing).
The body is parsed once here, with a bounded parser (pydantic-core's: a nesting limit, no recursion
of Python's), and that one parse answers all of these questions; what is not JSON is a parse error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pydantic_core
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import INVALID_REQUEST, PARSE_ERROR
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen_gateway.api.responses import error_response, gateway_error_response, unauthorized
from imagegen_gateway.authentication import (
    MISSING_TOKEN,
    SCOPE_GENERATE,
    Authenticator,
    InsufficientScopeError,
    Principal,
    bearer_token,
)
from imagegen_gateway.errors import GatewayError, InvalidTokenError
from imagegen_gateway.mcp_server.tools import PRINCIPAL_SCOPE_KEY, InFlightCalls

EVENT_STREAM = "text/event-stream"
GENERATE_TOOL = "generate_image"


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


@dataclass(frozen=True, slots=True)
class JsonRpcRefusal:
    """A body the gateway answers itself with a JSON-RPC error (HTTP 400)."""

    code: int
    message: str

    def response(self) -> JSONResponse:
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": self.code, "message": self.message}}
        return JSONResponse(body, status_code=400)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """A ``notifications/cancelled`` message: the id of the request it cancels."""

    request_id: str | int


def _valid_id(value: object) -> bool:
    """JSON-RPC 2.0 ids are strings or numbers; MCP takes integers, never null (and bool is no int)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def inspect_body(body: bytes) -> JsonRpcRefusal | Cancellation | None:
    """The one parse of a POSTed body: a refusal, a cancellation the gateway handles, or None (pass
    it on to the SDK)."""
    try:
        parsed = pydantic_core.from_json(body)  # bounded nesting: deep input is a ValueError
    except ValueError:
        return JsonRpcRefusal(PARSE_ERROR, "Parse error: the body is not JSON")
    messages = parsed if isinstance(parsed, list) else [parsed]
    for message in messages:
        if isinstance(message, dict) and "id" in message and not _valid_id(message["id"]):
            return JsonRpcRefusal(INVALID_REQUEST, "Invalid Request: the id must be a string or an integer")
    if isinstance(parsed, dict) and parsed.get("method") == "notifications/cancelled" and "id" not in parsed:
        params = parsed.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request_id, str | int) and _valid_id(request_id):
            return Cancellation(request_id)
    return None


def calls_tool(body: bytes, name: str) -> bool:
    """Whether a (valid) body calls the tool ``name``; asked only of tokens that lack a scope."""
    parsed = pydantic_core.from_json(body)
    messages = parsed if isinstance(parsed, list) else [parsed]
    return any(
        isinstance(message, dict)
        and message.get("method") == "tools/call"
        and isinstance(message.get("params"), dict)
        and message["params"].get("name") == name
        for message in messages
    )


def scope_refusal(principal: Principal, body: bytes) -> Response | None:
    """403 ``insufficient_scope`` for an OAuth token without ``images:generate`` calling generate_image."""
    if SCOPE_GENERATE in principal.scopes or not calls_tool(body, GENERATE_TOOL):
        return None
    return gateway_error_response(InsufficientScopeError(SCOPE_GENERATE))


def _trimmed_headers(scope: Scope) -> Scope:
    """The request with whitespace around header values removed (RFC 9110 §5.5: it is not part of
    the value); uvicorn keeps it, and the SDK compares ``Mcp-Name`` and friends as they come."""
    return {**scope, "headers": [(k, v.strip(b" \t")) for k, v in scope["headers"]]}


def _with_json_accept(scope: Scope) -> Scope:
    """The request as if it had said ``Accept: application/json`` (it said nothing, or ``*/*``)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"accept"]
    return {**scope, "headers": [*headers, (b"accept", b"application/json")]}


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
            refused = error_response(405, "method_not_allowed", only_post, headers={"Allow": "POST"})
            await refused(scope, receive, send)
            return
        scope = _trimmed_headers(scope)
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLargeError:
            too_large = f"request body over {self.max_body_bytes} bytes"
            await error_response(413, "payload_too_large", too_large)(scope, receive, send)
            return
        if body is None:
            return
        inspected = inspect_body(body)
        turned_away: Response | None = (
            inspected.response() if isinstance(inspected, JsonRpcRefusal) else scope_refusal(refusal, body)
        )
        if turned_away is not None:
            await turned_away(scope, receive, send)
            return
        if isinstance(inspected, Cancellation):
            self.in_flight.cancel(refusal.account_id, inspected.request_id)
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
            return error_response(403, "origin_not_allowed", f"origin {origin[:200]} is not allowed")
        token = bearer_token(headers)
        if token is None:
            return unauthorized(MISSING_TOKEN, missing=True)
        try:
            return await self.authenticator.principal(token)
        except InvalidTokenError as exc:
            return unauthorized(exc.message, missing=False)
        except GatewayError as exc:
            return gateway_error_response(exc)


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
