"""The generator's NATS side that is not the job consumer: the events it publishes (started,
progress, outcome) and the cancelled-jobs bucket. Plain nats-py on the connection of
``imagegen_common.messaging.connect``, like every service."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names, tracing
from imagegen_generator import metrics
from imagegen_generator.errors import outcome_label

log = logging.getLogger(__name__)

#: Timeout of a JetStream publish (the server's ack).
PUBLISH_TIMEOUT_SECONDS = 5.0


class KvCancelledJobs:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def is_cancelled(self, job_id: str) -> bool:
        try:
            await self._kv.get(job_id)
        except KeyNotFoundError:  # also KeyDeletedError, its subclass: a purged mark is no mark
            return False
        return True


class NatsJobEvents:
    """Publishes what a job says: JobStarted and JobOutcome durably on the events stream, progress
    and the outcome on the job's reply subject (core NATS: only a waiting gateway cares)."""

    def __init__(self, nc: Client, known_models: frozenset[str]) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._known_models = known_models

    async def started(self, event: jobs_pb2.JobStarted) -> None:
        with tracing.producing(
            nats_names.STARTED_SUBJECT, {"Nats-Msg-Id": f"started-{event.job_id}-{event.attempt}"}
        ) as headers:
            await self._js.publish(
                nats_names.STARTED_SUBJECT,
                event.SerializeToString(),
                timeout=PUBLISH_TIMEOUT_SECONDS,
                stream=nats_names.EVENTS_STREAM,
                headers=headers,
            )

    async def progress(self, reply_subject: str, progress: jobs_pb2.JobProgress) -> None:
        await self._nc.publish(reply_subject, jobs_pb2.JobUpdate(progress=progress).SerializeToString())

    async def outcome(self, outcome: jobs_pb2.JobOutcome, reply_subject: str) -> bool:
        """Publishes the outcome; returns False when an outcome of this job was already published
        (a redelivered job), in which case the reply subject is not told again."""
        # The trace context goes with the event: billing's settlement continues the job's trace.
        with tracing.producing(
            nats_names.OUTCOME_SUBJECT, {"Nats-Msg-Id": f"outcome-{outcome.job_id}"}
        ) as headers:
            ack = await self._js.publish(
                nats_names.OUTCOME_SUBJECT,
                outcome.SerializeToString(),
                timeout=PUBLISH_TIMEOUT_SECONDS,
                stream=nats_names.EVENTS_STREAM,
                headers=headers,
            )
        if ack.duplicate:
            log.info("outcome already published", extra={"job_id": outcome.job_id})
            return False
        if reply_subject:
            await self._nc.publish(reply_subject, jobs_pb2.JobUpdate(outcome=outcome).SerializeToString())
        code = outcome.failure.code if outcome.HasField("failure") else None
        model = outcome.model if outcome.model in self._known_models else "unknown"
        metrics.JOBS.labels(model=model, outcome=outcome_label(code)).inc()
        return True
