"""Names of every NATS subject, stream, consumer and bucket, defined once for all services.

Data flows one way: gateway -> jobs stream -> generator -> reply subject (gateway) and events stream
(billing, webhooks).
"""

from __future__ import annotations

from datetime import timedelta

from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

#: Client names of the services' NATS connections (``messaging.connect(…, name=…)``), so that the
#: server's connection list tells them apart.
BILLING_CLIENT = "imagegen-billing"
GENERATOR_CLIENT = "imagegen-generator"
GATEWAY_CLIENT = "imagegen-gateway"

#: Work queue of generation jobs (GenerationJob); each message is taken by one generator.
JOBS_STREAM = "IMAGEGEN_JOBS"
JOBS_SUBJECT = "imagegen.jobs.generate"
#: The one durable pull consumer that every generator replica shares.
GENERATOR_CONSUMER = "generators"

#: Durable events: job outcomes (JobOutcome) and starts (JobStarted).
EVENTS_STREAM = "IMAGEGEN_EVENTS"
EVENTS_SUBJECTS = "imagegen.events.>"
OUTCOME_SUBJECT = "imagegen.events.job.outcome"
STARTED_SUBJECT = "imagegen.events.job.started"
#: Billing's durable consumer of outcomes: capture on success, release on failure.
BILLING_SETTLEMENT_CONSUMER = "billing-settlement"
#: The gateways' shared durable consumer of outcomes: posts each REST job's outcome to its webhook.
WEBHOOKS_CONSUMER = "webhooks"

#: Core NATS broadcast of CancelJob to every generator replica.
CANCEL_SUBJECT = "imagegen.jobs.cancel"
#: KV bucket of cancelled job ids, so that a job cancelled while queued is never started.
CANCELLED_JOBS_BUCKET = "imagegen_cancelled_jobs"

#: KV bucket where each live generator replica announces itself (key: replica id, value: JSON with
#: its "provider"); entries expire unless refreshed, so the bucket lists the replicas alive now.
GENERATORS_BUCKET = "imagegen_generators"
GENERATOR_ANNOUNCE_TTL = timedelta(seconds=30)

#: Object store bucket of generated images.
IMAGES_BUCKET = "imagegen_images"

#: KV bucket of REST idempotency keys (key: account and key hash; value: the claim or the first answer).
IDEMPOTENCY_BUCKET = "imagegen_idempotency"
IDEMPOTENCY_TTL = timedelta(hours=24)

#: KV bucket of REST rate-limit counters (key: token id and window), shared by every gateway replica.
RATE_LIMITS_BUCKET = "imagegen_rate_limits"
RATE_LIMIT_WINDOW = timedelta(minutes=1)

#: Core NATS broadcast of credential revocations (``imagegen_common.revocations``), published by
#: billing when a token is revoked or an account disabled: every gateway drops the credential from
#: its auth cache at once (the cache's lifetime stays the bound when a message is missed).
REVOCATIONS_SUBJECT = "imagegen.auth.revoked"

#: Prefix of reply subjects: imagegen.replies.<gateway instance>.<job id>
REPLY_PREFIX = "imagegen.replies"

#: JetStream advisory published when a job exhausted its deliveries.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{GENERATOR_CONSUMER}"

EVENTS_MAX_AGE = timedelta(days=7)
JOBS_MAX_AGE = timedelta(days=1)


def reply_subject(instance: str, job_id: str) -> str:
    return f"{REPLY_PREFIX}.{instance}.{job_id}"


def reply_wildcard(instance: str) -> str:
    return f"{REPLY_PREFIX}.{instance}.*"


def jobs_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=JOBS_STREAM,
        subjects=[JOBS_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=JOBS_MAX_AGE.total_seconds(),
        duplicate_window=timedelta(minutes=10).total_seconds(),
        discard=DiscardPolicy.OLD,
    )


def events_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=EVENTS_MAX_AGE.total_seconds(),
        duplicate_window=timedelta(minutes=10).total_seconds(),
    )


def cancelled_jobs_kv_config(replicas: int = 1) -> KeyValueConfig:
    """Keys are job ids; an entry outlives any job that could still be queued."""
    return KeyValueConfig(
        bucket=CANCELLED_JOBS_BUCKET,
        history=1,
        ttl=JOBS_MAX_AGE.total_seconds(),
        replicas=replicas,
        storage=StorageType.FILE,
    )


def generators_kv_config(replicas: int = 1) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=GENERATORS_BUCKET,
        history=1,
        ttl=GENERATOR_ANNOUNCE_TTL.total_seconds(),
        replicas=replicas,
        storage=StorageType.MEMORY,
    )


def idempotency_kv_config(replicas: int = 1) -> KeyValueConfig:
    """Entries live 24 hours from their last write: a key can be replayed for a day."""
    return KeyValueConfig(
        bucket=IDEMPOTENCY_BUCKET,
        history=1,
        ttl=IDEMPOTENCY_TTL.total_seconds(),
        replicas=replicas,
        storage=StorageType.FILE,
        max_value_size=256 * 1024,
    )


def rate_limits_kv_config(replicas: int = 1) -> KeyValueConfig:
    """One counter per token and window; a counter outlives its window a little, then goes."""
    return KeyValueConfig(
        bucket=RATE_LIMITS_BUCKET,
        history=1,
        ttl=2 * RATE_LIMIT_WINDOW.total_seconds(),
        replicas=replicas,
        storage=StorageType.MEMORY,
    )
