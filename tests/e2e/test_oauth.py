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
from collections.abc import Iterator
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
            portal_pb.CompleteEmailSignInRequest(link_token=link.link_token),
            metadata=stack.billing_metadata(),  # as the gateway's portal pages call it
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


# Refusals


def register(stack: RunningStack, **metadata: Any) -> dict[str, Any]:
    body = {
        "client_name": "Raw client",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
        **metadata,
    }
    response = httpx.post(f"{stack.gateway_url}/register", json=body)
    assert response.status_code == 201, response.text
    registered: dict[str, Any] = response.json()
    return registered


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def authorize_url(stack: RunningStack, client_id: str, challenge: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st",
        "resource": stack.mcp_url,
        "scope": "images:generate account:read",
        **extra,
    }
    return str(httpx.URL(f"{stack.gateway_url}/authorize", params=params))


async def code_for(stack: RunningStack, session: str, client_id: str, challenge: str, **extra: str) -> str:
    browser = Browser(stack.gateway_url, session)
    await browser.redirect(authorize_url(stack, client_id, challenge, **extra))
    assert browser.result is not None and browser.result.code, browser.location
    return browser.result.code


def token_request(stack: RunningStack, **form: str) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/token", data={"grant_type": "authorization_code", **form})


async def test_the_token_endpoint_refuses_what_does_not_match_the_authorization(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    session = session_for(stack, account)
    client_id = register(stack)["client_id"]
    verifier, challenge = pkce()
    code = await code_for(stack, session, client_id, challenge)
    good = {
        "code": code,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "resource": stack.mcp_url,
    }
    for change, error in (
        ({"code_verifier": pkce()[0]}, "invalid_grant"),
        ({"code_verifier": ""}, "invalid_request"),
        ({"redirect_uri": "http://127.0.0.1:53682/other"}, "invalid_grant"),
        ({"resource": "https://elsewhere.example/api/mcp"}, "invalid_target"),
        ({"resource": ""}, "invalid_request"),
    ):
        form = {key: value for key, value in {**good, **change}.items() if value or key != "resource"}
        if change.get("resource") == "":
            form.pop("resource", None)
        refused = token_request(stack, **form)
        assert refused.status_code == 400 and refused.json()["error"] == error, (change, refused.text)
    unknown = token_request(stack, **{**good, "client_id": "not-registered"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    issued = token_request(stack, **good)
    assert issued.status_code == 200, issued.text
    # a code works once; presented again it is refused and what it gave is taken back
    again = token_request(stack, **good)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    async with httpx.AsyncClient() as http:
        await _eventually_refused(http, stack, issued.json()["access_token"])


async def test_refresh_token_reuse_revokes_the_grant_and_scopes_never_grow(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    session = session_for(stack, account)
    client_id = register(stack)["client_id"]
    verifier, challenge = pkce()
    code = await code_for(stack, session, client_id, challenge, scope="account:read")
    tokens = token_request(
        stack,
        code=code,
        client_id=client_id,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
        resource=stack.mcp_url,
    ).json()
    assert tokens["scope"] == "account:read"
    refresh = {
        "grant_type": "refresh_token",
        "client_id": client_id,
        "refresh_token": tokens["refresh_token"],
    }
    escalated = httpx.post(
        f"{stack.gateway_url}/token", data={**refresh, "scope": "account:read images:generate"}
    )
    assert escalated.status_code == 400 and escalated.json()["error"] == "invalid_scope"
    rotated = httpx.post(f"{stack.gateway_url}/token", data=refresh)
    assert rotated.status_code == 200
    # a token with account:read only may read the account but not generate (403 insufficient_scope)
    access = {"Authorization": f"Bearer {rotated.json()['access_token']}"}
    assert httpx.get(f"{stack.rest_url}/account", headers=access).status_code == 200
    submit = httpx.post(f"{stack.rest_url}/images/generate", headers=access, json={"prompt": "x"})
    assert submit.status_code == 403 and submit.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope", scope="images:generate"' in submit.headers["www-authenticate"]
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "x"}},
    }
    mcp = httpx.post(
        stack.mcp_url, headers={**access, "Accept": "application/json, text/event-stream"}, json=call
    )
    assert mcp.status_code == 403 and 'error="insufficient_scope"' in mcp.headers["www-authenticate"]
    assert "resource_metadata=" in mcp.headers["www-authenticate"]
    # the used refresh token again: the grant ends, the live access token with it
    reused = httpx.post(f"{stack.gateway_url}/token", data=refresh)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    async with httpx.AsyncClient() as http:
        await _eventually_refused(http, stack, rotated.json()["access_token"])


def test_authorize_never_redirects_to_an_unregistered_address(stack: RunningStack) -> None:
    client_id = register(stack)["client_id"]
    _, challenge = pkce()
    evil = httpx.get(authorize_url(stack, client_id, challenge, redirect_uri="https://evil.example/cb"))
    assert evil.status_code == 400 and "evil.example" not in evil.headers.get("location", "")
    unknown = httpx.get(authorize_url(stack, "nobody", challenge))
    assert unknown.status_code == 400 and "location" not in unknown.headers
    # a foreign resource goes back to the (registered) client as an error, with no code
    foreign = httpx.get(authorize_url(stack, client_id, challenge, resource="https://elsewhere.example/mcp"))
    assert foreign.status_code == 302 and "error=invalid_target" in foreign.headers["location"]
    assert parse_qs(urlsplit(foreign.headers["location"]).query)["iss"] == [stack.gateway_url]
    missing = httpx.get(authorize_url(stack, client_id, challenge, resource=""))
    assert missing.status_code == 302 and "error=invalid_request" in missing.headers["location"]
    # registration refuses redirect URIs that are neither https nor loopback http
    plain = httpx.post(f"{stack.gateway_url}/register", json={"redirect_uris": ["http://evil.example/cb"]})
    assert plain.status_code == 400 and plain.json()["error"] == "invalid_redirect_uri"


def test_api_tokens_still_work_and_foreign_or_unknown_oauth_tokens_do_not(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    assert (
        httpx.get(
            f"{stack.rest_url}/account", headers={"Authorization": f"Bearer {account.token}"}
        ).status_code
        == 200
    )
    fake = httpx.get(f"{stack.rest_url}/account", headers={"Authorization": "Bearer iga_" + "x" * 43})
    assert fake.status_code == 401


async def test_a_client_id_metadata_document_client(
    stack: RunningStack, document_server: ThreadingHTTPServer
) -> None:
    """The client_id is the document's URL: fetched (through the SSRF guard, here allowed to reach the
    test's loopback server over http; production needs https on a public address), validated, cached.
    (The SDK's OAuthClientProvider insists on an https document URL, so this flow is driven by hand.)"""
    account = stack.create_account(credits=100)
    url = f"http://127.0.0.1:{document_server.server_port}/client.json"
    Document.body = json.dumps(
        {
            "client_id": url,
            "client_name": "Document client",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
    ).encode()
    browser = Browser(stack.gateway_url, session_for(stack, account))
    verifier, challenge = pkce()
    await browser.redirect(authorize_url(stack, url, challenge))
    assert browser.result is not None and browser.result.code, browser.location
    assert "Document client" in browser.consent_pages[0]
    tokens = token_request(
        stack,
        code=browser.result.code,
        client_id=url,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
        resource=stack.mcp_url,
    )
    assert tokens.status_code == 200, tokens.text
    access = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a fox", "width": 512, "height": 512}},
    }
    answer = httpx.post(stack.mcp_url, headers=access, json=call, timeout=60)
    assert answer.status_code == 200, answer.text
    used = answer.json()["result"]["structuredContent"]["credits_used"]
    assert stack.credits(account.account_id) == 100 - used
    # a document whose client_id is not its own URL is refused
    Document.body = json.dumps(
        {"client_id": "https://other.example/c.json", "redirect_uris": [REDIRECT]}
    ).encode()
    other = f"http://127.0.0.1:{document_server.server_port}/other.json"
    assert httpx.get(authorize_url(stack, other, challenge)).status_code == 400


def test_a_metadata_document_on_a_private_address_is_not_fetched(stack: RunningStack) -> None:
    _, challenge = pkce()
    for client_id in (
        "https://10.0.0.1/client.json",
        "https://127.0.0.1/client.json",
        "http://192.168.1.1/c.json",
    ):
        refused = httpx.get(authorize_url(stack, client_id, challenge))
        assert refused.status_code == 400 and "location" not in refused.headers, client_id


async def test_connected_apps_lists_and_disconnects_an_app(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    session = session_for(stack, account)
    client_id = register(stack, client_name="Listed app")["client_id"]
    verifier, challenge = pkce()
    code = await code_for(stack, session, client_id, challenge)
    tokens = token_request(
        stack,
        code=code,
        client_id=client_id,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
        resource=stack.mcp_url,
    ).json()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(f"{stack.rest_url}/account", headers=access).status_code == 200
    with httpx.Client(base_url=stack.gateway_url, cookies={"imagegen_session": session}) as portal:
        page = portal.get("/account/apps")
        assert page.status_code == 200
        assert "Listed app" in page.text and "Generate images on your credits" in page.text
        assert 'href="/account/apps"' in page.text  # in the user menu and the account tabs
        action = re.search(r'action="(/account/apps/[^"]+/revoke)"', page.text)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert action and csrf
        forged = portal.post(action.group(1), data={"csrf_token": "forged"})
        assert forged.status_code == 403
        done = portal.post(action.group(1), data={"csrf_token": csrf.group(1)}, follow_redirects=False)
        assert done.status_code == 303
        after = portal.get(done.headers["location"])
        assert "is disconnected" in after.text and "No apps are connected" in after.text
    async with httpx.AsyncClient() as http:
        await _eventually_refused(http, stack, tokens["access_token"])


def test_consent_needs_a_signed_in_person_and_can_be_denied(stack: RunningStack) -> None:
    client_id = register(stack)["client_id"]
    _, challenge = pkce()
    first = httpx.get(authorize_url(stack, client_id, challenge))
    assert first.status_code == 302 and first.headers["location"].startswith("/oauth/consent?")
    anonymous = httpx.get(stack.gateway_url + first.headers["location"])
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/?next=")
    account = stack.create_account(credits=1)
    with httpx.Client(
        base_url=stack.gateway_url, cookies={"imagegen_session": session_for(stack, account)}
    ) as person:
        page = person.get(first.headers["location"])
        assert page.status_code == 200 and account.email in page.text
        assert "form-action 'self' http://127.0.0.1:53682" in page.headers["content-security-policy"]
        fields = {name: unescape(value) for name, value in HIDDEN.findall(page.text)}
        denied = person.post("/oauth/consent", data={**fields, "decision": "deny"}, follow_redirects=False)
        assert denied.status_code == 303
        query = parse_qs(urlsplit(denied.headers["location"]).query)
        assert query["error"] == ["access_denied"] and query["state"] == ["st"] and "code" not in query
        assert query["iss"] == [stack.gateway_url]
        forged = person.post("/oauth/consent", data={**fields, "decision": "allow", "csrf_token": "x"})
        assert forged.status_code == 403


async def test_a_confidential_client_authenticates_with_its_secret(stack: RunningStack) -> None:
    """DCR of a confidential client: the secret is answered once, stored hashed, and checked at /token
    (client_secret_post or Basic)."""
    account = stack.create_account(credits=1)
    session = session_for(stack, account)
    registered = register(stack, token_endpoint_auth_method="client_secret_post")
    client_id, secret = registered["client_id"], registered["client_secret"]
    assert secret
    for credentials, status in (
        ({"client_secret": "wrong"}, 401),
        ({}, 401),
        ({"client_secret": secret}, 200),
    ):
        verifier, challenge = pkce()
        code = await code_for(stack, session, client_id, challenge)
        form = {"code": code, "client_id": client_id, "redirect_uri": REDIRECT, "code_verifier": verifier}
        answer = token_request(stack, **form, resource=stack.mcp_url, **credentials)
        assert answer.status_code == status, (credentials, answer.text)
    verifier, challenge = pkce()
    code = await code_for(stack, session, client_id, challenge)
    basic = httpx.post(
        f"{stack.gateway_url}/token",
        auth=(client_id, secret),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "resource": stack.mcp_url,
        },
    )
    assert basic.status_code == 200, basic.text
