"""The operations port of a service that has no HTTP API of its own (billing, generator):
``/metrics`` for Prometheus, ``/healthz`` (the process is up) and ``/readyz`` (it can do its work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]

log = logging.getLogger(__name__)


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def readiness_response(check: ReadinessCheck) -> JSONResponse:
    """200 when every named check passes, 503 otherwise; the body says which failed."""
    try:
        checks = await check()
    except Exception:  # a failing probe is an answer, not an error
        log.exception("readiness check raised")
        checks = {"check": False}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def ops_app(check: ReadinessCheck, registry: CollectorRegistry = REGISTRY) -> Starlette:
    async def metrics(_: Request) -> Response:
        return metrics_response(registry)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        return await readiness_response(check)

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the service that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_ops(host: str, port: int, check: ReadinessCheck) -> AsyncIterator[uvicorn.Server]:
    """Runs the operations app in the current event loop for the duration of the block."""
    config = uvicorn.Config(ops_app(check), host=host, port=port, log_config=None, access_log=False)
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raises why it could not start (port taken, …)
        raise RuntimeError(f"operations server on {host}:{port} stopped at start-up")
    try:
        yield server
    finally:
        server.should_exit = True
        await task
