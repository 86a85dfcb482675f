"""Billing's Prometheus metrics (names as in docs/architecture.md; labels are bounded, never an id)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from imagegen_billing.domain import ReleaseReason, SettleOutcome

RPC_REQUESTS = Counter(
    "imagegen_billing_rpc_requests_total",
    "gRPC calls billing answered, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "imagegen_billing_rpc_duration_seconds",
    "Time billing took to answer a gRPC call.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RESERVATIONS_OPEN = Gauge(
    "imagegen_billing_reservations_open",
    "Reservations held and not yet captured or released (recounted from the database by the reaper).",
)
CREDITS_RESERVED = Counter("imagegen_billing_credits_reserved_total", "Credits held by new reservations.")
CREDITS_CAPTURED = Counter("imagegen_billing_credits_captured_total", "Credits of captured reservations.")
CREDITS_RELEASED = Counter(
    "imagegen_billing_credits_released_total",
    "Credits of released reservations, by why they were released.",
    ["reason"],
)
SETTLEMENT_EVENTS = Counter(
    "imagegen_billing_settlement_events_total",
    "Job outcome events billing settled, by what they did.",
    ["result"],
)

for _reason in ReleaseReason:
    CREDITS_RELEASED.labels(reason=_reason.value)
for _outcome in SettleOutcome:
    SETTLEMENT_EVENTS.labels(result=_outcome.value)


def reserved(amount: int, count: int = 1) -> None:
    CREDITS_RESERVED.inc(amount)
    RESERVATIONS_OPEN.inc(count)


def captured(amount: int) -> None:
    CREDITS_CAPTURED.inc(amount)
    RESERVATIONS_OPEN.dec()


def released(amount: int, reason: ReleaseReason) -> None:
    CREDITS_RELEASED.labels(reason=reason.value).inc(amount)
    RESERVATIONS_OPEN.dec()


def settlement_event(result: SettleOutcome) -> None:
    SETTLEMENT_EVENTS.labels(result=result.value).inc()


# Payments (payments.py)
PURCHASES = Counter(
    "imagegen_billing_purchases_total",
    "Credit packs granted after a paid Checkout Session, by pack.",
    ["pack"],
)
CREDITS_SOLD = Counter("imagegen_billing_credits_sold_total", "Credits granted by paid credit packs.")
CREDITS_REFUNDED = Counter(
    "imagegen_billing_credits_refunded_total", "Credits taken back because their payment was refunded."
)
CREDITS_DISPUTED = Counter(
    "imagegen_billing_credits_disputed_total",
    "Credits taken back for an opened dispute (opened) or given back for a won one (won).",
    ["outcome"],
)


def purchased(pack: str, credits: int) -> None:
    PURCHASES.labels(pack).inc()
    CREDITS_SOLD.inc(credits)


def refunded(credits: int) -> None:
    CREDITS_REFUNDED.inc(credits)


def disputed(outcome: str, credits: int) -> None:
    CREDITS_DISPUTED.labels(outcome).inc(credits)
