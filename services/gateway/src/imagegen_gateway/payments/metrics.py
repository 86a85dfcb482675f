"""Metrics of Stripe payments at the gateway (names listed in docs/architecture.md)."""

from __future__ import annotations

from prometheus_client import Counter

#: Event types the webhook acts on; any other is counted as "other" (a bounded label set).
HANDLED_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
)

WEBHOOK_EVENTS = Counter(
    "imagegen_gateway_stripe_webhook_events_total",
    "Verified Stripe webhook events, by type (other for types we ignore) and outcome.",
    ["type", "outcome"],
)
WEBHOOK_FAILURES = Counter(
    "imagegen_gateway_stripe_webhook_failures_total",
    "Stripe webhooks that failed: signature (refused, 400), unfulfillable (unknown account, pack or "
    "payment: logged, 200), upstream (Stripe or billing unreachable: 503, Stripe retries).",
    ["reason"],
)
CHECKOUTS = Counter(
    "imagegen_gateway_stripe_checkouts_total", "Checkout Sessions the portal started, by result.", ["result"]
)


def event_handled(event_type: str, outcome: str) -> None:
    WEBHOOK_EVENTS.labels(event_type if event_type in HANDLED_EVENTS else "other", outcome).inc()
