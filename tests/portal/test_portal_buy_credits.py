"""Buying credits in a real browser (Debian's Chromium through Playwright) against a whole stack whose
gateway talks to a fake Stripe (a real HTTP server): Buy credits → Stripe's (fake) hosted checkout page
→ Pay → the fake sends the signed webhook → the success page and the header show the new balance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen_testing.fake_stripe import FakeStripe
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.timeout(600)
SERIOUS = ("serious", "critical")


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def shop_stack(
    tmp_path_factory: pytest.TempPathFactory, mailbox: Any, fake_stripe: FakeStripe
) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("shop-stack"),
        gateway_env={
            "IMAGEGEN_SMTP_HOST": "127.0.0.1",
            "IMAGEGEN_SMTP_PORT": str(mailbox.port),
            "IMAGEGEN_SMTP_SECURITY": "none",
            "IMAGEGEN_STRIPE_SECRET_KEY": fake_stripe.secret_key,
            "IMAGEGEN_STRIPE_WEBHOOK_SECRET": fake_stripe.webhook_secret,
            "IMAGEGEN_STRIPE_API_BASE": fake_stripe.url,
        },
    )
    fake_stripe.webhook_url = f"{running.gateway_url}/webhooks/stripe"
    yield running
    running.stop()


def _check(page: Any, axe: str, name: str, shots: Path, csp_errors: list[str]) -> None:
    page.wait_for_load_state("load")
    page.evaluate(axe)
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(" "))}))"""
    )
    assert not [v for v in violations if v["impact"] in SERIOUS], f"{name}: {violations}"
    assert csp_errors == [], csp_errors
    page.screenshot(path=str(shots / f"{name}.png"))


def test_buy_credits_pay_on_the_checkout_page_and_see_the_new_balance(  # noqa: PLR0917 - fixtures
    shop_stack: RunningStack,
    mailbox: Any,
    browser: Any,
    axe_source: str,
    screenshots: Path,
    fake_stripe: FakeStripe,
) -> None:
    account = shop_stack.create_account(credits=100, email="shopper@example.test")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

    before = mailbox.count()
    page.goto(shop_stack.gateway_url + "/")
    page.get_by_label("Email address").fill(account.email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    page.goto(mailbox.link_for(account.email, after=before))
    page.get_by_role("main").get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/account/**")

    page.goto(shop_stack.gateway_url + "/account/credits")
    assert page.get_by_role("cell", name="0.80 USD").count() == 1  # Standard: 20.00 USD for 2,500
    _check(page, axe_source, "buy-credits", screenshots, csp_errors)
    page.get_by_role("button", name="Buy Standard").click()

    # Stripe's (fake) hosted page on another origin: the CSP's form-action let the redirect through
    page.wait_for_url(f"{fake_stripe.url}/checkout/**")
    assert page.get_by_role("heading", name="Pay 20.00 USD").count() == 1
    fake_stripe.webhook_delay_seconds = 3.0  # the event comes after the person is back
    page.get_by_role("button", name="Pay").click()

    page.wait_for_url("**/account/credits/success?session_id=cs_test_*")
    page.get_by_text("Processing your payment").wait_for()  # then the page's script polls
    _check(page, axe_source, "purchase-processing", screenshots, csp_errors)
    page.get_by_text("2,500 credits were added").wait_for(timeout=30_000)
    assert "2,600" in page.get_by_role("main").inner_text()
    assert "2,600 credits" in page.locator("[data-balance]").inner_text()  # the header too
    assert fake_stripe.webhook_answers == [200]
    _check(page, axe_source, "purchase-done", screenshots, csp_errors)
    assert shop_stack.account(account.account_id).account.credits == 2600
    context.close()
