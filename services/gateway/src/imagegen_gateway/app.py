"""The gateway's FastAPI application: MCP at /api/mcp, images at /images/…, health and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version

import nats
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from nats.aio.client import Client as NATS
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imagegen_common.ops_http import metrics_response
from imagegen_gateway.auth import Authenticator
from imagegen_gateway.billing_client import BillingClient
from imagegen_gateway.catalog import ModelCatalog
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.generation import Generations
from imagegen_gateway.jobs import JobBus
from imagegen_gateway.mcp_tools import ImagegenTools, build_server
from imagegen_gateway.mcp_transport import McpEndpoint
from imagegen_gateway.metrics import HttpMetricsMiddleware
from imagegen_gateway.providers import ProviderRegistry

log = logging.getLogger(__name__)

VERSION = version("imagegen-gateway")


@dataclass
class Gateway:
    """Everything the routes use, built once the connections are up."""

    settings: GatewaySettings
    billing: BillingClient
    nc: NATS
    bus: JobBus
    catalog: ModelCatalog
    authenticator: Authenticator
    generations: Generations
    mcp: McpEndpoint


async def _connect_nats(settings: GatewaySettings) -> NATS:
    return await nats.connect(
        servers=[url.strip() for url in settings.nats_url.split(",")],
        name="imagegen-gateway",
        connect_timeout=settings.nats_connect_timeout_seconds,
        max_reconnect_attempts=-1,  # keep trying for as long as we run; readiness reports the outage
        reconnect_time_wait=1,
    )


@contextlib.asynccontextmanager
async def open_gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    billing = BillingClient(settings.billing_address, settings.billing_timeout_seconds)
    nc = await _connect_nats(settings)
    try:
        bus = JobBus(nc, settings.nats_stream_replicas)
        await bus.start()
        catalog = ModelCatalog(billing)
        authenticator = Authenticator(billing, settings.auth_cache_seconds)
        generations = Generations(
            billing=billing,
            bus=bus,
            catalog=catalog,
            job_timeout=settings.job_timeout_seconds,
            reservation_grace=settings.reservation_grace_seconds,
            poll_interval=settings.progress_interval_seconds,
        )
        tools = ImagegenTools(
            generations, catalog, ProviderRegistry(nc.jetstream(), settings.nats_stream_replicas)
        )
        endpoint = McpEndpoint(build_server(tools, VERSION), authenticator, settings.origin_allow_list)
        async with endpoint.run():
            yield Gateway(settings, billing, nc, bus, catalog, authenticator, generations, endpoint)
        await bus.close()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await billing.close()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


class _McpRoute:
    """ASGI endpoint of /api/mcp (a class, so that Starlette passes it the raw ASGI call)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state.gateway
        await gateway.mcp(scope, receive, send)


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_gateway(settings) as gateway:
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
    app.add_middleware(HttpMetricsMiddleware)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        checks = {"billing": await gateway.billing.serving(), "nats": gateway.bus.connected}
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    return app
