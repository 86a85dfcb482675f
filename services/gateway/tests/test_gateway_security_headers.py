"""Security headers on every answer, and images answering conditional and range requests as HTTP says,
against the real app with fake parts (no lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from imagegen_common.images import ImageFile, StoredImage, strong_etag
from imagegen_gateway.app import create_app
from imagegen_gateway.authentication import Authenticator, Principal
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.domain import Reservation

DATA = bytes(range(256)) * 4  # 1024 bytes
ETAG = strong_etag(DATA)
URL = "/images/img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png"
PRINCIPAL = Principal(account_id="acc_1", email="a@example.com", token_id="tok_1")


class Images:
    async def get(self, filename: str) -> ImageFile | None:
        info = StoredImage(filename.split(".", maxsplit=1)[0], filename, "image/png", len(DATA), ETAG)
        return ImageFile(info=info, data=DATA)


class Tokens:
    async def authenticate(self, token: str) -> Principal:
        return PRINCIPAL


class Billing:
    async def find_reservation(self, job_id: str) -> Reservation | None:
        return None


async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands in for the MCP endpoint: refuses like it does without a token."""
    await JSONResponse({"error": "invalid_token"}, status_code=401)(scope, receive, send)


async def _client(public_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings(public_base_url=public_url))
    app.state.gateway = SimpleNamespace(
        images=Images(), authenticator=Authenticator(Tokens(), 5.0), billing=Billing(), mcp=mcp
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for http in _client("http://127.0.0.1:8000"):
        yield http


@pytest.fixture
async def https_client() -> AsyncIterator[httpx.AsyncClient]:
    async for http in _client("https://images.example.com"):
        yield http


@pytest.mark.parametrize(
    ("method", "path", "auth"),
    [
        ("GET", URL, False),
        ("GET", "/api/openapi.json", False),
        ("GET", "/api/account", False),  # 401
        ("GET", "/api/images/img_doesnotexist", True),  # 404
        ("POST", "/api/mcp", False),  # 401
        ("GET", "/no/such/route", False),
        ("POST", "/api/images/generate", True),  # 413 from the body limit, before any route
    ],
)
async def test_every_answer_carries_the_security_headers(
    client: httpx.AsyncClient, method: str, path: str, auth: bool
) -> None:
    headers = {"Authorization": "Bearer igk_good"} if auth else {}
    content = b"x" * 2_000_000 if path.endswith("generate") else None
    response = await client.request(method, path, headers=headers, content=content)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert "strict-transport-security" not in response.headers  # the public URL is http


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/api/account", False), ("/api/images/img_doesnotexist", True), ("/api/mcp", False)],
)
async def test_authenticated_json_is_never_stored(client: httpx.AsyncClient, path: str, auth: bool) -> None:
    headers = {"Authorization": "Bearer igk_good"} if auth else {}
    response = await (client.post if path == "/api/mcp" else client.get)(path, headers=headers)
    assert response.headers["cache-control"] == "no-store"


async def test_images_stay_cacheable_and_hsts_follows_an_https_public_url(
    https_client: httpx.AsyncClient,
) -> None:
    response = await https_client.get(URL)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    "if_none_match", ["*", ETAG, f'"other", {ETAG}', f"W/{ETAG}"], ids=["star", "etag", "list", "weak"]
)
async def test_if_none_match_that_matches_is_304(client: httpx.AsyncClient, if_none_match: str) -> None:
    response = await client.get(URL, headers={"If-None-Match": if_none_match})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == ETAG


async def test_if_none_match_of_another_tag_gets_the_image(client: httpx.AsyncClient) -> None:
    response = await client.get(URL, headers={"If-None-Match": '"something-else"'})
    assert response.status_code == 200
    assert response.content == DATA


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=10-5000", 10, 1023),
    ],
)
async def test_a_byte_range_is_206(client: httpx.AsyncClient, spec: str, first: int, last: int) -> None:
    response = await client.get(URL, headers={"Range": spec})
    assert response.status_code == 206
    assert response.content == DATA[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=9-3"])
async def test_an_unsatisfiable_range_is_416(client: httpx.AsyncClient, spec: str) -> None:
    response = await client.get(URL, headers={"Range": spec})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-1, 5-6"},  # several ranges: the whole image (RFC 9110 lets a server ignore Range)
        {"Range": "items=0-1"},  # a unit we do not know
        {"Range": "bytes=0-1", "If-Range": '"an-older-version"'},
    ],
)
async def test_what_is_not_one_fitting_byte_range_gets_the_whole_image(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get(URL, headers=headers)
    assert response.status_code == 200
    assert response.content == DATA


async def test_if_range_with_the_current_etag_gets_the_range(client: httpx.AsyncClient) -> None:
    response = await client.get(URL, headers={"Range": "bytes=0-0", "If-Range": ETAG})
    assert (response.status_code, response.content) == (206, DATA[:1])
