"""The gateway's FastAPI application: MCP at /api/mcp, the REST API under /api, images at /images/…,
health and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import version

from fastapi import FastAPI

from imagegen_common import tracing
from imagegen_gateway.api import account, files, images, mcp, models, ops
from imagegen_gateway.api.limits import RestBodyLimit
from imagegen_gateway.api.responses import install_error_handlers
from imagegen_gateway.api.security_headers import SecurityHeaders
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.metrics import HttpMetricsMiddleware
from imagegen_gateway.oauth.routes import install_oauth
from imagegen_gateway.payments import install_payments
from imagegen_gateway.portal import install_portal
from imagegen_gateway.state import open_gateway

log = logging.getLogger(__name__)

VERSION = version("imagegen-gateway")


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_gateway(settings, VERSION) as gateway:
            app.state.gateway = gateway
            log.info(
                "gateway ready", extra={"listen": settings.gateway_listen, "instance": gateway.bus.instance}
            )
            yield
        await app.state.payments.close()  # payments: its billing channel and Stripe's HTTP client
        log.info("gateway stopped")

    app = FastAPI(
        title="imagegen",
        version=VERSION,
        summary="Image generation for AI assistants (MCP at /api/mcp) and scripts (this REST API).",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    # One router module per surface (api/…); the portal and OAuth come as routers of their own.
    app.router.routes.append(mcp.route)
    app.include_router(images.router)
    app.include_router(models.router)
    app.include_router(account.router)
    app.include_router(files.router)
    app.include_router(ops.router)
    install_payments(app, settings)  # buying credits: before the portal, whose Buy credits page it is
    install_portal(app, settings)  # the account portal: pages at /, /signin/…, /account/…
    install_oauth(app, settings)  # OAuth for MCP connectors: /.well-known/…, /authorize, /token, …
    install_error_handlers(app)
    app.add_middleware(RestBodyLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(HttpMetricsMiddleware)
    tracing.instrument_asgi_app(app)  # no-ops unless setup_tracing turned tracing on
    tracing.instrument_grpc_client()  # before the lifespan opens the channel to billing
    app.add_middleware(SecurityHeaders, public_base_url=settings.public_base_url)  # outermost: every answer
    return app


API_DESCRIPTION = """
The asynchronous REST API: `POST /api/images/generate` answers at once with the ids of the queued
images; poll `GET /api/images/{id}` (or receive a webhook) for each image's outcome. Every request
carries `Authorization: Bearer <API token>` (the same token as MCP). Errors are
`{"success": false, "error": "<code>", "message": "..."}`, with `errors` by field on 422,
`required` and `available` on 402 and `retry_after` on 429; a body that cannot be decoded as UTF-8 is
`400` with `error` `invalid_json`.

Webhooks follow Standard Webhooks: a `POST` of `{"type": "image.completed" | "image.failed",
"timestamp", "data": <the image object>}` with `webhook-id` (stable per job event),
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
with the account's `whsec_` secret; retried with backoff for about 8 hours until a 2xx.
"""
