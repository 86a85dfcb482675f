"""Routes of buying credits: the public pack list, the portal's Buy credits, checkout and success
pages, and Stripe's webhook. Thin: billing decides, Stripe is called through ``StripeCheckout``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any

import grpc
import stripe
from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, RedirectResponse, Response

from imagegen.payments.v1 import payments_service_pb2 as pb
from imagegen_gateway.payments import metrics
from imagegen_gateway.payments.client import PaymentsClient
from imagegen_gateway.payments.stripe_api import CheckoutSession, StripeCheckout, StripeUnavailable
from imagegen_gateway.portal import security
from imagegen_gateway.portal.context import portal_of, see_other
from imagegen_gateway.portal.routes import CsrfField, check_csrf, require_session

log = logging.getLogger(__name__)

api_router = APIRouter(prefix="/api", tags=["credits"])
pages = APIRouter(include_in_schema=False)

#: Stripe's default signature tolerance, said out loud: older events are refused.
SIGNATURE_TOLERANCE_SECONDS = 300
_SESSION_ID = r"^cs_[A-Za-z0-9_]{1,250}$"


@dataclass
class PaymentsContext:
    client: PaymentsClient
    stripe: StripeCheckout | None
    webhook_secret: str

    async def close(self) -> None:
        await self.client.close()
        if self.stripe is not None:
            await self.stripe.close()


def payments_of(request: Request) -> PaymentsContext:
    context: PaymentsContext = request.app.state.payments
    return context


# -- the public list -----------------------------------------------------------------------------


class Price(BaseModel):
    amount: int
    currency: str


class CreditPackInfo(BaseModel):
    id: str
    name: str
    credits: int
    price: Price


class CreditPacksResponse(BaseModel):
    packs: list[CreditPackInfo]


@api_router.get(
    "/credit-packs",
    response_model=CreditPacksResponse,
    operation_id="listCreditPacks",
    summary="Credit packs on sale",
    description="The credit packs the portal sells (prices in the currency's minor unit). No token needed.",
)
async def list_credit_packs(request: Request) -> CreditPacksResponse:
    reply = await payments_of(request).client.call(lambda s: s.ListCreditPacks, pb.ListCreditPacksRequest())
    return CreditPacksResponse(
        packs=[
            CreditPackInfo(
                id=p.id,
                name=p.name,
                credits=p.credits,
                price=Price(amount=p.price.amount, currency=p.price.currency),
            )
            for p in reply.packs
        ]
    )


# -- the portal's pages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackRow:
    id: str
    name: str
    credits: str
    price: str
    per_100: str


def money(amount: float, currency: str) -> str:
    """``1999, "usd"`` → ``19.99 USD`` (two-decimal currencies; what our packs use)."""
    return f"{amount / 100:,.2f} {currency.upper()}"


def pack_rows(packs: list[pb.CreditPack]) -> list[PackRow]:
    return [
        PackRow(
            id=p.id,
            name=p.name,
            credits=f"{p.credits:,}",
            price=money(p.price.amount, p.price.currency),
            per_100=money(p.price.amount * 100 / p.credits, p.price.currency),
        )
        for p in packs
    ]


@pages.get("/account/credits")
async def credits_page(request: Request, cancelled: Annotated[str, Query(max_length=8)] = "") -> Response:
    session = await require_session(request)
    payments = payments_of(request)
    reply = await payments.client.call(lambda s: s.ListCreditPacks, pb.ListCreditPacksRequest())
    account = session.account.account
    response = portal_of(request).render(
        request,
        "credits.html",
        session,
        active="credits",
        credits=account.credits,
        email=account.email,
        configured=payments.stripe is not None,
        packs=pack_rows(list(reply.packs)),
        cancelled=bool(cancelled),
    )
    if payments.stripe is not None:
        # The Buy form's 303 goes on to Stripe's hosted page: form-action covers that redirect.
        response.headers["Content-Security-Policy"] = security.CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", f"form-action 'self' {payments.stripe.checkout_origin}"
        )
    return response


@pages.post("/account/credits/checkout")
async def start_checkout(
    request: Request, csrf: CsrfField = "", pack: Annotated[str, Form(max_length=64)] = ""
) -> Response:
    check_csrf(request, csrf)
    session = await require_session(request)
    portal = portal_of(request)
    payments = payments_of(request)
    if payments.stripe is None:
        return see_other("/account/credits")
    packs = await payments.client.call(lambda s: s.ListCreditPacks, pb.ListCreditPacksRequest())
    chosen = next((p for p in packs.packs if p.id == pack), None)
    if chosen is None:
        return portal.message(request, "That did not work", "There is no such credit pack.", 400, session)
    account_id = session.account.account.id
    try:
        created = await payments.stripe.create_session(
            chosen,
            account_id,
            success_url=f"{portal.public_url}/account/credits/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{portal.public_url}/account/credits?cancelled=1",
        )
    except StripeUnavailable as exc:
        metrics.CHECKOUTS.labels("stripe_error").inc()
        log.warning("checkout session not created", extra={"error": str(exc)})
        return portal.message(
            request,
            "Please try again",
            "The payment service did not answer; try again in a moment.",
            503,
            session,
        )
    await payments.client.call(
        lambda s: s.RecordCheckoutSession,
        pb.RecordCheckoutSessionRequest(
            checkout_session_id=created.id, account_id=account_id, pack_id=chosen.id
        ),
    )
    metrics.CHECKOUTS.labels("created").inc()
    return RedirectResponse(created.url, status_code=303, headers={"Cache-Control": "no-store"})


async def _own_purchase(request: Request, session_id: str, account_id: str) -> pb.GetPurchaseResponse | None:
    try:
        return await payments_of(request).client.call(
            lambda s: s.GetPurchase,
            pb.GetPurchaseRequest(checkout_session_id=session_id, account_id=account_id),
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return None
        raise


@pages.get("/account/credits/success")
async def success_page(request: Request, session_id: Annotated[str, Query(pattern=_SESSION_ID)]) -> Response:
    session = await require_session(request)
    found = await _own_purchase(request, session_id, session.account.account.id)
    portal = portal_of(request)
    if found is None:
        return portal.message(request, "Not found", "There is no such purchase.", 404, session)
    purchase = found.purchase
    # The session's balance may predate the grant: the header shows the one billing just answered.
    session.account.account.credits = found.credits
    return portal.render(
        request,
        "purchase.html",
        session,
        active="credits",
        state=pb.Purchase.State.Name(purchase.state).removeprefix("STATE_").lower(),
        credits=f"{purchase.credits:,}",
        balance=f"{found.credits:,}",
        session_id=session_id,
    )


@pages.get("/account/credits/purchases/{session_id}")
async def purchase_status(request: Request, session_id: str) -> Response:
    """The purchase's state for the success page's script (``{"state": "paid", "credits": …}``)."""
    session = await require_session(request)
    found = await _own_purchase(request, session_id, session.account.account.id)
    if found is None:
        return JSONResponse({"state": "unknown"}, status_code=404, headers={"Cache-Control": "no-store"})
    state = pb.Purchase.State.Name(found.purchase.state).removeprefix("STATE_").lower()
    return JSONResponse({"state": state, "credits": found.credits}, headers={"Cache-Control": "no-store"})


# -- Stripe's webhook ----------------------------------------------------------------------------

webhooks = APIRouter(include_in_schema=False)


def _answer(status_code: int, outcome: str) -> JSONResponse:
    return JSONResponse({"received": status_code < 300, "outcome": outcome}, status_code=status_code)


@webhooks.post("/webhooks/stripe")
async def stripe_webhook(request: Request) -> Response:
    """Verifies the event's signature, then lets billing act on it. 400: refused (bad or missing
    signature, changes nothing); 503: Stripe or billing unreachable (Stripe retries); 200 otherwise,
    after billing committed what the event does."""
    payments = payments_of(request)
    payload = await request.body()
    if not payments.webhook_secret:
        metrics.WEBHOOK_FAILURES.labels("not_configured").inc()
        return _answer(503, "not_configured")
    try:
        stripe.Webhook.construct_event(
            payload,
            request.headers.get("stripe-signature"),
            payments.webhook_secret,
            tolerance=SIGNATURE_TOLERANCE_SECONDS,
        )
    except (ValueError, stripe.SignatureVerificationError):
        metrics.WEBHOOK_FAILURES.labels("signature").inc()
        log.warning("stripe webhook refused: bad signature or payload")
        return _answer(400, "bad_signature")
    # Verified: read it as plain JSON (the library's Event objects are not dicts).
    event: dict[str, Any] = json.loads(payload)
    event_type = str(event.get("type", ""))
    try:
        outcome = await _act(payments, event_type, event["data"]["object"])
    except StripeUnavailable as exc:
        metrics.WEBHOOK_FAILURES.labels("upstream").inc()
        log.warning("stripe webhook: Stripe unreachable", extra={"event_type": event_type, "error": str(exc)})
        return _answer(503, "stripe_unavailable")
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            # Retrying cannot help: answer 200 so Stripe stops, and alert an operator.
            metrics.WEBHOOK_FAILURES.labels("unfulfillable").inc()
            metrics.event_handled(event_type, "unfulfillable")
            log.error(
                "stripe webhook could not be fulfilled",
                extra={"event_type": event_type, "event_id": event.get("id"), "error": exc.details()},
            )
            return _answer(200, "unfulfillable")
        metrics.WEBHOOK_FAILURES.labels("upstream").inc()
        log.warning(
            "stripe webhook: billing failed", extra={"event_type": event_type, "code": exc.code().name}
        )
        return _answer(503, "billing_unavailable")
    metrics.event_handled(event_type, outcome)
    log.info(
        "stripe webhook", extra={"event_type": event_type, "event_id": event.get("id"), "outcome": outcome}
    )
    return _answer(200, outcome)


async def _act(payments: PaymentsContext, event_type: str, obj: Any) -> str:  # noqa: PLR0911 - one per event
    client = payments.client
    if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if payments.stripe is None:
            raise StripeUnavailable("no secret key configured")
        # The event is only a hint: what was paid comes from Stripe itself, what it buys from our packs.
        session: CheckoutSession = await payments.stripe.retrieve_session(str(obj["id"]))
        if session.payment_status != "paid":
            return "not_paid"
        reply = await client.call(
            lambda s: s.FulfillCheckoutSession,
            pb.FulfillCheckoutSessionRequest(
                checkout_session_id=session.id,
                account_id=session.client_reference_id,
                pack_id=session.pack_id,
                payment_intent_id=session.payment_intent_id,
            ),
        )
        return "granted" if reply.granted else "duplicate"
    if event_type in ("checkout.session.async_payment_failed", "checkout.session.expired"):
        state = pb.Purchase.STATE_FAILED if event_type.endswith("failed") else pb.Purchase.STATE_EXPIRED
        await client.call(
            lambda s: s.ClosePurchase,
            pb.ClosePurchaseRequest(checkout_session_id=str(obj["id"]), state=state),
        )
        return "closed"
    if event_type == "charge.refunded":
        refund = await client.call(
            lambda s: s.RecordRefund,
            pb.RecordRefundRequest(
                charge_id=str(obj["id"]),
                payment_intent_id=str(obj.get("payment_intent") or ""),
                amount_refunded=int(obj.get("amount_refunded") or 0),
            ),
        )
        return "taken_back" if refund.HasField("entry") else "duplicate"
    if event_type in ("charge.dispute.created", "charge.dispute.closed"):
        if event_type == "charge.dispute.closed" and obj.get("status") != "won":
            return "ignored"
        outcome = (
            pb.RecordDisputeRequest.OUTCOME_OPENED
            if event_type == "charge.dispute.created"
            else pb.RecordDisputeRequest.OUTCOME_WON
        )
        dispute = await client.call(
            lambda s: s.RecordDispute,
            pb.RecordDisputeRequest(
                dispute_id=str(obj["id"]),
                charge_id=str(obj.get("charge") or ""),
                payment_intent_id=str(obj.get("payment_intent") or ""),
                amount=int(obj.get("amount") or 0),
                outcome=outcome,
            ),
        )
        return (
            ("taken_back" if outcome == pb.RecordDisputeRequest.OUTCOME_OPENED else "given_back")
            if dispute.HasField("entry")
            else "duplicate"
        )
    return "ignored"
