"""Buying credits through the gateway: the portal's Buy credits flow and ``POST /webhooks/stripe``,
with the real ``stripe`` library talking to a fake Stripe (a real HTTP server) and a real billing
(gRPC, SQLite or PostgreSQL) in this process. Webhooks are signed here with Stripe's scheme."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.billing.v1 import resources_pb2
from imagegen_billing.config import BillingSettings
from imagegen_billing.server import BillingServer
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.payments import install_payments
from imagegen_gateway.payments.routes import PaymentsContext
from imagegen_gateway.portal import install_portal
from imagegen_gateway.portal.context import PortalContext
from imagegen_testing import postgres
from imagegen_testing.billing_callers import generate_secrets, secrets_settings, service_channel
from imagegen_testing.fake_stripe import DEFAULT_WEBHOOK_SECRET, FakeStripe, event, sign
from imagegen_testing.net import free_port

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
BASE = "http://portal.test"


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@dataclass
class Shop:
    app: FastAPI
    billing: BillingServer
    stripe: FakeStripe
    mails: list[tuple[str, str]] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    async def admin(self, method: str, request: Any) -> Any:
        token = self.billing.settings.admin_token.get_secret_value()
        async with service_channel(self.billing.settings) as channel:
            stub = admin_service_pb2_grpc.AdminServiceStub(channel)
            return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")])

    async def create_account(self, email: str) -> str:
        reply = await self.admin(
            "CreateAccount", admin_service_pb2.CreateAccountRequest(email=email, credits=0)
        )
        return str(reply.account.id)

    async def credits(self, account_id: str) -> int:
        reply = await self.admin("GetAccount", admin_service_pb2.GetAccountRequest(account=account_id))
        return int(reply.account.credits)

    async def ledger(self, account_id: str) -> list[resources_pb2.LedgerEntry]:
        reply = await self.admin(
            "ListLedgerEntries", admin_service_pb2.ListLedgerEntriesRequest(account=account_id)
        )
        return list(reply.entries)

    async def deliver(self, client: httpx.AsyncClient, payload: bytes, **headers: str) -> httpx.Response:
        return await client.post(
            "/webhooks/stripe",
            content=payload,
            headers={"Stripe-Signature": sign(payload, DEFAULT_WEBHOOK_SECRET), **headers},
        )

    async def sign_in(self, client: httpx.AsyncClient, email: str) -> None:
        landing = await client.get("/")
        await client.post("/signin/email", data={"email": email, "csrf_token": csrf_of(landing), "next": ""})
        _, url = self.mails[-1]
        link = urlsplit(url)
        confirm = await client.get(f"{link.path}?{link.query}")
        token = parse_qs(link.query)["token"][0]
        await client.post("/signin/link", data={"token": token, "csrf_token": csrf_of(confirm)})

    async def checkout(self, client: httpx.AsyncClient, pack: str = "standard") -> str:
        """Buy → the gateway's 303 to the (fake) hosted checkout page; returns the session id."""
        page = await client.get("/account/credits")
        reply = await client.post(
            "/account/credits/checkout", data={"pack": pack, "csrf_token": csrf_of(page)}
        )
        assert reply.status_code == 303, reply.text
        location = reply.headers["location"]
        assert location.startswith(f"{self.stripe.url}/checkout/cs_test_")
        return location.rsplit("/", 1)[1]


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


#: The gateway's identity at billing, shared by the test's billing and gateway settings.
CALLERS = generate_secrets()


def _billing_settings(database_url: str) -> BillingSettings:
    return BillingSettings(
        billing_listen=f"127.0.0.1:{free_port()}",
        billing_ops_listen=f"127.0.0.1:{free_port()}",
        database_url=database_url,
        admin_token="test-admin-" + secrets.token_urlsafe(24),
        billing_settlement_enabled=False,
        log_format="text",
        **secrets_settings(CALLERS),
    )


async def _shop(database_url: str, fake: FakeStripe, **stripe_settings: Any) -> AsyncIterator[Shop]:
    billing = BillingServer(_billing_settings(database_url))
    await billing.start()
    settings = GatewaySettings(
        billing_address=billing.settings.billing_listen,
        public_base_url=BASE,
        **secrets_settings(CALLERS),
        **stripe_settings,
    )
    app = FastAPI()
    install_payments(app, settings)
    install_portal(app, settings)
    shop = Shop(app, billing, fake)
    context: PortalContext = app.state.portal
    context.mailer.send_sign_in_link = lambda to, url, minutes: shop.mails.append((to, url))  # type: ignore[method-assign]
    yield shop
    payments: PaymentsContext = app.state.payments
    await payments.close()
    await context.client.close()
    await billing.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
        return
    why_not = postgres.reachable()
    if why_not is not None:
        pytest.skip(why_not)
    # Made and dropped on a thread of its own: this may run while the test's event loop does.
    database = postgres.TemporaryDatabase()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(database.__enter__).result()
        try:
            yield database.sqlalchemy_url
        finally:
            pool.submit(database.__exit__, None, None, None).result()


@pytest.fixture
async def shop(database_url: str, fake_stripe: FakeStripe) -> AsyncIterator[Shop]:
    async for shop in _shop(
        database_url,
        fake_stripe,
        stripe_secret_key=fake_stripe.secret_key,
        stripe_webhook_secret=fake_stripe.webhook_secret,
        stripe_api_base=fake_stripe.url,
    ):
        yield shop


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_packs_are_public_and_in_the_openapi_document(shop: Shop) -> None:
    async with shop.client() as client:
        reply = await client.get("/api/credit-packs")
        assert reply.status_code == 200
        packs = reply.json()["packs"]
        assert packs[0] == {
            "id": "starter",
            "name": "Starter",
            "credits": 500,
            "price": {"amount": 500, "currency": "usd"},
        }
        assert "/api/credit-packs" in shop.app.openapi()["paths"]


async def test_buy_pay_and_the_grant_happens_once_whatever_the_deliveries(shop: Shop) -> None:
    account = await shop.create_account("buyer@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "buyer@example.test")
        page = await client.get("/account/credits")
        assert "Standard" in page.text and "0.80 USD" in page.text  # 20.00 USD for 2,500: per 100 credits
        assert f"form-action 'self' {shop.stripe.url}" in page.headers["content-security-policy"]
        session_id = await shop.checkout(client)
        sent = shop.stripe.session(session_id).params
        assert sent["mode"] == "payment" and sent["client_reference_id"] == account
        assert sent["metadata"]["pack_id"] == "standard"
        assert sent["success_url"] == f"{BASE}/account/credits/success?session_id={{CHECKOUT_SESSION_ID}}"
        processing = await client.get(f"/account/credits/success?session_id={session_id}")
        assert "Processing" in processing.text and "purchase.js" in processing.text

        shop.stripe.pay(session_id)
        completed = event("checkout.session.completed", shop.stripe.session_object(session_id))
        first = await shop.deliver(client, completed)
        assert first.status_code == 200 and first.json()["outcome"] == "granted"
        assert await shop.credits(account) == 2500  # committed before the 2xx
        # the same event replayed 10 times, then 10 deliveries at once, then the async success event
        for _ in range(10):
            assert (await shop.deliver(client, completed)).json()["outcome"] == "duplicate"
        concurrent = await asyncio.gather(*(shop.deliver(client, completed) for _ in range(10)))
        assert {r.status_code for r in concurrent} == {200}
        succeeded = event("checkout.session.async_payment_succeeded", shop.stripe.session_object(session_id))
        assert (await shop.deliver(client, succeeded)).json()["outcome"] == "duplicate"
        assert await shop.credits(account) == 2500
        purchases = [
            e for e in await shop.ledger(account) if e.kind == resources_pb2.LedgerEntry.KIND_PURCHASE
        ]
        assert len(purchases) == 1
        payment_intent = shop.stripe.session(session_id).payment_intent
        assert payment_intent is not None
        assert session_id in purchases[0].note and payment_intent in purchases[0].note

        done = await client.get(f"/account/credits/success?session_id={session_id}")
        assert "2,500 credits were added" in done.text and "purchase.js" not in done.text
        status = await client.get(f"/account/credits/purchases/{session_id}")
        assert status.json() == {"state": "paid", "credits": 2500}
        usage = await client.get("/account/usage")
        assert "Purchase" in usage.text and session_id in usage.text


async def test_concurrent_first_deliveries_grant_once(shop: Shop) -> None:
    account = await shop.create_account("rush@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "rush@example.test")
        session_id = await shop.checkout(client, "starter")
        shop.stripe.pay(session_id)
        completed = event("checkout.session.completed", shop.stripe.session_object(session_id))
        succeeded = event("checkout.session.async_payment_succeeded", shop.stripe.session_object(session_id))
        replies = await asyncio.gather(*(shop.deliver(client, p) for p in [completed, succeeded] * 5))
    assert [r.json()["outcome"] for r in replies].count("granted") == 1
    assert await shop.credits(account) == 500


async def test_unpaid_grants_nothing_until_the_async_payment_succeeds(shop: Shop) -> None:
    account = await shop.create_account("slow@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "slow@example.test")
        session_id = await shop.checkout(client, "starter")
        shop.stripe.pay(session_id, paid=False)  # a bank debit: completed but not paid yet
        completed = event("checkout.session.completed", shop.stripe.session_object(session_id))
        # even an event that claims "paid" is only a hint: Stripe's own answer decides
        lying = event(
            "checkout.session.completed", {**shop.stripe.session_object(session_id), "payment_status": "paid"}
        )
        for payload in (completed, lying):
            assert (await shop.deliver(client, payload)).json()["outcome"] == "not_paid"
        assert await shop.credits(account) == 0
        shop.stripe.pay(session_id)
        succeeded = event("checkout.session.async_payment_succeeded", shop.stripe.session_object(session_id))
        assert (await shop.deliver(client, succeeded)).json()["outcome"] == "granted"
        assert await shop.credits(account) == 500


async def test_failed_and_expired_sessions_close_the_pending_purchase(shop: Shop) -> None:
    await shop.create_account("gone@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "gone@example.test")
        failed = await shop.checkout(client, "starter")
        expired = await shop.checkout(client, "starter")
        await shop.deliver(
            client, event("checkout.session.async_payment_failed", shop.stripe.session_object(failed))
        )
        await shop.deliver(client, event("checkout.session.expired", shop.stripe.session_object(expired)))
        assert (await client.get(f"/account/credits/purchases/{failed}")).json()["state"] == "failed"
        assert (await client.get(f"/account/credits/purchases/{expired}")).json()["state"] == "expired"


@pytest.mark.parametrize(
    "headers",
    [
        {"Stripe-Signature": "t=1,v1=00"},  # bad signature
        {
            "Stripe-Signature": sign(b"{}", DEFAULT_WEBHOOK_SECRET, int(time.time()) - 301)
        },  # old (other body too)
        {},  # missing
    ],
)
async def test_bad_signatures_are_400_and_change_nothing(shop: Shop, headers: dict[str, str]) -> None:
    account = await shop.create_account("mallory@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "mallory@example.test")
        session_id = await shop.checkout(client, "starter")
        shop.stripe.pay(session_id)
        payload = event("checkout.session.completed", shop.stripe.session_object(session_id))
        before = _metric("imagegen_gateway_stripe_webhook_failures_total", reason="signature")
        variants = [
            {"Stripe-Signature": sign(payload, DEFAULT_WEBHOOK_SECRET, int(time.time()) - 301)},  # too old
            {"Stripe-Signature": sign(payload, "whsec_not_ours")},  # wrong secret
            headers,
        ]
        for variant in variants:
            reply = await client.post("/webhooks/stripe", content=payload, headers=variant)
            assert reply.status_code == 400
        assert _metric("imagegen_gateway_stripe_webhook_failures_total", reason="signature") == before + 3
        assert await shop.credits(account) == 0
        assert (await client.get(f"/account/credits/purchases/{session_id}")).json()["state"] == "pending"


async def test_refunds_and_disputes_take_back_and_the_ledger_says_why(shop: Shop) -> None:
    account = await shop.create_account("refund@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "refund@example.test")
        session_id = await shop.checkout(client, "standard")  # 2,500 credits for 20.00 USD
        shop.stripe.pay(session_id)
        await shop.deliver(
            client, event("checkout.session.completed", shop.stripe.session_object(session_id))
        )
        half = event("charge.refunded", shop.stripe.charge(session_id, amount_refunded=1000))
        for _ in range(3):
            assert (await shop.deliver(client, half)).status_code == 200
        assert await shop.credits(account) == 1250
        dispute = shop.stripe.dispute(session_id, amount=1000)
        opened = await shop.deliver(client, event("charge.dispute.created", dispute))
        assert opened.json()["outcome"] == "taken_back"
        assert await shop.credits(account) == 0
        won = await shop.deliver(client, event("charge.dispute.closed", {**dispute, "status": "won"}))
        assert won.json()["outcome"] == "given_back"
        assert await shop.credits(account) == 1250
        full = event("charge.refunded", shop.stripe.charge(session_id, amount_refunded=2000))
        await shop.deliver(client, full)
        assert await shop.credits(account) == 0
        kinds = [(e.kind, e.amount) for e in await shop.ledger(account)]
        assert kinds[:5] == [
            (resources_pb2.LedgerEntry.KIND_REFUND, -1250),
            (resources_pb2.LedgerEntry.KIND_DISPUTE_REVERSAL, 1250),
            (resources_pb2.LedgerEntry.KIND_DISPUTE, -1250),
            (resources_pb2.LedgerEntry.KIND_REFUND, -1250),
            (resources_pb2.LedgerEntry.KIND_PURCHASE, 2500),
        ]
        usage = await client.get("/account/usage")
        assert "Refund" in usage.text and "Dispute" in usage.text and dispute["id"] in usage.text


async def test_unknown_account_pack_or_payment_is_logged_200_and_alerted(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    account = await shop.create_account("ghost@example.test")
    async with shop.client() as client:
        await shop.sign_in(client, "ghost@example.test")
        before = _metric("imagegen_gateway_stripe_webhook_failures_total", reason="unfulfillable")
        # sessions made outside the portal (no pending purchase): the session names an unknown account
        # or pack
        for reference, pack in (("acc_nobody", "starter"), (account, "no-such-pack")):
            made = await _outside_session(shop.stripe, reference, pack)
            shop.stripe.pay(made)
            reply = await shop.deliver(
                client, event("checkout.session.completed", shop.stripe.session_object(made))
            )
            assert reply.status_code == 200 and reply.json()["outcome"] == "unfulfillable"
        refund = {
            "id": "ch_unknown",
            "object": "charge",
            "amount": 500,
            "amount_refunded": 500,
            "payment_intent": "pi_unknown",
        }
        assert (await shop.deliver(client, event("charge.refunded", refund))).json()[
            "outcome"
        ] == "unfulfillable"
        assert _metric("imagegen_gateway_stripe_webhook_failures_total", reason="unfulfillable") == before + 3
        assert await shop.credits(account) == 0
        assert "could not be fulfilled" in caplog.text
        other = await shop.deliver(client, event("customer.created", {"id": "cus_1", "object": "customer"}))
        assert other.status_code == 200 and other.json()["outcome"] == "ignored"


async def _outside_session(fake: FakeStripe, reference: str, pack: str) -> str:
    async with httpx.AsyncClient(
        base_url=fake.url, headers={"Authorization": f"Bearer {fake.secret_key}"}
    ) as http:
        reply = await http.post(
            "/v1/checkout/sessions",
            data={
                "mode": "payment",
                "client_reference_id": reference,
                "metadata[pack_id]": pack,
                "line_items[0][price_data][unit_amount]": "500",
                "line_items[0][price_data][currency]": "usd",
                "line_items[0][quantity]": "1",
                "success_url": "http://x.test/",
            },
        )
    return str(reply.json()["id"])


async def test_without_a_secret_key_the_page_says_payments_are_not_configured(
    tmp_path: Path, fake_stripe: FakeStripe
) -> None:
    async for shop in _shop(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", fake_stripe):
        await shop.create_account("plain@example.test")
        async with shop.client() as client:
            await shop.sign_in(client, "plain@example.test")
            page = await client.get("/account/credits")
            assert "Payments are not configured" in page.text and "imagegen admin credits grant" in page.text
            assert "/account/credits/checkout" not in page.text
            assert "form-action 'self';" in page.headers["content-security-policy"] + ";"
            assert (await client.get("/api/credit-packs")).status_code == 200
