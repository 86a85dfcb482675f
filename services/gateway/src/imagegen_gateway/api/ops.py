"""``/healthz`` (the process is up), ``/readyz`` (billing, NATS and image storage answer), ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from imagegen_common.ops_http import metrics_response
from imagegen_gateway.api.deps import GatewayDep

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    checks = {
        "billing": await gateway.billing.serving(),
        "nats": gateway.bus.connected,
        "images": await _answers(gateway.images.ready()),
    }
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def _answers(probe: Awaitable[bool]) -> bool:
    try:
        return await probe
    except Exception:  # an unreachable backend is a "no", not an error
        return False


@router.get("/metrics")
async def metrics() -> Response:
    return metrics_response()
