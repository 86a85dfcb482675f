"""The generator's Prometheus metrics (names as in docs/architecture.md; labels are bounded)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter(
    "imagegen_generator_jobs_total",
    "Jobs finished, by model and outcome (`succeeded` or the error code).",
    ["model", "outcome"],
)
PROVIDER_DURATION = Histogram(
    "imagegen_generator_provider_duration_seconds",
    "Duration of provider calls (generation).",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
QUEUE_WAIT = Histogram(
    "imagegen_generator_queue_wait_seconds",
    "Time from a job's submission until a replica took it.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
IN_FLIGHT = Gauge("imagegen_generator_jobs_in_flight", "Jobs this replica is running.")
REDELIVERIES = Counter(
    "imagegen_generator_redeliveries_total", "Jobs received again (a previous delivery failed or was lost)."
)
PROVIDER_RETRIES = Counter(
    "imagegen_generator_provider_retries_total",
    "Provider requests retried, by reason.",
    ["reason"],
)
CONSUMER_PENDING = Gauge(
    "imagegen_generator_consumer_pending_messages", "Jobs waiting in the shared consumer `generators`."
)

# Every label value exists from the start, so that dashboards and alerts see zeros, not gaps.
for _reason in ("rate_limited", "server_error", "network"):
    PROVIDER_RETRIES.labels(reason=_reason)
