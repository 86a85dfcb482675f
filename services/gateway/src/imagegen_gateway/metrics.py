"""The gateway's Prometheus metrics (names as in docs/architecture.md; labels bounded)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "imagegen_gateway_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "imagegen_gateway_http_request_duration_seconds",
    "HTTP request duration until the response ended.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TOOL_CALLS = Counter(
    "imagegen_gateway_tool_calls_total", "MCP tool calls by tool and outcome.", ["tool", "outcome"]
)
GENERATION_WAIT = Histogram(
    "imagegen_gateway_generation_wait_seconds",
    "Time from submission to the outcome of a generation.",
    ["frontend"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
WAITS_IN_FLIGHT = Gauge("imagegen_gateway_waits_in_flight", "Generations being waited for right now.")
IMAGES_SUBMITTED = Counter(
    "imagegen_gateway_images_submitted_total",
    "Images whose credits were held and whose jobs were queued, by front end.",
    ["frontend"],
)
RATE_LIMITED = Counter(
    "imagegen_gateway_rate_limited_total", "Requests refused with 429 by the per-token rate limit."
)
IDEMPOTENT_REPLAYS = Counter(
    "imagegen_gateway_idempotent_replays_total",
    "REST requests answered from an Idempotency-Key's stored answer, or refused for it, by result.",
    ["result"],
)
WEBHOOK_DELIVERIES = Counter(
    "imagegen_gateway_webhook_deliveries_total",
    "Webhook delivery attempts by event type and result (delivered, retry, failed, refused).",
    ["event", "result"],
)
WEBHOOK_DURATION = Histogram(
    "imagegen_gateway_webhook_delivery_duration_seconds",
    "Duration of one webhook delivery attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template ("/images/{filename}"), never the raw path (unbounded); a
    path that matched with another method (405) counts under its route too."""
    app = scope.get("app")
    router = getattr(app, "router", None)
    partial = None
    for route in getattr(router, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "other"))
    return partial or "unmatched"


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"  # bounded labels
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            HTTP_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)
