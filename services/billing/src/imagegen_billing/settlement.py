"""Settlement: billing's durable JetStream consumer of job events.

An outcome with an image captures the job's reservation; one with a failure releases it; both keep
the job's result with the reservation. A start records when a generator took the job. Everything is
idempotent on the job id, and a message is acked only after its transaction committed, so a
redelivered or duplicated event settles once. Billing starts without NATS and connects when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC

import nats.errors
from faststream.exceptions import NackMessage, RejectMessage
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from google.protobuf.message import DecodeError
from nats.aio.client import Client

from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing import convert, metrics
from imagegen_billing.domain import InvalidArgumentError, JobError, JobResult, SettleOutcome, shown
from imagegen_billing.ledger import Ledger
from imagegen_billing.store import now
from imagegen_common import nats_names
from imagegen_common.jetstream import ensure_stream
from imagegen_common.settings import server_list

log = logging.getLogger(__name__)

#: Events fetched per pull request.
FETCH_BATCH = 32
_RETRY_MAX_SECONDS = 30.0


def failure_code(failure: jobs_pb2.JobFailure) -> JobError:
    """The domain error of a failure (UNSPECIFIED for a code newer than this build)."""
    return convert.job_error(failure.code)


def outcome_result(outcome: jobs_pb2.JobOutcome) -> JobResult:
    """What billing keeps of an outcome with the reservation: the one conversion of a JobOutcome.

    Raises ValueError for an outcome that has neither an image nor a failure.
    """
    finish_time = outcome.finish_time.ToDatetime(tzinfo=UTC) if outcome.HasField("finish_time") else now()
    kind = outcome.WhichOneof("result")
    if kind == "image":
        image = outcome.image
        return JobResult(
            image_url=image.url,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            finish_time=finish_time,
        )
    if kind == "failure":
        return JobResult(
            error=failure_code(outcome.failure),
            error_message=outcome.failure.message,
            finish_time=finish_time,
        )
    raise ValueError(f"outcome of job {shown(outcome.job_id)!r} has neither an image nor a failure")


async def settle_outcome(ledger: Ledger, outcome: jobs_pb2.JobOutcome) -> SettleOutcome:
    """Settles the reservation of an outcome's job (``Ledger.settle`` decides how); returns what
    happened. Raises ValueError for an outcome that has neither an image nor a failure, or whose job
    id cannot be one."""
    result = outcome_result(outcome)
    try:
        settled = await ledger.settle(outcome.job_id, result)
    except InvalidArgumentError as error:  # a job id no reservation can have: unusable, like bad bytes
        raise ValueError(str(error)) from error
    return settled.outcome


#: Backoff of an event that could not be settled (the database is down, say): 1, 2, 4 … 60 s.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


class SettlementConsumer:
    """The consumer as a background task: ``start()`` returns at once, ``stop()`` finishes the
    events in hand and disconnects."""

    def __init__(
        self,
        ledger: Ledger,
        nats_url: str,
        stream_replicas: int = 1,
        connect_timeout_seconds: float = 5.0,
        graceful_timeout_seconds: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.stream_replicas = stream_replicas
        self.started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: Client | None = None
        self._reported_unreachable = False
        self.broker = NatsBroker(
            server_list(nats_url),
            name="imagegen-billing",
            connect_timeout=max(1, round(connect_timeout_seconds)),
            # Never give up: not at start-up (NATS may come later) and not after a disconnect.
            max_reconnect_attempts=-1,
            reconnect_time_wait=2,
            error_cb=self._on_error,
            reconnected_cb=self._on_reconnected,
            graceful_timeout=graceful_timeout_seconds,
            logger=log,
            log_level=logging.DEBUG,
        )
        self.broker.subscriber(
            nats_names.EVENTS_SUBJECTS,
            stream=JStream(nats_names.EVENTS_STREAM, declare=False),
            durable=nats_names.BILLING_SETTLEMENT_CONSUMER,
            pull_sub=PullSub(batch_size=FETCH_BATCH, timeout=5.0),
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )(self._on_message)

    async def _on_message(self, message: NatsMessage) -> None:
        subject = message.raw_message.subject
        try:
            if subject == nats_names.OUTCOME_SUBJECT:
                await self._on_outcome(jobs_pb2.JobOutcome.FromString(message.body))
            elif subject == nats_names.STARTED_SUBJECT:
                await self._on_started(jobs_pb2.JobStarted.FromString(message.body))
        except (DecodeError, ValueError) as error:
            log.warning("unusable job event dropped", extra={"subject": subject, "error": str(error)})
            raise RejectMessage() from error
        except Exception as error:  # the database is away, say: try again later, not in a tight loop
            attempt = message.raw_message.metadata.num_delivered or 1
            delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempt - 1))
            log.warning(
                "job event not settled; retrying",
                extra={"subject": subject, "error": repr(error), "delay": delay},
            )
            raise NackMessage(delay=delay) from error

    async def _on_outcome(self, outcome: jobs_pb2.JobOutcome) -> None:
        result = await settle_outcome(self.ledger, outcome)
        metrics.settlement_event(result)
        level = logging.WARNING if result in {"conflict", "unknown_job"} else logging.INFO
        log.log(level, "outcome settled", extra={"job_id": outcome.job_id, "result": result})

    async def _on_started(self, started: jobs_pb2.JobStarted) -> None:
        at = started.start_time.ToDatetime(tzinfo=UTC) if started.HasField("start_time") else now()
        if not await self.ledger.mark_started(started.job_id, at):
            log.debug("start of a job without reservation", extra={"job_id": started.job_id})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="settlement-consumer")

    async def _run(self) -> None:
        connection = self._connection = await self.broker.connect()
        self._reported_unreachable = False
        delay = 1.0
        while True:
            try:
                await ensure_stream(
                    connection.jetstream(), nats_names.events_stream_config(self.stream_replicas)
                )
                await self.broker.start()
                break
            except Exception as error:  # JetStream not ready yet, a timeout…: try again
                log.warning("settlement consumer not started, retrying", extra={"error": repr(error)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
        self.started.set()
        log.info("settlement consumer started", extra={"consumer": nats_names.BILLING_SETTLEMENT_CONSUMER})

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.broker.stop()  # finishes the events in hand, then drains the connection
        except nats.errors.Error:
            # NATS is away: there is nothing to drain, but the client must stop reconnecting.
            if self._connection is not None:
                await self._connection.close()

    async def _on_error(self, error: Exception) -> None:
        # nats-py reports every failed attempt; one line per outage is enough.
        if not self._reported_unreachable:
            self._reported_unreachable = True
            log.warning("NATS unreachable, retrying", extra={"error": repr(error)})

    async def _on_reconnected(self) -> None:
        self._reported_unreachable = False
        log.info("NATS reconnected")
