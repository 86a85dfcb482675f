"""Buying credits with Stripe Checkout (issue 13): ``GET /api/credit-packs``, the portal's Buy credits
and success pages, and ``POST /webhooks/stripe``. Billing's PaymentsService keeps packs, purchases
and the ledger; this package talks to Stripe with the official library.

``install_payments(app, settings)`` is the one hook into the gateway's app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from imagegen_gateway.payments import routes
from imagegen_gateway.payments.client import PaymentsClient
from imagegen_gateway.payments.stripe_api import StripeCheckout

if TYPE_CHECKING:  # config imports this package's settings
    from imagegen_gateway.config import GatewaySettings

__all__ = ["install_payments"]


def install_payments(app: FastAPI, settings: GatewaySettings) -> None:
    """Adds ``/api/credit-packs``, the portal's Buy credits pages and ``/webhooks/stripe``."""
    secret_key = settings.stripe_secret_key.get_secret_value()
    app.state.payments = routes.PaymentsContext(
        client=PaymentsClient(
            settings.billing_address,
            settings.billing_timeout_seconds,
            settings.billing_gateway_secret.get_secret_value(),
        ),
        stripe=StripeCheckout(secret_key, settings.stripe_api_base, settings.stripe_timeout_seconds)
        if secret_key
        else None,
        webhook_secret=settings.stripe_webhook_secret.get_secret_value(),
    )
    app.include_router(routes.api_router)
    app.include_router(routes.pages)
    app.include_router(routes.webhooks)
