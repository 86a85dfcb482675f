from __future__ import annotations

import httpx
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from imagegen_gateway.metrics import HttpMetricsMiddleware


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("hi")


def _count(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("imagegen_gateway_http_requests_total", labels) or 0.0


async def test_requests_are_counted_by_route_template_and_unknown_methods_share_one_label() -> None:
    app = Starlette(routes=[Route("/things/{name}", _hello, methods=["GET"])])
    app.add_middleware(HttpMetricsMiddleware)
    before_get = _count("/things/{name}", "GET", "200")
    before_other = _count("/things/{name}", "other", "405")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/things/a")).status_code == 200
        assert (await client.get("/things/b")).status_code == 200
        for method in ("X0RANDOM", "X1RANDOM"):  # a client may send any token as a method
            assert (await client.request(method, "/things/a")).status_code == 405
    assert _count("/things/{name}", "GET", "200") == before_get + 2
    assert _count("/things/{name}", "other", "405") == before_other + 2
    assert _count("/things/{name}", "X0RANDOM", "405") == 0
