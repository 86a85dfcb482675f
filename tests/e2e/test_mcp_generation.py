"""generate_image through the whole path (gateway → billing → NATS → generator → store), with the
local provider: images, credit arithmetic, bad input at no cost, concurrency, idempotency."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest
from mcp.types import CallToolResult, ResourceLink, TextContent
from PIL import Image

from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    assert result.structured_content is None
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


async def test_an_image_is_generated_stored_and_served_at_the_requested_size(stack: RunningStack) -> None:
    account = stack.create_account(credits=100)
    async with mcp_client(stack.mcp_url, account.token) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "a lighthouse at dusk", "width": 768, "height": 512}
        )
    body = structured(result)
    assert set(body) == {"image_url", "image_id", "credits_used", "credits_remaining"}
    text, link = result.content
    assert isinstance(text, TextContent)
    assert json.loads(text.text) == body
    assert isinstance(link, ResourceLink)
    assert link.uri == body["image_url"]
    assert body["image_url"] == f"{stack.gateway_url}/images/{body['image_id']}.png"
    assert len(body["image_id"]) >= 26  # 128 random bits in base32

    response = httpx.get(body["image_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert "immutable" in response.headers["cache-control"]
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("PNG", (768, 512))
    again = httpx.get(body["image_url"], headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


async def test_credits_are_charged_exactly_by_model_and_size(stack: RunningStack) -> None:
    account = stack.create_account(credits=100)
    # nano-banana: 5 credits per megapixel (1024x1024), rounded up; flux-schnell: 1 per megapixel
    calls: list[tuple[dict[str, Any], int]] = [
        ({"prompt": "one"}, 5),
        ({"prompt": "two", "width": 2048, "height": 1024}, 10),
        ({"prompt": "three", "width": 512, "height": 512}, 2),
        ({"prompt": "four", "model": "flux-schnell", "width": 1536, "height": 1024}, 2),
    ]
    remaining = 100
    async with mcp_client(stack.mcp_url, account.token) as client:
        for arguments, cost in calls:
            body = structured(await client.call_tool("generate_image", arguments))
            remaining -= cost
            assert (body["credits_used"], body["credits_remaining"]) == (cost, remaining)
    assert stack.credits(account.account_id) == remaining == 81


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt": "x", "model": "dall-e-9"}, "unknown model 'dall-e-9'; available models: nano-banana"),
        ({"prompt": "x", "width": 100}, "width: Input should be greater than or equal to 512"),
        ({"prompt": "x", "height": 5000}, "height: Input should be less than or equal to 4096"),
        ({"prompt": "x", "model": "flux-schnell", "width": 4096}, "between 512 and 2048"),
        ({"prompt": ""}, "prompt: String should have at least 1 character"),
        ({"prompt": "x" * 1025}, "prompt: String should have at most 1024 characters"),
        ({"width": 1024}, "prompt: Field required"),
        ({"prompt": "x", "input_image_url": "not a url"}, "input_image_url"),
        (
            {"prompt": "x", "model": "flux-schnell", "input_image_url": "https://example.com/a.png"},
            "flux-schnell does not support image-to-image",
        ),
        (
            {"prompt": "x", "input_image_url": "http://127.0.0.1:1/secret.png"},
            "loopback address and is refused",
        ),
        ({"prompt": "x", "input_image_url": "http://169.254.169.254/latest/meta-data"}, "link-local"),
        ({"prompt": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
async def test_bad_input_is_a_tool_error_that_costs_nothing(
    stack: RunningStack, arguments: dict[str, Any], message: str
) -> None:
    account = stack.create_account(credits=20)
    async with mcp_client(stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", arguments)
    assert message in error_text(result)
    assert stack.credits(account.account_id) == 20


async def test_insufficient_credits_says_what_the_image_costs_and_what_you_have(stack: RunningStack) -> None:
    account = stack.create_account(credits=3)
    async with mcp_client(stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", {"prompt": "too dear"})
    assert "this image costs 5 credits; you have 3" in error_text(result)
    assert stack.credits(account.account_id) == 3


async def test_fifty_concurrent_calls_from_an_account_that_can_afford_thirty(stack: RunningStack) -> None:
    account = stack.create_account(credits=60)  # 512x512 on nano-banana costs 2
    async with mcp_client(stack.mcp_url, account.token) as client:
        results = await asyncio.gather(
            *(
                client.call_tool("generate_image", {"prompt": f"image {i}", "width": 512, "height": 512})
                for i in range(50)
            )
        )
    succeeded = [r for r in results if not r.is_error]
    refused = [error_text(r) for r in results if r.is_error]
    assert len(succeeded) == 30
    assert len(refused) == 20
    assert all("this image costs 2 credits" in message for message in refused)
    assert len({structured(r)["image_id"] for r in succeeded}) == 30
    assert stack.credits(account.account_id) == 0


async def test_progress_notifications_reach_a_client_that_asks_for_them(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    received: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        received.append((progress, message))

    async with mcp_client(stack.mcp_url, account.token) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "progress"}, progress_callback=on_progress
        )
    structured(result)
    assert received, "no progress notification arrived"
    assert received[0][1] is not None and received[0][1].startswith("queued")
    values = [value for value, _ in received]
    assert values == sorted(values) and len(set(values)) == len(values)


async def test_an_idempotency_key_returns_the_first_result_and_charges_once(stack: RunningStack) -> None:
    account = stack.create_account(credits=20)
    arguments = {"prompt": "once", "idempotency_key": "order-42"}
    async with mcp_client(stack.mcp_url, account.token) as client:
        first = structured(await client.call_tool("generate_image", arguments))
        second = structured(await client.call_tool("generate_image", arguments))
        reused = await client.call_tool("generate_image", {**arguments, "prompt": "something else"})
    assert second["image_id"] == first["image_id"]
    assert second["image_url"] == first["image_url"]
    assert "already used for a different request" in error_text(reused)
    assert stack.credits(account.account_id) == 15
