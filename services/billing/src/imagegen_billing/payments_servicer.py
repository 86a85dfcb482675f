"""``imagegen.payments.v1.PaymentsService``: credit packs and their purchases (payments.py), for the
gateway, which talks to Stripe."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from imagegen.payments.v1 import payments_service_pb2 as pb
from imagegen.payments.v1 import payments_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.config import BillingSettings
from imagegen_billing.db import Database
from imagegen_billing.domain import InvalidArgumentError
from imagegen_billing.payment_rules import Purchase, PurchaseState
from imagegen_billing.payments import Payments
from imagegen_common.credit_packs import CreditPack, load_credit_packs

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Context = grpc.aio.ServicerContext[object, object]

log = logging.getLogger(__name__)

PAYMENTS_SERVICE = pb.DESCRIPTOR.services_by_name["PaymentsService"].full_name
_STATES = {
    PurchaseState.PENDING: pb.Purchase.STATE_PENDING,
    PurchaseState.PAID: pb.Purchase.STATE_PAID,
    PurchaseState.FAILED: pb.Purchase.STATE_FAILED,
    PurchaseState.EXPIRED: pb.Purchase.STATE_EXPIRED,
}
_STATES_BY_NUMBER = {number: state for state, number in _STATES.items()}


def make_payments_servicer(settings: BillingSettings, db: Database) -> PaymentsServicer:
    return PaymentsServicer(Payments(db, load_credit_packs(settings.credit_packs_path)))


def credit_pack(value: CreditPack) -> pb.CreditPack:
    return pb.CreditPack(
        id=value.id,
        name=value.name,
        credits=value.credits,
        price=pb.Money(amount=value.amount, currency=value.currency),
        stripe_price_id=value.stripe_price_id,
    )


def purchase(value: Purchase) -> pb.Purchase:
    message = pb.Purchase(
        checkout_session_id=value.checkout_session_id,
        account_id=value.account_id,
        pack_id=value.pack_id,
        credits=value.credits,
        price=pb.Money(amount=value.amount, currency=value.currency),
        state=_STATES[value.state],
        payment_intent_id=value.payment_intent_id,
        credits_taken_back=value.credits_taken_back,
        flagged=value.flagged,
        create_time=convert.timestamp(value.create_time),
        paid_time=convert.timestamp(value.paid_time),
    )
    return message


class PaymentsServicer(payments_service_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    async def ListCreditPacks(
        self, request: pb.ListCreditPacksRequest, context: Context
    ) -> pb.ListCreditPacksResponse:
        return pb.ListCreditPacksResponse(packs=[credit_pack(p) for p in self.payments.packs.packs])

    async def RecordCheckoutSession(
        self, request: pb.RecordCheckoutSessionRequest, context: Context
    ) -> pb.RecordCheckoutSessionResponse:
        found = await self.payments.record_checkout_session(
            request.checkout_session_id, request.account_id, request.pack_id
        )
        return pb.RecordCheckoutSessionResponse(purchase=purchase(found))

    async def FulfillCheckoutSession(
        self, request: pb.FulfillCheckoutSessionRequest, context: Context
    ) -> pb.FulfillCheckoutSessionResponse:
        done = await self.payments.fulfil(
            request.checkout_session_id, request.account_id, request.pack_id, request.payment_intent_id
        )
        response = pb.FulfillCheckoutSessionResponse(
            purchase=purchase(done.purchase), granted=done.granted, credits=done.credits
        )
        if done.entry is not None:
            response.entry.CopyFrom(convert.ledger_entry(done.entry))
        return response

    async def ClosePurchase(
        self, request: pb.ClosePurchaseRequest, context: Context
    ) -> pb.ClosePurchaseResponse:
        state = _STATES_BY_NUMBER.get(request.state)
        if state is None:
            raise InvalidArgumentError("state must be STATE_FAILED or STATE_EXPIRED", field="state")
        closed = await self.payments.close(request.checkout_session_id, state)
        return pb.ClosePurchaseResponse(purchase=purchase(closed) if closed is not None else None)

    async def RecordRefund(
        self, request: pb.RecordRefundRequest, context: Context
    ) -> pb.RecordRefundResponse:
        result = await self.payments.refund(
            request.charge_id, request.payment_intent_id, request.amount_refunded
        )
        response = pb.RecordRefundResponse(purchase=purchase(result.purchase))
        if result.entry is not None:
            response.entry.CopyFrom(convert.ledger_entry(result.entry))
        return response

    async def RecordDispute(
        self, request: pb.RecordDisputeRequest, context: Context
    ) -> pb.RecordDisputeResponse:
        if request.outcome not in (
            pb.RecordDisputeRequest.OUTCOME_OPENED,
            pb.RecordDisputeRequest.OUTCOME_WON,
        ):
            raise InvalidArgumentError("outcome must be OUTCOME_OPENED or OUTCOME_WON", field="outcome")
        result = await self.payments.dispute(
            request.dispute_id,
            request.charge_id,
            request.payment_intent_id,
            request.amount,
            won=request.outcome == pb.RecordDisputeRequest.OUTCOME_WON,
        )
        response = pb.RecordDisputeResponse(purchase=purchase(result.purchase))
        if result.entry is not None:
            response.entry.CopyFrom(convert.ledger_entry(result.entry))
        return response

    async def GetPurchase(self, request: pb.GetPurchaseRequest, context: Context) -> pb.GetPurchaseResponse:
        found = await self.payments.purchase(request.checkout_session_id, request.account_id)
        return pb.GetPurchaseResponse(
            purchase=purchase(found), credits=await self.payments.credits(found.account_id)
        )
