"""The gateway's FastAPI application: MCP at /api/mcp, images at /images/…, health and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import version

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.metrics import HttpMetricsMiddleware
from imagegen_gateway.routes import images, ops
from imagegen_gateway.state import Gateway, open_gateway

log = logging.getLogger(__name__)

VERSION = version("imagegen-gateway")


class _McpRoute:
    """ASGI endpoint of /api/mcp (a class, so that Starlette passes it the raw ASGI call)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state.gateway
        await gateway.mcp(scope, receive, send)


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_gateway(settings, VERSION) as gateway:
            app.state.gateway = gateway
            log.info(
                "gateway ready", extra={"listen": settings.gateway_listen, "instance": gateway.bus.instance}
            )
            yield
        log.info("gateway stopped")

    app = FastAPI(
        title="imagegen",
        version=VERSION,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.router.routes.append(Route("/api/mcp", endpoint=_McpRoute(), methods=["GET", "POST", "DELETE"]))
    app.include_router(images.router)
    app.include_router(ops.router)
    app.add_middleware(HttpMetricsMiddleware)
    return app
