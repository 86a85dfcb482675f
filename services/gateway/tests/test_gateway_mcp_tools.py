"""The MCP tools: every failure a person can act on is a tool result with ``isError`` and a sentence; an
unknown tool is a protocol error; a client's ``notifications/cancelled`` stops the generation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from imagegen_gateway.authentication import Principal
from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.errors import GatewayError, GenerationFailedError, ServiceUnavailableError
from imagegen_gateway.generation import DeliveredImage, Generations, ImageRequest
from imagegen_gateway.generators import GeneratorRegistry
from imagegen_gateway.mcp_server.tools import PRINCIPAL_SCOPE_KEY, ImagegenTools

PRINCIPAL = Principal(account_id="acc_1", email="a@example.com", token_id="tok_1")
DELIVERED = DeliveredImage(
    image_id="img_a",
    image_url="http://x/images/img_a.png",
    mime_type="image/png",
    width=1024,
    height=1024,
    credits_used=4,
    credits_remaining=96,
)


@dataclass
class FakeGenerations:
    """Answers ``generate`` with an image, raises an error, or waits until cancelled."""

    answer: DeliveredImage | GatewayError | None = None
    asked: list[ImageRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, principal: Principal, request: ImageRequest, **_: Any) -> DeliveredImage:
        self.asked.append(request)
        self.started.set()
        if isinstance(self.answer, GatewayError):
            raise self.answer
        if self.answer is None:
            await asyncio.Event().wait()
        assert isinstance(self.answer, DeliveredImage)
        return self.answer


class DownCatalog:
    async def listing(self) -> Any:
        raise ServiceUnavailableError("billing is unavailable; please try again shortly")


def _tools(generations: FakeGenerations, catalog: object = None) -> ImagegenTools:
    return ImagegenTools(
        cast("Generations", generations), cast("ModelCatalog", catalog), cast("GeneratorRegistry", None)
    )


def _ctx(request_id: int = 1) -> Any:
    return SimpleNamespace(
        request=SimpleNamespace(scope={PRINCIPAL_SCOPE_KEY: PRINCIPAL}), request_id=request_id
    )


def _call(name: str, **arguments: Any) -> types.CallToolRequestParams:
    return types.CallToolRequestParams(name=name, arguments=arguments)


async def test_an_image_is_a_structured_result_with_a_link() -> None:
    generations = FakeGenerations(answer=DELIVERED)
    result = await _tools(generations).call_tool(_ctx(), _call("generate_image", prompt="a fox", width=768))
    assert not result.is_error
    assert result.structured_content == {
        "image_url": DELIVERED.image_url,
        "image_id": "img_a",
        "credits_used": 4,
        "credits_remaining": 96,
    }
    assert isinstance(result.content[1], types.ResourceLink)
    assert generations.asked == [ImageRequest(prompt="a fox", width=768)]


async def test_invalid_arguments_are_a_tool_error_naming_the_field() -> None:
    generations = FakeGenerations(answer=DELIVERED)
    result = await _tools(generations).call_tool(_ctx(), _call("generate_image", prompt="", width=10))
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert text.text.startswith("Invalid arguments") and "width" in text.text and "prompt" in text.text
    assert generations.asked == []


async def test_an_overlong_model_key_is_refused_before_anything_echoes_it() -> None:
    generations = FakeGenerations(answer=DELIVERED)
    result = await _tools(generations).call_tool(
        _ctx(), _call("generate_image", prompt="a", model="m" * 10_000)
    )
    assert result.is_error and generations.asked == []
    text = result.content[0]
    assert isinstance(text, types.TextContent) and len(text.text) < 500


async def test_a_failed_generation_is_a_tool_error_with_its_sentence() -> None:
    failure = GenerationFailedError("content_rejected", "The filter refused it. No credits were charged.")
    result = await _tools(FakeGenerations(answer=failure)).call_tool(
        _ctx(), _call("generate_image", prompt="a fox")
    )
    assert result.is_error
    assert result.content == [types.TextContent(text=failure.message)]


async def test_an_unreachable_catalog_is_a_tool_error() -> None:
    result = await _tools(FakeGenerations(), DownCatalog()).call_tool(_ctx(), _call("list_models"))
    assert result.is_error
    assert result.content == [types.TextContent(text="billing is unavailable; please try again shortly")]


async def test_an_unknown_tool_is_a_protocol_error() -> None:
    with pytest.raises(MCPError):
        await _tools(FakeGenerations()).call_tool(_ctx(), _call("draw"))


async def test_a_cancellation_of_the_client_stops_the_generation() -> None:
    generations = FakeGenerations()
    tools = _tools(generations)
    call = asyncio.ensure_future(tools.call_tool(_ctx(request_id=7), _call("generate_image", prompt="a fox")))
    await generations.started.wait()
    assert not tools.in_flight.cancel("acc_2", 7)  # another account's call of the same id
    assert tools.in_flight.cancel("acc_1", 7)
    result = await call
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, types.TextContent) and "cancelled at the client's request" in text.text
