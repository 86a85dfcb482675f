"""``/api/mcp``: the MCP endpoint (Streamable HTTP), mounted as a raw ASGI route: the SDK's transport
reads the request itself, so FastAPI must not."""

from __future__ import annotations

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagegen_gateway.state import Gateway

PATH = "/api/mcp"


class _McpRoute:
    """ASGI endpoint of /api/mcp (a class, so that Starlette passes it the raw ASGI call)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state.gateway
        await gateway.mcp(scope, receive, send)


route = Route(PATH, endpoint=_McpRoute(), methods=["GET", "POST", "DELETE"])
