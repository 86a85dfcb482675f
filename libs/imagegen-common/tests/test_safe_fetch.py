"""The SSRF guard: address rules, schemes, redirects re-checked, the vetted address connected to,
size and redirect limits; real HTTP against a local server (the one reachable place here)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from imagegen_common.safe_fetch import (
    FetchError,
    FetchPolicy,
    FetchRefused,
    SafeFetcher,
    host_port,
    refusal_reason,
)

PUBLIC_HOST = "cdn.example.com"
PUBLIC_IP = "93.184.215.14"
BODY = b"\x89PNG\r\n\x1a\n-not-really-but-bytes"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_port  # type: ignore[attr-defined]
        if self.path == "/image.png":
            self._send(200, BODY, {"Content-Type": "image/png; charset=binary"})
        elif self.path == "/to-loopback":
            self._send(302, b"", {"Location": f"http://127.0.0.1:{port}/image.png"})
        elif self.path == "/to-relative":
            self._send(301, b"", {"Location": "/image.png"})
        elif self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self._send(302, b"", {"Location": f"/hop/{n + 1}" if n < 10 else "/image.png"})
        elif self.path == "/big":
            self._send(200, b"x" * 4096, {"Content-Type": "application/octet-stream"})
        else:
            self._send(404, b"no", {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def site() -> Iterator[int]:
    """A local HTTP server; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


class RouteTo(httpx.AsyncBaseTransport):
    """Connections to PUBLIC_IP go to the local server instead (no packet leaves the machine); every
    request is recorded with the address it was sent to and its Host header."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.host, request.headers["host"]))
        if request.url.host == PUBLIC_IP:
            request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def resolver(host: str, port: int) -> Sequence[str]:
    return {
        PUBLIC_HOST: [PUBLIC_IP],
        "mixed.example.com": [PUBLIC_IP, "10.1.2.3"],
        "metadata.example.com": ["169.254.169.254"],
        "v6.example.com": ["::1"],
    }.get(host, ["127.0.0.1"])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "233.252.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "::7f00:1",
        "2001:db8::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://[::ffff:127.0.0.1]/", "embeds"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("http://user:pw@cdn.example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://localhost/", "loopback"),
        ("http://metadata.example.com/", "link-local"),
        ("http://mixed.example.com/", "private"),
        ("http://v6.example.com/", "loopback"),
        ("http://cdn.example.com:99999/", "not valid"),
    ],
)
async def test_refused_urls(url: str, reason: str) -> None:
    fetcher = SafeFetcher(
        FetchPolicy(), resolver=resolver, transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    with pytest.raises(FetchRefused, match=reason):
        await fetcher.fetch(url)


async def test_connects_to_the_vetted_address_with_the_original_host(site: int) -> None:
    transport = RouteTo(site)
    fetched = await SafeFetcher(FetchPolicy(), resolver=resolver, transport=transport).fetch(
        f"http://{PUBLIC_HOST}/image.png"
    )
    assert fetched.data == BODY
    assert fetched.content_type == "image/png"
    assert transport.seen == [(PUBLIC_IP, PUBLIC_HOST)]


async def test_a_redirect_to_loopback_is_refused(site: int) -> None:
    transport = RouteTo(site)
    fetcher = SafeFetcher(FetchPolicy(), resolver=resolver, transport=transport)
    with pytest.raises(FetchRefused, match="loopback"):
        await fetcher.fetch(f"http://{PUBLIC_HOST}/to-loopback")
    assert transport.seen == [(PUBLIC_IP, PUBLIC_HOST)]  # the second hop was never contacted


async def test_relative_redirects_are_followed_and_rechecked(site: int) -> None:
    transport = RouteTo(site)
    fetcher = SafeFetcher(FetchPolicy(), resolver=resolver, transport=transport)
    assert (await fetcher.fetch(f"http://{PUBLIC_HOST}/to-relative")).data == BODY
    assert len(transport.seen) == 2


async def test_at_most_three_redirects(site: int) -> None:
    fetcher = SafeFetcher(FetchPolicy(allow_private=True))
    assert (await fetcher.fetch(f"http://127.0.0.1:{site}/hop/8")).data == BODY  # 3 redirects: fine
    with pytest.raises(FetchRefused, match="redirects more than 3 times"):
        await fetcher.fetch(f"http://127.0.0.1:{site}/hop/7")


async def test_size_limit(site: int) -> None:
    fetcher = SafeFetcher(FetchPolicy(allow_private=True, max_bytes=1024))
    with pytest.raises(FetchRefused, match="larger than"):
        await fetcher.fetch(f"http://127.0.0.1:{site}/big")


async def test_http_errors_and_unreachable_hosts_are_fetch_errors(site: int) -> None:
    fetcher = SafeFetcher(FetchPolicy(allow_private=True, timeout_seconds=5))
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetcher.fetch(f"http://127.0.0.1:{site}/missing")
    with pytest.raises(FetchError, match="could not be fetched"):
        await fetcher.fetch("http://127.0.0.1:9/")


async def test_allow_private_is_for_development_only(site: int) -> None:
    url = f"http://127.0.0.1:{site}/image.png"
    with pytest.raises(FetchRefused):
        await SafeFetcher(FetchPolicy()).fetch(url)
    assert (await SafeFetcher(FetchPolicy(allow_private=True)).fetch(url)).data == BODY


async def test_an_allowed_host_and_port_passes_and_nothing_else_does(site: int) -> None:
    url = f"http://127.0.0.1:{site}/image.png"
    fetcher = SafeFetcher(FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{site}"})))
    assert (await fetcher.fetch(url)).data == BODY
    vetted = await fetcher.vet(url)
    assert (vetted.connect_url, vetted.host, vetted.server_name) == (url, f"127.0.0.1:{site}", "127.0.0.1")
    for other in (f"http://127.0.0.1:{site + 1}/", f"http://localhost:{site}/", "http://10.0.0.1/"):
        with pytest.raises(FetchRefused):
            await fetcher.vet(other)


def test_host_port_spelling() -> None:
    assert host_port("LocalHost", 80) == "localhost:80"
    assert host_port("::1", 8080) == "[::1]:8080"
