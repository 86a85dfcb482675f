"""The portal's pages without a browser: the portal alone on a FastAPI app, in front of a real billing
(gRPC, SQLite) in this process. Sign-in by link, cookies, CSRF, redirects, tokens, and isolation."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from imagegen.billing.v1 import billing_service_pb2 as billing_pb
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen_billing.config import BillingSettings
from imagegen_billing.server import BillingServer
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.payments import install_payments
from imagegen_gateway.portal import install_portal
from imagegen_gateway.portal.context import PortalContext
from imagegen_gateway.portal.security import CSRF_COOKIE, SESSION_COOKIE
from imagegen_testing.billing_callers import generate_secrets, secrets_settings, service_channel
from imagegen_testing.net import free_port

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@dataclass
class Portal:
    app: FastAPI
    billing: BillingServer
    base_url: str
    mails: list[tuple[str, str]] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.base_url)

    async def create_account(self, email: str) -> None:

        from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc

        token = self.billing.settings.admin_token.get_secret_value()
        async with service_channel(self.billing.settings) as channel:
            await admin_service_pb2_grpc.AdminServiceStub(channel).CreateAccount(
                admin_service_pb2.CreateAccountRequest(email=email, credits=100),
                metadata=[("authorization", f"Bearer {token}")],
            )


@pytest.fixture(params=["http://portal.test", "https://portal.test"])
async def portal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Portal]:
    callers = generate_secrets()  # the gateway's identity at billing
    billing = BillingServer(
        BillingSettings(
            billing_listen=f"127.0.0.1:{free_port()}",
            billing_ops_listen=f"127.0.0.1:{free_port()}",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}",
            admin_token="test-admin-" + secrets.token_urlsafe(24),
            billing_settlement_enabled=False,
            log_format="text",
            **secrets_settings(callers),
        )
    )
    await billing.start()
    settings = GatewaySettings(
        billing_address=billing.settings.billing_listen,
        **secrets_settings(callers),
        public_base_url=request.param,
    )
    app = FastAPI()
    install_payments(app, settings)  # the Buy credits page (issue 13)
    install_portal(app, settings)
    result = Portal(app, billing, request.param)
    context: PortalContext = app.state.portal
    context.mailer.send_sign_in_link = lambda to, url, minutes: result.mails.append((to, url))  # type: ignore[method-assign]
    yield result
    await context.client.close()
    await app.state.payments.close()
    await billing.stop()


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(
    portal: Portal, client: httpx.AsyncClient, email: str, next_path: str = ""
) -> httpx.Response:
    landing = await client.get("/")
    await client.post(
        "/signin/email", data={"email": email, "csrf_token": csrf_of(landing), "next": next_path}
    )
    to, url = portal.mails[-1]
    assert to == email
    link = urlsplit(url)
    confirm = await client.get(f"{link.path}?{link.query}")
    assert confirm.headers["referrer-policy"] == "no-referrer"
    token = parse_qs(link.query)["token"][0]
    return await client.post("/signin/link", data={"token": token, "csrf_token": csrf_of(confirm)})


async def test_sign_in_by_link_sets_a_fresh_http_only_cookie_and_the_pages_answer(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    async with portal.client() as client:
        landing = await client.get("/")
        assert landing.status_code == 200 and "Sign in" in landing.text
        csp = landing.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        client.cookies.set(SESSION_COOKIE, "igs_planted-by-an-attacker", domain="portal.test")
        done = await sign_in(portal, client, "ada@example.test", next_path="/account/usage")
        assert done.status_code == 303 and done.headers["location"] == "/account/usage"
        cookie = next(v for k, v in done.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v)
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert ("Secure" in cookie) == portal.base_url.startswith("https")
        assert "igs_planted-by-an-attacker" not in cookie  # a new session id on sign-in
        for path, text in [
            ("/account/tokens", "Your tokens"),
            ("/account/connect", "/api/mcp"),
            ("/account/usage", "Credit history"),
            ("/account/credits", "100"),
        ]:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert text in page.text and "ada@example.test" in page.text, path


async def test_the_answer_is_the_same_for_unknown_emails(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    async with portal.client() as client:
        csrf = csrf_of(await client.get("/"))
        known = await client.post("/signin/email", data={"email": "ada@example.test", "csrf_token": csrf})
        unknown = await client.post("/signin/email", data={"email": "eve@example.test", "csrf_token": csrf})
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("ada@", "X@") == unknown.text.replace("eve@", "X@")
    assert [to for to, _ in portal.mails] == ["ada@example.test"]


async def test_forms_without_the_csrf_token_are_refused(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    async with portal.client() as client:
        await client.get("/")
        refused = await client.post("/signin/email", data={"email": "ada@example.test"})
        assert refused.status_code == 403 and portal.mails == []
        await sign_in(portal, client, "ada@example.test")
        forged = await client.post("/account/tokens", data={"label": "evil", "csrf_token": "0" * 64})
        assert forged.status_code == 403
        tokens = await client.get("/account/tokens")
        assert "evil" not in tokens.text


async def test_links_work_once_and_redirects_stay_on_our_origin(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    async with portal.client() as client:
        done = await sign_in(portal, client, "ada@example.test", next_path="//evil.test/phish")
        assert done.headers["location"] == "/account/tokens"
        _, url = portal.mails[-1]
        link = urlsplit(url)
        confirm = await client.get(f"{link.path}?{link.query}")
        again = await client.post(
            "/signin/link", data={"token": parse_qs(link.query)["token"][0], "csrf_token": csrf_of(confirm)}
        )
        assert again.status_code == 400 and "invalid, already used or expired" in again.text
        landing = await client.get("/?next=https://evil.test/")
        assert "evil.test" not in landing.text


async def test_tokens_are_shown_once_revoked_and_private_to_their_account(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    await portal.create_account("bob@example.test")
    async with portal.client() as ada, portal.client() as bob:
        await sign_in(portal, ada, "ada@example.test")
        await sign_in(portal, bob, "bob@example.test")
        page = await ada.get("/account/tokens")
        created = await ada.post("/account/tokens", data={"label": "laptop", "csrf_token": csrf_of(page)})
        secret = re.search(r"(igk_[A-Za-z0-9_-]+)", created.text)
        assert secret and "laptop" in created.text
        again = await ada.get("/account/tokens")
        assert secret.group(1) not in again.text  # shown once
        token_id = re.search(r'data-token-id="(tok_[a-z0-9]+)">\s*<td>laptop<', again.text)
        assert token_id
        assert (await bob.get(f"/account/tokens/{token_id.group(1)}/revoke")).status_code == 404
        bob_page = await bob.get("/account/tokens")
        foreign = await bob.post(
            f"/account/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf_of(bob_page)}
        )
        assert foreign.status_code == 404
        confirm = await ada.get(f"/account/tokens/{token_id.group(1)}/revoke")
        assert "Revoke “laptop”?" in confirm.text, re.findall(r"<h1>.*</h1>", confirm.text)
        revoked = await ada.post(
            f"/account/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf_of(confirm)}
        )
        assert revoked.status_code == 200 and "is revoked" in revoked.text
        import grpc

        async with service_channel(portal.billing.settings) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await billing_service_pb2_grpc.BillingServiceStub(channel).Authenticate(
                    billing_pb.AuthenticateRequest(token=secret.group(1))
                )


async def test_sign_out_ends_the_session_everywhere(portal: Portal) -> None:
    await portal.create_account("ada@example.test")
    async with portal.client() as client:
        await sign_in(portal, client, "ada@example.test")
        stolen = client.cookies.get(SESSION_COOKIE)
        page = await client.get("/account/tokens")
        out = await client.post("/signout", data={"csrf_token": csrf_of(page)})
        assert out.status_code == 303
    async with portal.client() as other:
        other.cookies.set(SESSION_COOKIE, stolen or "", domain="portal.test")
        after = await other.get("/account/tokens")
        assert after.status_code == 303 and after.headers["location"] == "/?next=%2Faccount%2Ftokens"


async def test_signed_out_pages_send_to_sign_in_and_back(portal: Portal) -> None:
    async with portal.client() as client:
        page = await client.get("/account/usage?ledger=5")
        assert page.status_code == 303
        assert parse_qs(urlsplit(page.headers["location"]).query)["next"] == ["/account/usage?ledger=5"]
        assert CSRF_COOKIE in (await client.get("/")).headers.get("set-cookie", "")


async def test_admin_pages_need_the_role_and_act_on_other_accounts(portal: Portal) -> None:

    from imagegen.portal.v1 import portal_service_pb2, portal_service_pb2_grpc

    await portal.create_account("root@example.test")
    await portal.create_account("bob@example.test")
    async with portal.client() as root, portal.client() as bob:
        await sign_in(portal, root, "root@example.test")
        await sign_in(portal, bob, "bob@example.test")
        assert (await root.get("/admin")).status_code == 403
        token = portal.billing.settings.admin_token.get_secret_value()
        async with service_channel(portal.billing.settings) as channel:
            await portal_service_pb2_grpc.PortalServiceStub(channel).SetAccountRole(
                portal_service_pb2.SetAccountRoleRequest(
                    account="root@example.test", role=portal_service_pb2.ROLE_ADMIN
                ),
                metadata=[("authorization", f"Bearer {token}")],
            )
        assert (await bob.get("/admin")).status_code == 403
        found = await root.get("/admin", params={"q": "bob"})
        assert found.status_code == 200 and "bob@example.test" in found.text
        assert "root@example.test</a>" not in found.text
        link = re.search(r'href="(/admin/accounts/acc_[a-z0-9]+)"', found.text)
        assert link
        page = await root.get(link.group(1))
        granted = await root.post(
            f"{link.group(1)}/grant", data={"amount": "25", "note": "support", "csrf_token": csrf_of(page)}
        )
        assert granted.status_code == 303
        page = await root.get(granted.headers["location"])
        assert "Credits granted." in page.text and "125" in page.text and "support" in page.text
        forged = await root.post(f"{link.group(1)}/disabled", data={"disabled": "1"})
        assert forged.status_code == 403
        await root.post(f"{link.group(1)}/disabled", data={"disabled": "1", "csrf_token": csrf_of(page)})
        assert (await bob.get("/account/tokens")).status_code == 303  # the session no longer works
        page = await root.get(link.group(1))
        assert "Enable account" in page.text
