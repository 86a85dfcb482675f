"""The MCP endpoint as clients meet it: the documented curl example, auth, errors, tool schemas."""

from __future__ import annotations

import json
import subprocess

import grpc
import httpx
import pytest

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen_testing import eventually_blocking
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

TOOLS_LIST = '{\n"jsonrpc": "2.0",\n"id": 1,\n"method": "tools/list",\n"params": {}\n}'


def test_documented_curl_example_works_as_written(stack: RunningStack) -> None:
    token = stack.create_account(credits=10).token
    # The docs' command, with our URL and a real token: no initialize, no Accept header of its own.
    completed = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", stack.mcp_url,
            "-H", f"Authorization: Bearer {token}",
            "-H", "Content-Type: application/json",
            "-d", TOOLS_LIST,
            "-w", "\n%{http_code}",
        ],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    body, status = completed.stdout.rsplit("\n", 1)
    assert status == "200"
    reply = json.loads(body)
    assert reply["id"] == 1
    assert {tool["name"] for tool in reply["result"]["tools"]} == {"generate_image", "list_models"}


def test_a_post_without_any_accept_header_gets_the_tool_list(stack: RunningStack) -> None:
    token = stack.create_account(credits=10).token
    request = httpx.Request(
        "POST",
        stack.mcp_url,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        content=TOOLS_LIST,
    )
    assert "accept" not in request.headers  # client.send() adds none of the client's defaults
    with httpx.Client() as client:
        response = client.send(request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.json()["result"]["tools"]) == 2


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer igk_not-a-real-token-at-all"}, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_token"),
    ],
)
def test_missing_or_bad_tokens_get_401_with_a_challenge(
    stack: RunningStack, headers: dict[str, str], error: str
) -> None:
    response = httpx.post(
        stack.mcp_url, headers={"Content-Type": "application/json", **headers}, content=TOOLS_LIST
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="imagegen"')
    assert response.json()["error"] == error
    assert "token" in response.json()["message"]


def test_a_revoked_token_stops_working_within_seconds(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    headers = {"Authorization": f"Bearer {account.token}", "Content-Type": "application/json"}
    assert httpx.post(stack.mcp_url, headers=headers, content=TOOLS_LIST).status_code == 200
    with grpc.insecure_channel(stack.billing_address) as channel:
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        auth = (("authorization", f"Bearer {stack.admin_token}"),)
        [token] = admin.ListTokens(
            admin_service_pb2.ListTokensRequest(account=account.account_id), metadata=auth
        ).tokens
        admin.RevokeToken(admin_service_pb2.RevokeTokenRequest(token_id=token.id), metadata=auth)
    # Refused once the gateway's auth cache has forgotten the token.
    eventually_blocking(
        lambda: httpx.post(stack.mcp_url, headers=headers, content=TOOLS_LIST).status_code == 401,
        timeout=30,
        what="the revoked token refused",
    )


def test_malformed_json_is_a_parse_error_and_an_unknown_method_is_method_not_found(
    stack: RunningStack,
) -> None:
    headers = {
        "Authorization": f"Bearer {stack.create_account(credits=1).token}",
        "Content-Type": "application/json",
    }
    malformed = httpx.post(stack.mcp_url, headers=headers, content='{"jsonrpc": "2.0", "id": 1, "meth')
    assert malformed.json()["error"]["code"] == -32700
    unknown = httpx.post(
        stack.mcp_url, headers=headers, content='{"jsonrpc":"2.0","id":7,"method":"tools/nope"}'
    )
    assert unknown.json()["error"]["code"] == -32601
    assert unknown.json()["id"] == 7


def test_foreign_origins_are_refused_and_our_own_allowed(stack: RunningStack) -> None:
    headers = {
        "Authorization": f"Bearer {stack.create_account(credits=1).token}",
        "Content-Type": "application/json",
    }
    evil = httpx.post(
        stack.mcp_url, headers={**headers, "Origin": "https://evil.example"}, content=TOOLS_LIST
    )
    assert evil.status_code == 403
    assert "origin" in evil.json()["message"]
    ours = httpx.post(stack.mcp_url, headers={**headers, "Origin": stack.gateway_url}, content=TOOLS_LIST)
    assert ours.status_code == 200


async def test_the_sdk_client_sees_both_tools_with_documented_bounds(stack: RunningStack) -> None:
    token = stack.create_account(credits=1).token
    async with mcp_client(stack.mcp_url, token) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    generate = tools["generate_image"]
    props = generate.input_schema["properties"]
    assert generate.input_schema["required"] == ["prompt"]
    assert (props["prompt"]["minLength"], props["prompt"]["maxLength"]) == (1, 1024)
    for side in ("width", "height"):
        assert (props[side]["type"], props[side]["minimum"], props[side]["maximum"]) == ("integer", 512, 4096)
        assert props[side]["default"] == 1024
    assert props["model"]["default"] == "nano-banana"
    assert props["input_image_url"]["format"] == "uri"
    assert generate.output_schema is not None
    assert set(generate.output_schema["required"]) == {
        "image_url",
        "image_id",
        "credits_used",
        "credits_remaining",
    }
    assert tools["list_models"].input_schema["properties"] == {}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_list_models_reports_every_documented_field(stack: RunningStack, mode: str) -> None:
    token = stack.create_account(credits=1).token
    async with mcp_client(stack.mcp_url, token, mode=mode) as client:
        result = await client.call_tool("list_models", {})
    assert not result.is_error
    assert isinstance(result.structured_content, dict)
    models = result.structured_content["models"]
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    by_key = {m["key"]: m for m in models}
    assert {"nano-banana", "flux-1"} <= set(by_key)
    banana = by_key["nano-banana"]
    for documented in (
        "key", "name", "description", "provider", "quality_rating", "pricing_rating",
        "supports_text_to_image", "supports_image_to_image",
    ):  # fmt: skip
        assert documented in banana
    assert banana["provider"] == "replicate"
    assert banana["credits_for_1024x1024"] == 5
    assert banana["supported_dimensions"]["max_width"] == 4096
    assert banana["price_rule"]["credits_per_megapixel"] == 5
    assert banana["served_by"] == "local"


def test_an_unknown_tool_is_a_protocol_error_and_get_is_not_allowed(stack: RunningStack) -> None:
    headers = {
        "Authorization": f"Bearer {stack.create_account(credits=1).token}",
        "Content-Type": "application/json",
    }
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "paint", "arguments": {}}}
    error = httpx.post(stack.mcp_url, headers=headers, json=call).json()["error"]
    assert error["code"] == -32602
    assert "generate_image and list_models" in error["message"]
    for method in ("GET", "DELETE"):
        refused = httpx.request(method, stack.mcp_url, headers=headers)
        assert refused.status_code == 405
        assert refused.headers["allow"] == "POST"
