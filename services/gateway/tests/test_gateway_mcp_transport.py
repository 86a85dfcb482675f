"""The /api/mcp endpoint in front of the SDK: refusals at the HTTP level in the one error body, and the
one bounded parse of a body that refuses what JSON-RPC forbids before the SDK sees it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp.server import Server
from mcp.types import INVALID_REQUEST, PARSE_ERROR
from starlette.types import Receive, Scope, Send

from imagegen_gateway.authentication import Authenticator, Principal
from imagegen_gateway.errors import InvalidTokenError
from imagegen_gateway.mcp_server.tools import InFlightCalls
from imagegen_gateway.mcp_server.transport import (
    Cancellation,
    JsonRpcRefusal,
    McpEndpoint,
    inspect_body,
)

TOKEN = "igk_good"
PRINCIPAL = Principal(account_id="acc_1", email="a@example.com", token_id="tok_1")
DEEP = b"[" * 5_000 + b"]" * 5_000


class Tokens:
    async def authenticate(self, token: str) -> Principal:
        if token != TOKEN:
            raise InvalidTokenError("invalid or revoked API token")
        return PRINCIPAL


def _call(request_id: object) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "x"}}
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    "body", [DEEP, b'{"jsonrpc": "2.0",', b"\xff\xfe", b'{"a": ' * 300 + b"1" + b"}" * 300]
)
def test_what_is_not_json_within_bounds_is_a_parse_error(body: bytes) -> None:
    refusal = inspect_body(body)
    assert isinstance(refusal, JsonRpcRefusal) and refusal.code == PARSE_ERROR


@pytest.mark.parametrize("request_id", [{"a": 1}, [1], None, 1.5, True, False])
def test_an_id_json_rpc_forbids_is_an_invalid_request(request_id: object) -> None:
    refusal = inspect_body(_call(request_id))
    assert isinstance(refusal, JsonRpcRefusal) and refusal.code == INVALID_REQUEST


@pytest.mark.parametrize("request_id", [1, "abc", 0])
def test_a_request_with_a_good_id_goes_to_the_sdk(request_id: object) -> None:
    assert inspect_body(_call(request_id)) is None
    assert inspect_body(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}') is None


def test_a_cancellation_names_its_request() -> None:
    body = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
    assert inspect_body(json.dumps(body).encode()) == Cancellation(7)


class _App:
    def __init__(self, endpoint: McpEndpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)


@pytest.fixture
def endpoint() -> McpEndpoint:
    server: Server[Any] = Server("test")
    return McpEndpoint(server, Authenticator(Tokens(), 5.0), InFlightCalls(), ["*"], 1_000_000)


@pytest.fixture
async def client(endpoint: McpEndpoint) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_App(endpoint))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


BAD_ID = "Invalid Request: the id must be a string or an integer"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def test_deep_json_is_a_400_parse_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/mcp", content=DEEP, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == PARSE_ERROR


async def test_a_call_with_a_null_id_is_an_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/mcp", content=_call(None), headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": INVALID_REQUEST,
            "message": "Invalid Request: the id must be a string or an integer",
        },
    }


@pytest.mark.parametrize(
    ("method", "headers", "status", "error"),
    [
        ("POST", {}, 401, "missing_token"),
        ("POST", {"Authorization": "Bearer igk_bad"}, 401, "invalid_token"),
        ("GET", {"Authorization": f"Bearer {TOKEN}"}, 405, "method_not_allowed"),
        ("POST", {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil"}, 403, "origin_not_allowed"),
    ],
)
async def test_http_refusals_use_the_one_error_body(  # noqa: PLR0917 (pytest passes them by name)
    endpoint: McpEndpoint,
    client: httpx.AsyncClient,
    method: str,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    endpoint.allowed_origins = ["http://good"]
    response = await client.request(method, "/api/mcp", content=b"{}", headers=headers)
    assert response.status_code == status
    body = response.json()
    assert (body["success"], body["error"]) == (False, error) and body["message"]


async def test_a_body_over_the_limit_is_413_in_the_one_error_body(
    endpoint: McpEndpoint, client: httpx.AsyncClient
) -> None:
    endpoint.max_body_bytes = 10
    response = await client.post("/api/mcp", content=b"x" * 100, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
