"""The fake Stripe answers the official ``stripe`` client, and its signatures verify with the library."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import stripe

from imagegen_testing.fake_stripe import FakeStripe, event, sign


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as running:
        yield running


def test_the_stripe_client_creates_and_retrieves_sessions(fake: FakeStripe) -> None:
    client = stripe.StripeClient(fake.secret_key, base_addresses={"api": fake.url})
    created = client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "client_reference_id": "acc_1",
            "metadata": {"pack_id": "starter"},
            "line_items": [
                {
                    "price_data": {"currency": "usd", "unit_amount": 500, "product_data": {"name": "S"}},
                    "quantity": 1,
                }
            ],
            "success_url": "http://x.test/ok?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://x.test/no",
        }
    )
    assert created.id.startswith("cs_test_") and created.url == f"{fake.url}/checkout/{created.id}"
    assert created.payment_status == "unpaid"
    fake.pay(created.id)
    got = client.v1.checkout.sessions.retrieve(created.id, {"expand": ["line_items"]})
    assert got.payment_status == "paid" and got.client_reference_id == "acc_1"
    assert got.metadata is not None and got.metadata["pack_id"] == "starter"
    assert got.line_items is not None and got.line_items.data[0].amount_total == 500
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("sk_test_wrong", base_addresses={"api": fake.url}).v1.checkout.sessions.retrieve(
            created.id
        )


def test_events_are_signed_with_stripes_scheme() -> None:
    payload = event("checkout.session.completed", {"id": "cs_test_1", "object": "checkout.session"})
    verified = stripe.Webhook.construct_event(payload, sign(payload, "whsec_x"), "whsec_x")
    assert (
        verified.type == "checkout.session.completed"
        and json.loads(payload)["data"]["object"]["id"] == "cs_test_1"
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, sign(payload, "whsec_x", int(time.time()) - 301), "whsec_x")
