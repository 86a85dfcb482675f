"""The security headers of every gateway response, set in one place (a pure ASGI middleware, so that
MCP's streamed responses pass through unbuffered).

- ``X-Content-Type-Options: nosniff`` everywhere: a browser never guesses a type (an image or a JSON
  error rendered as HTML).
- ``Referrer-Policy: no-referrer``: image URLs and API paths never leak to third parties.
- ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``: nothing of ours
  is meant to be framed (clickjacking of the API docs or, later, the portal's pages).
- ``Cache-Control: no-store`` on authenticated answers (a request with ``Authorization``, and every
  answer of ``/api/account``, ``/api/images…`` and ``/api/mcp``): account data, image lists and tool
  results must not stay in a shared or browser cache.
- ``Strict-Transport-Security`` when the public URL is https (one year; not ``includeSubDomains``,
  which would bind every other host of a domain the operator may not own alone).

A header a route set itself wins (``setdefault``): images keep their ``immutable`` caching, and a page
that needs its own Content-Security-Policy says so.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths whose answers are an authenticated caller's data.
PRIVATE_PREFIXES = ("/api/account", "/api/images", "/api/mcp")
HSTS = "max-age=31536000"
ALWAYS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
)


class SecurityHeaders:
    def __init__(self, app: ASGIApp, public_base_url: str) -> None:
        self.app = app
        self.hsts = public_base_url.lower().startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        private = path.startswith(PRIVATE_PREFIXES) or "authorization" in Headers(scope=scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS:
                    headers.setdefault(name, value)
                if private:
                    headers.setdefault("cache-control", "no-store")
                if self.hsts:
                    headers.setdefault("strict-transport-security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
