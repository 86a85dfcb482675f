"""OAuth for MCP connectors end to end (issue 12): the MCP Python SDK's OAuthClientProvider against
the real stack, headless (its redirect handler follows the authorize redirect with a signed-in portal
session and approves the consent page), and the refusals an authorization server owes its clients."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import grpc
import httpx
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

from imagegen.portal.v1 import portal_service_pb2 as portal_pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_testing.net import free_port
from imagegen_testing.stack import Account, RunningStack, start_stack

REDIRECT = "http://127.0.0.1:53682/callback"
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


class Document(BaseHTTPRequestHandler):
    """Serves the test's Client ID Metadata Document."""

    body = b"{}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def document_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Document)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, document_server: ThreadingHTTPServer
) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("oauth-stack"),
        gateway_env={
            "IMAGEGEN_AUTH_CACHE_SECONDS": "0.5",
            # test-only: the metadata document is served over plain http on loopback
            "IMAGEGEN_OAUTH_METADATA_DOCUMENT_HOSTS": f"127.0.0.1:{document_server.server_port}",
        },
    )
    yield running
    running.stop()


def session_for(stack: RunningStack, account: Account) -> str:
    """A signed-in portal session of the account (an operator's one-time link, used)."""
    with grpc.insecure_channel(stack.billing_address) as channel:
        portal = portal_service_pb2_grpc.PortalServiceStub(channel)
        link = portal.CreateLoginLink(
            portal_pb.CreateLoginLinkRequest(account=account.email),
            metadata=(("authorization", f"Bearer {stack.admin_token}"),),
        )
        signed: str = portal.CompleteEmailSignIn(
            portal_pb.CompleteEmailSignInRequest(link_token=link.link_token)
        ).session_token
    return signed


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """A person at a browser, signed in to the portal, who approves what the consent page asks."""

    def __init__(self, gateway_url: str, session: str, approve: bool = True) -> None:
        self.gateway_url = gateway_url
        self.session = session
        self.approve = approve
        self.result: AuthorizationCodeResult | None = None
        self.consent_pages: list[str] = []

    async def redirect(self, authorization_url: str) -> None:
        async with httpx.AsyncClient(
            cookies={"imagegen_session": self.session}, follow_redirects=False
        ) as http:
            response = await http.get(authorization_url)
            while response.status_code in (302, 303, 307) and response.headers["location"].startswith(
                (self.gateway_url, "/")
            ):
                response = await http.get(urljoin(self.gateway_url, response.headers["location"]))
            if response.status_code == 200:  # the consent page
                self.consent_pages.append(response.text)
                fields = {name: unescape(value) for name, value in HIDDEN.findall(response.text)}
                fields["decision"] = "allow" if self.approve else "deny"
                response = await http.post(f"{self.gateway_url}/oauth/consent", data=fields)
            assert response.status_code in (302, 303), response.text[:500]
            query = parse_qs(urlsplit(response.headers["location"]).query)
        self.location = response.headers["location"]
        self.result = AuthorizationCodeResult(
            code=query.get("code", [""])[0],
            state=query.get("state", [None])[0],
            iss=query.get("iss", [None])[0],
        )

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def provider_for(
    stack: RunningStack, browser: Browser, storage: MemoryStorage, client_metadata_url: str | None = None
) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=stack.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="SDK test client",
            redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
        client_metadata_url=client_metadata_url,
    )


async def generate(stack: RunningStack, auth: OAuthClientProvider) -> dict[str, Any]:
    async with (
        create_mcp_http_client(auth=auth) as http,
        Client(streamable_http_client(stack.mcp_url, http_client=http)) as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": "a fox", "width": 512, "height": 512})
    assert not result.is_error, result
    assert result.structured_content is not None
    return dict(result.structured_content)


def test_metadata_and_the_bare_401_lead_to_the_authorization_server(stack: RunningStack) -> None:
    origin = stack.gateway_url
    for path in ("/.well-known/oauth-protected-resource/api/mcp", "/.well-known/oauth-protected-resource"):
        prm = httpx.get(origin + path, headers={"Origin": "http://inspector.example"})
        assert prm.status_code == 200 and prm.headers["access-control-allow-origin"] == "*"
        body = prm.json()
        assert body["resource"] == stack.mcp_url and body["authorization_servers"] == [origin]
        assert body["scopes_supported"] == ["images:generate", "account:read"]
        assert body["bearer_methods_supported"] == ["header"]
    asm = httpx.get(origin + "/.well-known/oauth-authorization-server").json()
    assert asm["issuer"] == origin
    assert asm["code_challenge_methods_supported"] == ["S256"]
    assert asm["client_id_metadata_document_supported"] is True
    assert asm["authorization_response_iss_parameter_supported"] is True
    assert "none" in asm["token_endpoint_auth_methods_supported"]
    for name in ("authorization", "token", "registration", "revocation"):
        assert asm[f"{name}_endpoint"].startswith(origin + "/")
    bare = httpx.post(stack.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert bare.status_code == 401
    challenge = bare.headers["www-authenticate"]
    assert f'resource_metadata="{origin}/.well-known/oauth-protected-resource/api/mcp"' in challenge
    assert 'scope="images:generate account:read"' in challenge
    rest = httpx.get(f"{stack.rest_url}/account")
    assert 'resource_metadata="' in rest.headers["www-authenticate"]
    preflight = httpx.options(
        origin + "/token",
        headers={"Origin": "http://inspector.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"]


async def test_the_sdk_client_registers_signs_in_consents_generates_refreshes_and_is_revoked(
    stack: RunningStack,
) -> None:
    account = stack.create_account(credits=100)
    browser = Browser(stack.gateway_url, session_for(stack, account))
    storage = MemoryStorage()
    body = await generate(stack, provider_for(stack, browser, storage))
    # DCR made a public client; the person saw one consent page naming it, their email and the scopes
    assert storage.client is not None and storage.client.client_id
    assert len(browser.consent_pages) == 1
    page = browser.consent_pages[0]
    assert "SDK test client" in page and account.email in page and "127.0.0.1:53682" in page
    assert "Generate images on your credits" in page
    assert f"iss={stack.gateway_url}" in browser.location.replace("%3A", ":").replace("%2F", "/")
    # the image was charged to the signed-in account
    assert stack.credits(account.account_id) == 100 - body["credits_used"]
    assert storage.tokens is not None and storage.tokens.access_token.startswith("iga_")
    first = storage.tokens

    # refresh: the SDK rotates both tokens; the old refresh token is used up
    async with httpx.AsyncClient() as http:
        refreshed = await http.post(
            f"{stack.gateway_url}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": first.refresh_token,
                "client_id": storage.client.client_id,
                "resource": stack.mcp_url,
            },
        )
        assert refreshed.status_code == 200, refreshed.text
        second = refreshed.json()
        assert second["refresh_token"] != first.refresh_token
        assert second["access_token"] != first.access_token
        account_read = await http.get(
            f"{stack.rest_url}/account", headers={"Authorization": f"Bearer {second['access_token']}"}
        )
        assert account_read.status_code == 200, account_read.text

        # remembered consent: a second authorization goes straight back with a code
        again = Browser(stack.gateway_url, browser.session)
        storage2 = MemoryStorage()
        storage2.client = storage.client
        await generate(stack, provider_for(stack, again, storage2))
        assert again.consent_pages == []

        # revoke (RFC 7009) ends the grant: its access token stops working
        revoked = await http.post(
            f"{stack.gateway_url}/revoke",
            data={"token": second["refresh_token"], "client_id": storage.client.client_id},
        )
        assert revoked.status_code == 200
        await _eventually_refused(http, stack, second["access_token"])


async def _eventually_refused(http: httpx.AsyncClient, stack: RunningStack, token: str) -> None:
    import asyncio

    for _ in range(40):
        response = await http.get(f"{stack.rest_url}/account", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 401:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the revoked token still works")
