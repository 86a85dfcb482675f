"""The two calls the gateway makes to Stripe, through the official library's async client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import stripe

from imagegen.payments.v1 import payments_service_pb2 as pb
from imagegen_gateway.payments.settings import STRIPE_API_BASE

#: Where Stripe's hosted Checkout pages live (the portal's form-action must allow the redirect there).
STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"


class StripeUnavailable(Exception):
    """Stripe did not answer, or refused the call; the message is safe to log (no key)."""


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str
    payment_status: str
    client_reference_id: str
    pack_id: str
    payment_intent_id: str
    line_item_amounts: tuple[int, ...]


class _HttpxClient(stripe.HTTPXClient):
    """The library's httpx client, giving the form body as ``content=``: it passes bytes as ``data=``,
    which httpx 0.28 deprecates with a warning (stripe-python's HTTPXClient._get_request_args_kwargs)."""

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> list[Any]:
        args: list[Any] = super()._get_request_args_kwargs(method, url, headers, post_data)
        kwargs = args[1]
        body = kwargs.pop("data", None)
        if body:
            kwargs["content"] = body
        return args


class StripeCheckout:
    def __init__(self, secret_key: str, api_base: str = STRIPE_API_BASE, timeout: float = 10.0) -> None:
        self.api_base = api_base
        self._http = _HttpxClient(timeout=timeout, allow_sync_methods=False)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            http_client=self._http,
            max_network_retries=1,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    @property
    def checkout_origin(self) -> str:
        """The origin of the hosted checkout pages: Stripe's, or the (fake) API's own in tests."""
        if self.api_base == STRIPE_API_BASE:
            return STRIPE_CHECKOUT_ORIGIN
        parts = urlsplit(self.api_base)
        return f"{parts.scheme}://{parts.netloc}"

    async def create_session(
        self, pack: pb.CreditPack, account_id: str, success_url: str, cancel_url: str
    ) -> CheckoutSession:
        """A Checkout Session (mode payment) for one pack, linked to the account."""
        if pack.stripe_price_id:
            item: dict[str, Any] = {"price": pack.stripe_price_id, "quantity": 1}
        else:
            item = {
                "price_data": {
                    "currency": pack.price.currency,
                    "unit_amount": pack.price.amount,
                    "product_data": {"name": f"{pack.name}: {pack.credits:,} imagegen credits"},
                },
                "quantity": 1,
            }
        params: Any = {
            "mode": "payment",
            "line_items": [item],
            "client_reference_id": account_id,
            "metadata": {"pack_id": pack.id, "account_id": account_id},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        try:
            session = await self._client.v1.checkout.sessions.create_async(params)
        except stripe.StripeError as exc:
            raise StripeUnavailable(type(exc).__name__) from exc
        return _session(session)

    async def retrieve_session(self, session_id: str) -> CheckoutSession:
        try:
            session = await self._client.v1.checkout.sessions.retrieve_async(
                session_id, {"expand": ["line_items"]}
            )
        except stripe.StripeError as exc:
            raise StripeUnavailable(type(exc).__name__) from exc
        return _session(session)


def _session(session: stripe.checkout.Session) -> CheckoutSession:
    metadata: Any = session.metadata or {}
    line_items = getattr(session, "line_items", None)  # only when expanded
    amounts = tuple(int(i.amount_total or 0) for i in (line_items.data if line_items else []))
    payment_intent = session.payment_intent
    if payment_intent is not None and not isinstance(payment_intent, str):
        payment_intent = payment_intent.id
    return CheckoutSession(
        id=session.id,
        url=session.url or "",
        payment_status=session.payment_status or "",
        client_reference_id=session.client_reference_id or "",
        pack_id=str(metadata["pack_id"]) if "pack_id" in metadata else "",
        payment_intent_id=payment_intent or "",
        line_item_amounts=amounts,
    )
