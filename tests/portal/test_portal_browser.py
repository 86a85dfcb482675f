"""The account portal in a real browser (Debian's Chromium through Playwright) against a whole stack:
sign in by an emailed link, the user menu at the top right by keyboard, a token made, used with the MCP
SDK client and revoked, another account kept out, CSRF, used and expired links, open redirects,
cookie flags, and axe-core on every page. Screenshots of each page go to docs/screenshots with
IMAGEGEN_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import grpc
import httpx
import pytest

from imagegen.portal.v1 import portal_service_pb2, portal_service_pb2_grpc
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a real stack and Chromium

Page = Any
T = TypeVar("T")
VIEWPORT = {"width": 1280, "height": 800}
SERIOUS = ("serious", "critical")


class Portal:
    def __init__(self, stack: RunningStack, mailbox: Any, browser: Any, axe: str, shots: Path) -> None:
        self.stack = stack
        self.mailbox = mailbox
        self.browser = browser
        self.axe = axe
        self.shots = shots
        self.checked: set[str] = set()

    def new_page(self, **options: Any) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT, **options)
        page = context.new_page()
        page.csp_errors = []
        page.on(
            "console",
            lambda m: page.csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        return page

    def url(self, path: str) -> str:
        return self.stack.gateway_url + path

    def check_page(self, page: Page, name: str) -> None:
        """axe-core finds no serious or critical violation, no CSP violation; a screenshot."""
        page.wait_for_load_state("load")
        page.evaluate(self.axe)
        violations = page.evaluate(
            """async () => {
                const result = await axe.run(document, {resultTypes: ["violations"]});
                return result.violations.map(v => ({
                    id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5),
                }));
            }"""
        )
        serious = [v for v in violations if v["impact"] in SERIOUS]
        assert not serious, f"{name}: {serious}"
        assert page.csp_errors == [], page.csp_errors
        page.screenshot(path=str(self.shots / f"{name}.png"))
        self.checked.add(name)

    def sign_in(self, page: Page, email: str, next_path: str = "", check: bool = False) -> str:
        """Signs in through the emailed link; returns the link (used)."""
        before = self.mailbox.count()
        page.goto(self.url("/" + (f"?next={quote(next_path, safe='')}" if next_path else "")))
        if check:
            self.check_page(page, "landing")
        page.get_by_label("Email address").fill(email)
        page.get_by_role("button", name="Email me a sign-in link").click()
        page.get_by_role("heading", name="Check your email").wait_for()
        if check:
            self.check_page(page, "signin-sent")
        link = self.mailbox.link_for(email, after=before)
        page.goto(link)
        if check:
            self.check_page(page, "signin-link")
        page.get_by_role("main").get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/account/**")
        return str(link)


@pytest.fixture
def portal(
    portal_stack: RunningStack, mailbox: Any, browser: Any, axe_source: str, screenshots: Path
) -> Portal:
    return Portal(portal_stack, mailbox, browser, axe_source, screenshots)


async def _tool_names(url: str, token: str) -> set[str]:
    async with mcp_client(url, token) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def _in_thread(function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Runs a coroutine on a loop of its own (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, function(*args)).result(timeout=120)


def _mcp_status(url: str, token: str) -> int:
    reply = httpx.post(
        url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        timeout=30,
    )
    return reply.status_code


def test_sign_in_find_the_menu_make_use_and_revoke_a_token(portal: Portal) -> None:
    account = portal.stack.create_account(credits=500, email="ada@example.test")
    page = portal.new_page()
    portal.sign_in(page, account.email, check=True)
    assert page.url.endswith("/account/tokens")

    # The user menu: top right, shows email and balance, opens and moves by keyboard.
    button = page.get_by_role("button", name="ada@example.test")
    box = button.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] > VIEWPORT["width"] * 0.75 and box["y"] < 80
    assert "500 credits" in button.inner_text()
    button.focus()
    page.keyboard.press("Enter")
    menu = page.get_by_role("menu")
    menu.wait_for()
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "API tokens"
    assert [i.inner_text().strip() for i in menu.get_by_role("menuitem").all()] == [
        "API tokens",
        "Connect",
        "Connected apps",
        "Usage",
        "Buy credits",
        "Sign out",
    ]
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Connect"
    page.screenshot(path=str(portal.shots / "user-menu.png"))
    page.keyboard.press("Escape")
    assert menu.is_hidden()
    assert page.evaluate("document.activeElement.id") == "user-menu-button"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")  # wraps to the last item
    assert page.evaluate("document.activeElement.textContent.trim()") == "Sign out"
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")  # Buy credits
    page.wait_for_url("**/account/credits")
    portal.check_page(page, "buy-credits")

    page.goto(portal.url("/account/tokens"))
    portal.check_page(page, "tokens")
    page.get_by_label("Label").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("[data-new-token]").inner_text().strip()
    assert secret.startswith("igk_")
    assert secret in page.locator("#code-claude-code").inner_text()  # Connect snippets carry it
    portal.check_page(page, "token-created")
    assert _in_thread(_tool_names, portal.stack.mcp_url, secret) >= {"generate_image", "list_models"}

    page.goto(portal.url("/account/tokens"))
    assert secret not in page.content()  # shown once
    row = page.get_by_role("row").filter(has_text="laptop")
    row.get_by_role("link", name="Revoke").click()
    portal.check_page(page, "token-revoke")
    page.get_by_role("button", name="Revoke token").click()
    page.get_by_text("is revoked").wait_for()
    deadline = time.monotonic() + 30
    while _mcp_status(portal.stack.mcp_url, secret) != 401:
        assert time.monotonic() < deadline, "the revoked token still works"
        time.sleep(0.2)

    page.goto(portal.url("/account/connect"))
    portal.check_page(page, "connect")
    assert portal.stack.mcp_url in page.locator("#code-claude-add").inner_text()
    page.goto(portal.url("/account/usage"))
    portal.check_page(page, "usage")
    assert page.get_by_role("cell", name="initial credits").count() == 1

    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["imagegen_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and not session["secure"]

    # Dark mode renders too (and passes axe).
    dark = portal.new_page(color_scheme="dark")
    dark.context.add_cookies([session])
    dark.goto(portal.url("/account/tokens"))
    portal.check_page(dark, "tokens-dark")
    # A phone-sized screen.
    phone = portal.browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    phone.csp_errors = []
    phone.context.add_cookies([session])
    phone.goto(portal.url("/account/usage"))
    portal.check_page(phone, "usage-phone")

    # Sign out ends the session on the server: the old cookie is dead.
    page.get_by_role("button", name="ada@example.test").click()
    page.get_by_role("menuitem", name="Sign out").click()
    page.wait_for_url(portal.url("/"))
    dark.goto(portal.url("/account/tokens"))
    assert "/account/" not in dark.url


def test_another_account_cannot_see_or_change_the_first(portal: Portal) -> None:
    ada = portal.stack.create_account(credits=5)
    bob = portal.stack.create_account(credits=5)
    ada_page = portal.new_page()
    portal.sign_in(ada_page, ada.email)
    ada_page.get_by_label("Label").fill("ada-private")
    ada_page.get_by_role("button", name="Create token").click()
    ada_page.goto(portal.url("/account/tokens"))
    token_id = ada_page.get_by_role("row").filter(has_text="ada-private").get_attribute("data-token-id")
    assert token_id

    bob_page = portal.new_page()
    portal.sign_in(bob_page, bob.email)
    assert "ada-private" not in bob_page.content()
    for path in ("/account/tokens", "/account/usage", "/account/connect"):
        bob_page.goto(portal.url(path))
        assert ada.email not in bob_page.content() and "ada-private" not in bob_page.content()
    reply = bob_page.goto(portal.url(f"/account/tokens/{token_id}/revoke"))
    assert reply is not None and reply.status == 404
    # CSRF: a post without the form's token is refused, and changes nothing.
    refused = bob_page.request.post(portal.url("/account/tokens"), form={"label": "forged"})
    assert refused.status == 403
    forged = bob_page.request.post(
        portal.url(f"/account/tokens/{token_id}/revoke"), form={"csrf_token": "0" * 64}
    )
    assert forged.status == 403
    bob_page.goto(portal.url("/account/tokens"))
    assert "forged" not in bob_page.content()


def test_used_and_expired_links_and_open_redirects_are_refused(portal: Portal) -> None:
    account = portal.stack.create_account(credits=5)
    page = portal.new_page()
    link = portal.sign_in(page, account.email, next_path="//evil.test/phish")
    assert page.url == portal.url("/account/tokens")

    other = portal.new_page()
    other.goto(link)
    other.get_by_role("main").get_by_role("button", name="Sign in").click()
    other.get_by_text("invalid, already used or expired").wait_for()
    portal.check_page(other, "signin-link-used")
    assert "imagegen_session" not in {c["name"] for c in other.context.cookies()}

    # An expired link (its expiry moved into the past in billing's database).
    before = portal.mailbox.count()
    other.goto(portal.url("/"))
    other.get_by_label("Email address").fill(account.email)
    other.get_by_role("button", name="Email me a sign-in link").click()
    fresh = portal.mailbox.link_for(account.email, after=before)
    with sqlite3.connect(portal.stack.stack.data / "billing.db") as db:
        db.execute("UPDATE login_links SET expire_time = '2000-01-01 00:00:00.000000' WHERE use_time IS NULL")
    other.goto(fresh)
    other.get_by_role("main").get_by_role("button", name="Sign in").click()
    other.get_by_text("invalid, already used or expired").wait_for()

    # An operator's login link (what `imagegen admin account login-link` prints) works the same way.
    with grpc.insecure_channel(portal.stack.billing_address) as channel:
        reply = portal_service_pb2_grpc.PortalServiceStub(channel).CreateLoginLink(
            portal_service_pb2.CreateLoginLinkRequest(account=account.email, next_path="/account/usage"),
            metadata=(("authorization", f"Bearer {portal.stack.admin_token}"),),
            timeout=10,
        )
    other.goto(portal.url(f"/signin/link?token={reply.link_token}"))
    other.get_by_role("main").get_by_role("button", name="Sign in").click()
    other.wait_for_url(portal.url("/account/usage"))


def test_admin_pages_for_the_admin_role_only(portal: Portal) -> None:
    root = portal.stack.create_account(credits=0)
    user = portal.stack.create_account(credits=42)
    page = portal.new_page()
    portal.sign_in(page, user.email)
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").count() == 0
    refused = page.goto(portal.url("/admin"))
    assert refused is not None and refused.status == 403

    with grpc.insecure_channel(portal.stack.billing_address) as channel:
        portal_service_pb2_grpc.PortalServiceStub(channel).SetAccountRole(
            portal_service_pb2.SetAccountRoleRequest(account=root.email, role=portal_service_pb2.ROLE_ADMIN),
            metadata=(("authorization", f"Bearer {portal.stack.admin_token}"),),
            timeout=10,
        )
    admin = portal.new_page()
    portal.sign_in(admin, root.email)
    admin.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    admin.get_by_label("Email or account id").fill(user.email)
    admin.get_by_role("button", name="Find").click()
    portal.check_page(admin, "admin")
    admin.get_by_role("link", name=user.email).click()
    admin.get_by_role("spinbutton", name="Credits").fill("8")
    admin.get_by_label("Note").fill("welcome bonus")
    admin.get_by_role("button", name="Grant").click()
    admin.get_by_text("Credits granted.").wait_for()
    portal.check_page(admin, "admin-account")
    page.goto(portal.url("/account/usage"))
    assert "50 credits" in page.get_by_role("button", name=user.email).inner_text()


def test_sign_in_with_openid_connect(portal: Portal) -> None:
    portal.stack.create_account(credits=3, email="oidc-ada@example.test")
    page = portal.new_page()
    page.goto(portal.url("/?next=/account/connect"))
    page.get_by_role("link", name="Continue with Test ID").click()
    page.get_by_role("button", name="oidc-ada", exact=True).click()
    page.wait_for_url(portal.url("/account/connect"))
    assert "oidc-ada@example.test" in page.get_by_role("button", name="oidc-ada@example.test").inner_text()
    assert page.context.cookies(portal.url("/"))[0]["httpOnly"]

    # A verified email without an account may not sign up under the invite policy.
    stranger = portal.new_page()
    stranger.goto(portal.url("/"))
    stranger.get_by_role("link", name="Continue with Test ID").click()
    reply_page = stranger
    reply_page.get_by_role("button", name="oidc-eve", exact=True).click()
    reply_page.get_by_text("This account may not sign in here").wait_for()
    portal.check_page(reply_page, "oidc-refused")

    # An unverified email is never matched to an account.
    unverified = portal.new_page()
    unverified.goto(portal.url("/"))
    unverified.get_by_role("link", name="Continue with Test ID").click()
    unverified.get_by_role("button", name="oidc-unverified", exact=True).click()
    unverified.get_by_role("heading", name="Not signed in").wait_for()
    assert "imagegen_session" not in {c["name"] for c in unverified.context.cookies()}

    # A callback that this browser did not start is refused.
    forged = portal.new_page()
    reply = forged.goto(portal.url("/signin/oidc/callback?state=forged&code=forged"))
    assert reply is not None and reply.status == 400


def _rest_generation_works(portal: Portal, token: str) -> bool:
    """Whether this build's REST generation path makes images (Try it uses the same path)."""
    reply = httpx.post(
        f"{portal.stack.rest_url}/images/generate",
        headers={"Authorization": f"Bearer {token}"},
        json={"prompt": "probe", "model": "flux-schnell", "width": 512, "height": 512},
        timeout=30,
    )
    return reply.status_code == 200


def test_try_it_shows_prices_refuses_without_credits_and_makes_an_image(portal: Portal) -> None:
    broke = portal.stack.create_account(credits=0)
    page = portal.new_page()
    portal.sign_in(page, broke.email, next_path="/account/try")
    assert page.url.endswith("/account/try")
    price = page.locator("[data-price-out]")
    page.get_by_label("Model").select_option("flux-1")
    page.get_by_label("Size").select_option("1024x1024")
    assert price.inner_text() == "3 credits"
    page.get_by_label("Size").select_option("1536x1024")
    assert price.inner_text() == "5 credits"
    portal.check_page(page, "try")
    page.get_by_label("Prompt").fill("a lighthouse at dusk")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("alert").filter(has_text="you have 0").wait_for()
    assert page.get_by_role("alert").get_by_role("link", name="Buy credits").count() == 1
    assert page.get_by_label("Prompt").input_value() == "a lighthouse at dusk"
    portal.check_page(page, "try-no-credits")

    rich = portal.stack.create_account(credits=100)
    assert _rest_generation_works(portal, rich.token), portal.stack.logs()
    page = portal.new_page()
    portal.sign_in(page, rich.email, next_path="/account/try")
    balance = int(page.locator("[data-balance]").inner_text().split()[0].replace(",", ""))
    page.get_by_label("Model").select_option("flux-1")
    page.get_by_label("Size").select_option("1024x1024")
    page.get_by_label("Prompt").fill("a lighthouse at dusk")
    page.get_by_role("button", name="Generate").click()
    page.get_by_alt_text("The generated image").wait_for(timeout=60_000)
    page.get_by_text(f"{balance - 3} credits").first.wait_for()
    assert page.get_by_label("Model").input_value() == "flux-1"
    portal.check_page(page, "try-done")
    image_id = page.locator("[data-image-id]").get_attribute("data-image-id")
    page.goto(portal.url("/account/usage"))
    # The gallery shows the image with the prompt it was made for.
    tile = page.locator(".tile").filter(has=page.locator(f'a[href*="/images/{image_id}."]'))
    assert tile.count() == 1, page.content()
    assert "a lighthouse at dusk" in tile.inner_text()
    assert (
        tile.locator("img").get_attribute("alt", timeout=5_000) == "a lighthouse at dusk (flux-1, 1024×1024)"
    )
    portal.check_page(page, "usage-gallery")

    # Another account sees nothing of it.
    other = portal.new_page()
    portal.sign_in(other, portal.stack.create_account(credits=1).email)
    reply = other.request.get(portal.url(f"/account/images/{image_id}.json"))
    assert reply.status == 404
    other.goto(portal.url("/account/usage"))
    assert str(image_id) not in other.content()


def test_an_oauth_app_is_approved_on_the_consent_page_and_disconnected(portal: Portal) -> None:
    """Issue 12 in a real browser: authorize → sign in → consent (axe, CSP lets the form go back to the
    app) → the app's callback gets a code and iss; Connected apps lists the app and disconnects it."""
    redirect = "http://127.0.0.1:53682/callback"
    registered = httpx.post(
        portal.url("/register"),
        json={
            "client_name": "Browser app",
            "redirect_uris": [redirect],
            "token_endpoint_auth_method": "none",
        },
    )
    client_id = registered.json()["client_id"]
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    authorize = portal.url("/authorize?") + urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "browser-state",
            "resource": portal.stack.mcp_url,
        }
    )
    account = portal.stack.create_account(credits=5, email="oauth-person@example.test")
    page = portal.new_page()
    landed: list[str] = []

    def callback(route: Any) -> None:
        landed.append(route.request.url)
        route.fulfill(body="done")

    page.route("http://127.0.0.1:53682/**", callback)
    page.goto(authorize)
    page.wait_for_url("**/?next=*")  # not signed in: the portal's sign-in keeps the request
    portal.sign_in(page, account.email)
    page.goto(authorize)
    page.get_by_role("heading", name="Allow “Browser app” to use your imagegen account?").wait_for()
    assert account.email in page.inner_text("main") and "127.0.0.1:53682" in page.inner_text("main")
    portal.check_page(page, "oauth-consent")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url("http://127.0.0.1:53682/**")
    query = parse_qs(urlsplit(landed[-1]).query)
    assert query["state"] == ["browser-state"] and query["code"][0].startswith("igc_")
    assert query["iss"] == [portal.stack.gateway_url]
    assert page.csp_errors == []

    page.goto(portal.url("/account/apps"))
    page.get_by_role("cell", name="Browser app", exact=True).wait_for()
    portal.check_page(page, "connected-apps")
    page.get_by_role("button", name="Disconnect Browser app").click()
    page.get_by_text("“Browser app” is disconnected.").wait_for()
    page.context.close()
