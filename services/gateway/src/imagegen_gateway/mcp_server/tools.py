"""The MCP server: the ``generate_image`` and ``list_models`` tools on the SDK's low-level Server.

Tool arguments are validated here with pydantic (bounds as documented); every failure a person can
act on is a tool result with ``isError`` and a sentence, never a protocol error or a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from imagegen_common.catalog import API_MAX_SIDE, API_MIN_SIDE
from imagegen_gateway.authentication import Principal
from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.domain import ModelListing
from imagegen_gateway.errors import GatewayError
from imagegen_gateway.generation import (
    MAX_PROMPT_CHARS,
    NOT_CHARGED,
    DeliveredImage,
    Generations,
    ImageRequest,
)
from imagegen_gateway.generators import GeneratorRegistry
from imagegen_gateway.idempotency import MAX_KEY_CHARS
from imagegen_gateway.metrics import TOOL_CALLS
from imagegen_gateway.presentation import model_view

log = logging.getLogger(__name__)

SERVER_NAME = "imagegen"
#: The default model, for a schema asked for before the catalog was first fetched.
NANO_BANANA = "nano-banana"
PRINCIPAL_SCOPE_KEY = "imagegen.principal"
MAX_MODEL_KEY_CHARS = 128


class _OptionalMeansAbsent(GenerateJsonSchema):
    """Optional arguments are simply not required: no ``anyOf [..., null]`` in the tool schema."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


class GenerateImageArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PROMPT_CHARS,
            description=f"Text prompt describing the image to generate (max {MAX_PROMPT_CHARS} characters)",
        ),
    ]
    model: Annotated[
        str,
        # bounded like REST's: an unknown key is echoed in the error that names the valid ones
        Field(
            max_length=MAX_MODEL_KEY_CHARS, description="AI model key. Use list_models to see all options."
        ),
    ] = ""
    width: Annotated[
        int,
        Field(
            ge=API_MIN_SIDE, le=API_MAX_SIDE, description="Image width in pixels (512-4096). Default: 1024"
        ),
    ] = 1024
    height: Annotated[
        int,
        Field(
            ge=API_MIN_SIDE, le=API_MAX_SIDE, description="Image height in pixels (512-4096). Default: 1024"
        ),
    ] = 1024
    input_image_url: Annotated[
        AnyHttpUrl | None, Field(description="URL of an input image for image-to-image generation")
    ] = None
    idempotency_key: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_KEY_CHARS,
            description=(
                "Optional key that makes a retry safe: a repeat with the same key returns the first "
                "result and is charged once."
            ),
        ),
    ] = None


class GenerateImageResult(BaseModel):
    image_url: Annotated[str, Field(description="Permanent URL of the generated image")]
    image_id: Annotated[str, Field(description="Id of the image")]
    credits_used: Annotated[int, Field(description="Credits this image cost")]
    credits_remaining: Annotated[
        int, Field(description="Credits left on the account once this image was paid for")
    ]


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_OptionalMeansAbsent)
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def _input_schema(default_model: str, model_keys: list[str]) -> dict[str, Any]:
    schema = _schema(GenerateImageArguments)
    schema["properties"]["model"].update(
        default=default_model,
        description=(
            f"AI model key. Default: {default_model}. Use list_models to see all options "
            f"({', '.join(model_keys)})."
        ),
    )
    return schema


LIST_MODELS_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "models": {"type": "array", "items": {"type": "object"}},
        "default_model": {"type": "string"},
    },
    "required": ["models"],
}


def _tools(default_model: str, model_keys: list[str]) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name="generate_image",
                title="Generate image",
                description=(
                    "Generate an AI image from a text prompt (or edit input images with a model that "
                    "supports image-to-image). The tool waits for generation to complete and returns "
                    "the final image URL. Costs credits by model and size; see list_models."
                ),
                input_schema=_input_schema(default_model, model_keys),
                output_schema=_schema(GenerateImageResult),
                annotations=types.ToolAnnotations(
                    read_only_hint=False,
                    destructive_hint=False,
                    idempotent_hint=False,
                    open_world_hint=True,
                ),
            ),
            types.Tool(
                name="list_models",
                title="List models",
                description=(
                    "List all available AI models with their capabilities, supported dimensions, and "
                    "credit costs. Takes no parameters."
                ),
                input_schema={"type": "object", "properties": {}, "additionalProperties": False},
                output_schema=LIST_MODELS_OUTPUT_SCHEMA,
                annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
            ),
        ]
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _validation_message(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        problems.append(f"{where}: {item['msg']}")
    return "Invalid arguments: " + "; ".join(problems)


def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
    """The caller, put on the HTTP request's scope by the transport's authentication."""
    request = ctx.request
    principal = getattr(request, "scope", {}).get(PRINCIPAL_SCOPE_KEY) if request is not None else None
    if not isinstance(principal, Principal):
        raise RuntimeError("MCP request reached a tool without an authenticated principal")
    return principal


class InFlightCalls:
    """Generations running in this process, by caller and JSON-RPC request id.

    In stateless Streamable HTTP a client's ``notifications/cancelled`` arrives on a POST of its own,
    which the SDK cannot relate to the call it names; this registry does, so that the generation
    stops, its credits are released, and the call answers at once. (A client that closes the call's
    stream is cancelled by the SDK itself.)
    """

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[Any]] = {}

    @contextmanager
    def track(self, account_id: str, request_id: object, task: asyncio.Task[Any]) -> Iterator[None]:
        key = (account_id, str(request_id))
        self._tasks[key] = task
        try:
            yield
        finally:
            if self._tasks.get(key) is task:
                del self._tasks[key]

    def cancel(self, account_id: str, request_id: object) -> bool:
        task = self._tasks.get((account_id, str(request_id)))
        if task is None or task.done():
            return False
        task.cancel()
        return True


class ImagegenTools:
    """Handlers of tools/list and tools/call."""

    def __init__(
        self, generations: Generations, catalog: ModelCatalog, generators: GeneratorRegistry
    ) -> None:
        self.generations = generations
        self.catalog = catalog
        self.generators = generators
        self.in_flight = InFlightCalls()
        self._tools: tuple[ModelListing, types.ListToolsResult] | None = None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        listing = await self.catalog.listing()
        if self._tools is None or self._tools[0] is not listing:  # built once per catalog fetch
            self._tools = (listing, _tools(listing.default_model, [m.key for m in listing.models]))
        return self._tools[1]

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """A tool's input schema, for the SDK's checks of ``Mcp-Param`` headers (2026-07-28), which
        would otherwise run the whole tools/list handler on every call."""
        tools = self._tools[1].tools if self._tools else _tools(NANO_BANANA, []).tools
        return next((tool.input_schema for tool in tools if tool.name == name), None)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        outcome = "error"
        try:
            if params.name == "generate_image":
                result = await self._generate_image(ctx, params.arguments or {})
            elif params.name == "list_models":
                result = await self._list_models()
            else:  # a protocol error, as the specification asks for an unknown tool
                unknown = f"Unknown tool {params.name!r}; the tools are generate_image and list_models"
                raise MCPError(INVALID_PARAMS, unknown)
            outcome = "error" if result.is_error else "success"
            return result
        except GatewayError as exc:
            outcome = exc.code
            return _error(exc.message)
        finally:
            TOOL_CALLS.labels(
                tool=params.name if params.name in {"generate_image", "list_models"} else "unknown",
                outcome=outcome,
            ).inc()

    async def _list_models(self) -> types.CallToolResult:
        listing = await self.catalog.listing()
        served_by = await self.generators.served_by()
        body = {
            "models": [model_view(m, served_by) for m in listing.models],
            "default_model": listing.default_model,
        }
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(body, indent=2))], structured_content=body
        )

    async def _generate_image(
        self, ctx: ServerRequestContext[Any, Any], arguments: dict[str, Any]
    ) -> types.CallToolResult:
        try:
            args = GenerateImageArguments.model_validate(arguments)
        except ValidationError as exc:
            return _error(_validation_message(exc))
        principal = principal_of(ctx)
        request = ImageRequest(
            prompt=args.prompt,
            model=args.model,
            width=args.width,
            height=args.height,
            input_image_urls=(str(args.input_image_url),) if args.input_image_url else (),
        )
        last_progress = 0.0

        async def report(stage: str, elapsed: float) -> None:
            nonlocal last_progress
            last_progress = max(last_progress + 0.001, round(elapsed, 3))  # must grow at every notification
            await ctx.session.report_progress(last_progress, None, f"{stage} ({elapsed:.0f}s)")

        generation = asyncio.ensure_future(
            self.generations.generate(
                principal, request, on_progress=report, idempotency_key=args.idempotency_key
            )
        )
        with self.in_flight.track(principal.account_id, ctx.request_id, generation):
            try:
                image = await generation  # if this call is cancelled (the client left), so is the generation
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # only the generation was cancelled: by the client's notifications/cancelled
                return _error(f"The call was cancelled at the client's request. {NOT_CHARGED}")
        return _image_result(image)


def _image_result(image: DeliveredImage) -> types.CallToolResult:
    body = GenerateImageResult(
        image_url=image.image_url,
        image_id=image.image_id,
        credits_used=image.credits_used,
        credits_remaining=image.credits_remaining,
    ).model_dump()
    extension = image.image_url.rsplit(".", 1)[-1]
    return types.CallToolResult(
        content=[
            types.TextContent(text=json.dumps(body)),
            types.ResourceLink(
                uri=image.image_url,
                name=f"{image.image_id}.{extension}",
                mime_type=image.mime_type,
                description=f"Generated image, {image.width}x{image.height}",
            ),
        ],
        structured_content=body,
    )


def build_server(tools: ImagegenTools, version: str) -> Server[Any]:
    server: Server[Any] = Server(
        SERVER_NAME,
        version=version,
        title="imagegen",
        instructions=(
            "Generate images with generate_image (it waits and returns a permanent image URL); "
            "list_models shows models, sizes and credit costs."
        ),
        on_list_tools=tools.list_tools,
        get_tool_input_schema=tools.input_schema,
        on_call_tool=tools.call_tool,
    )
    return server
