"""The ``/api/mcp`` endpoint: origin check and authentication in front of the SDK's stateless
Streamable HTTP transport.

Two session managers serve the same server: one answers with Server-Sent Events (what MCP clients
ask for: ``Accept: application/json, text/event-stream``; progress notifications ride the stream),
the other with one plain JSON body, for callers that do not ask for a stream — like the documented
curl example, which sends no Accept header at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen_gateway.auth import Authenticator, bearer_token, unauthorized
from imagegen_gateway.errors import GatewayError, InvalidTokenError
from imagegen_gateway.mcp_tools import PRINCIPAL_SCOPE_KEY

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


def _with_json_accept(scope: Scope) -> Scope:
    """The request as if it had said ``Accept: application/json`` (it said nothing, or ``*/*``)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"accept"]
    return {**scope, "headers": [*headers, (b"accept", b"application/json")]}


class McpEndpoint:
    def __init__(
        self, server: Server[Any], authenticator: Authenticator, allowed_origins: Sequence[str]
    ) -> None:
        no_host_check = TransportSecuritySettings(
            enable_dns_rebinding_protection=False
        )  # origins checked here
        self.streaming = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=False, security_settings=no_host_check
        )
        self.plain = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=True, security_settings=no_host_check
        )
        self.authenticator = authenticator
        self.allowed_origins = list(allowed_origins)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.streaming.run(), self.plain.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin and not origin_allowed(origin, self.allowed_origins):
            response = JSONResponse(
                {
                    "success": False,
                    "error": "origin_not_allowed",
                    "message": f"origin {origin} is not allowed",
                },
                status_code=403,
            )
            await response(scope, receive, send)
            return
        token = bearer_token(headers)
        if token is None:
            message = "missing API token: send 'Authorization: Bearer <token>'"
            await unauthorized(message, missing=True)(scope, receive, send)
            return
        try:
            principal = await self.authenticator.principal(token)
        except InvalidTokenError as exc:
            await unauthorized(exc.message, missing=False)(scope, receive, send)
            return
        except GatewayError as exc:
            response = JSONResponse({"success": False, "error": exc.code, "message": exc.message}, exc.status)
            await response(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        if scope["method"] != "POST" or wants_event_stream(headers):
            await self.streaming.handle_request(scope, receive, send)
        else:
            await _cancelled_on_disconnect(self.plain.handle_request, _with_json_accept(scope), receive, send)


async def _cancelled_on_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Runs ``app`` and cancels it when the client goes away before the answer.

    The SDK's JSON-response mode does not watch the connection (its SSE mode does), so a client
    that gave up would leave its generation running and charged. The body is read first, then the
    real ``receive`` is only awaited for the disconnect.
    """
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body.extend(message.get("body", b""))
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch)
        await app(scope, replay, send)
        tasks.cancel_scope.cancel()
