"""PaymentsService over real gRPC, and `imagegen admin ledger` showing purchases, refunds and disputes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.payments.v1 import payments_service_pb2 as pb
from imagegen.payments.v1 import payments_service_pb2_grpc
from imagegen_billing.admin_cli import app as admin_app
from imagegen_billing.config import BillingSettings
from imagegen_billing.server import BillingServer
from imagegen_testing.billing_callers import service_channel

ServerFactory = Callable[[BillingSettings], Awaitable[BillingServer]]


async def _account(server: BillingServer, channel: grpc.aio.Channel) -> str:
    token = server.settings.admin_token.get_secret_value()
    reply = await admin_service_pb2_grpc.AdminServiceStub(channel).CreateAccount(
        admin_service_pb2.CreateAccountRequest(email="payer@example.test"),
        metadata=[("authorization", f"Bearer {token}")],
    )
    return str(reply.account.id)


async def _admin(server: BillingServer, *args: str) -> Result:
    options = [
        "--billing",
        server.settings.billing_listen,
        "--admin-token",
        server.settings.admin_token.get_secret_value(),
    ]
    return await asyncio.to_thread(
        lambda: CliRunner().invoke(admin_app, [*options, *args], env={"IMAGEGEN_ADMIN_TOKEN": ""})
    )


async def test_payments_service_grants_once_and_takes_back(
    billing_server: BillingServer, channel: grpc.aio.Channel
) -> None:
    account = await _account(billing_server, channel)
    stub = payments_service_pb2_grpc.PaymentsServiceStub(channel)
    packs = await stub.ListCreditPacks(pb.ListCreditPacksRequest())
    assert [p.id for p in packs.packs] == ["starter", "standard", "large"]
    recorded = await stub.RecordCheckoutSession(
        pb.RecordCheckoutSessionRequest(checkout_session_id="cs_test_g1", account_id=account, pack_id="large")
    )
    assert recorded.purchase.state == pb.Purchase.STATE_PENDING
    request = pb.FulfillCheckoutSessionRequest(
        checkout_session_id="cs_test_g1", payment_intent_id="pi_test_g1"
    )
    first, second = await stub.FulfillCheckoutSession(request), await stub.FulfillCheckoutSession(request)
    assert (first.granted, second.granted, first.credits, second.credits) == (True, False, 10000, 10000)
    assert first.entry.id == second.entry.id
    refund = await stub.RecordRefund(
        pb.RecordRefundRequest(charge_id="ch_test_g1", payment_intent_id="pi_test_g1", amount_refunded=3500)
    )
    assert refund.entry.amount == -5000 and refund.purchase.flagged
    dispute = await stub.RecordDispute(
        pb.RecordDisputeRequest(
            dispute_id="dp_test_g1",
            charge_id="ch_test_g1",
            payment_intent_id="pi_test_g1",
            amount=7000,
            outcome=pb.RecordDisputeRequest.OUTCOME_OPENED,
        )
    )
    assert dispute.entry.amount == -10000 and dispute.entry.balance_after == -5000  # below zero
    got = await stub.GetPurchase(pb.GetPurchaseRequest(checkout_session_id="cs_test_g1", account_id=account))
    assert (got.purchase.state, got.credits, got.purchase.credits_taken_back) == (
        pb.Purchase.STATE_PAID,
        -5000,
        15000,
    )

    for bad in (
        pb.FulfillCheckoutSessionRequest(
            checkout_session_id="cs_test_g2", account_id="acc_nobody", pack_id="large"
        ),
        pb.FulfillCheckoutSessionRequest(
            checkout_session_id="cs_test_g2", account_id=account, pack_id="gold"
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.FulfillCheckoutSession(bad)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPurchase(
            pb.GetPurchaseRequest(checkout_session_id="cs_test_g1", account_id="acc_other")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FulfillCheckoutSession(
            pb.FulfillCheckoutSessionRequest(checkout_session_id="not a session")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    text = await _admin(billing_server, "ledger", account)
    assert text.exit_code == 0, text.output
    for word in ("purchase", "refund", "dispute", "cs_test_g1", "pi_test_g1", "ch_test_g1", "dp_test_g1"):
        assert word in text.stdout
    entries = json.loads((await _admin(billing_server, "--json", "ledger", account)).stdout)
    kinds = [e["kind"] for e in (entries["entries"] if isinstance(entries, dict) else entries)]
    assert kinds[:3] == ["dispute", "refund", "purchase"]


async def test_a_packs_file_replaces_the_built_in_one(
    sqlite_url: str,
    make_settings: Callable[..., BillingSettings],
    start_billing: ServerFactory,
    tmp_path: Path,
) -> None:
    packs = tmp_path / "packs.toml"
    packs.write_text(
        '[[packs]]\nid = "tiny"\nname = "Tiny"\ncredits = 10\nprice = { amount = 99, currency = "eur" }\n'
    )
    server: BillingServer = await start_billing(make_settings(sqlite_url, credit_packs_path=packs))
    async with service_channel(server.settings) as channel:
        reply = await payments_service_pb2_grpc.PaymentsServiceStub(channel).ListCreditPacks(
            pb.ListCreditPacksRequest()
        )
    assert [(p.id, p.price.amount, p.price.currency) for p in reply.packs] == [("tiny", 99, "eur")]
