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
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import SecretStr

from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing import convert, metrics
from imagegen_billing.domain import InvalidArgumentError, JobError, JobResult, SettleOutcome, shown
from imagegen_billing.ledger import Ledger
from imagegen_billing.store import now
from imagegen_common import nats_names, tracing
from imagegen_common.jetstream import ensure_stream
from imagegen_common.messaging import HANDLER_BACKOFF, Backoff, SlotPuller, connect, retry_forever

log = logging.getLogger(__name__)


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


#: Events settled at the same time (each is one short transaction, idempotent on its job id).
SETTLEMENT_CONCURRENCY = 4
#: How long one pull request waits for events before asking again (also how long a stop may wait for
#: the pull under way, whose events it hands back).
FETCH_TIMEOUT_SECONDS = 1.0
#: Ack wait of the durable consumer: an event whose settlement hangs this long goes to a retry.
ACK_WAIT_SECONDS = 30.0


def settlement_consumer_config() -> ConsumerConfig:
    """Billing's durable consumer of every job event (outcomes and starts)."""
    return ConsumerConfig(
        durable_name=nats_names.BILLING_SETTLEMENT_CONSUMER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        filter_subject=nats_names.EVENTS_SUBJECTS,
    )


class SettlementConsumer:
    """The consumer as a background task: ``start()`` returns at once (billing serves without NATS
    and connects when it can), ``stop()`` finishes the events in hand and hands back the rest.

    Pulls with ``messaging.SlotPuller`` (which says why not faststream's ``PullSub``); an event that
    cannot be settled now is nak'ed with ``messaging.HANDLER_BACKOFF.delay(delivery)``.
    """

    def __init__(
        self,
        ledger: Ledger,
        nats_url: str,
        stream_replicas: int = 1,
        connect_timeout_seconds: float = 5.0,
        graceful_timeout_seconds: float = 10.0,
        *,
        concurrency: int = SETTLEMENT_CONCURRENCY,
        backoff: Backoff = HANDLER_BACKOFF,
        nats_user: str = "",
        nats_password: SecretStr | str = "",
    ) -> None:
        self.ledger = ledger
        self._nats_user = nats_user
        self._nats_password = nats_password
        self.stream_replicas = stream_replicas
        self.started = asyncio.Event()
        self._nats_url = nats_url
        self._connect_timeout_seconds = connect_timeout_seconds
        self._graceful_timeout_seconds = graceful_timeout_seconds
        self._concurrency = concurrency
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._connection: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._puller: SlotPuller | None = None

    @property
    def connection(self) -> Client | None:
        """Billing's NATS connection (None until connected); revocations are broadcast on it."""
        return self._connection

    @tracing.consuming("billing.settlement")  # continues the trace of the job the event is about
    async def _on_message(self, msg: Msg) -> None:
        subject = msg.subject
        try:
            if subject == nats_names.OUTCOME_SUBJECT:
                await self._on_outcome(jobs_pb2.JobOutcome.FromString(msg.data))
            elif subject == nats_names.STARTED_SUBJECT:
                await self._on_started(jobs_pb2.JobStarted.FromString(msg.data))
        except asyncio.CancelledError:
            # Stopped past the drain timeout: hand it back, so that the next consumer settles it now.
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
            raise
        except (DecodeError, ValueError) as error:
            log.warning("unusable job event dropped", extra={"subject": subject, "error": str(error)})
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        except Exception as error:  # the database is away, say: try again later, not in a tight loop
            delay = self._backoff.delay(msg.metadata.num_delivered or 1)
            log.warning(
                "job event not settled; retrying",
                extra={"subject": subject, "error": repr(error), "delay": delay},
            )
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=delay)
            return
        # Acked only after the transaction committed; a lost ack means a redelivery, settled once.
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()

    async def _on_outcome(self, outcome: jobs_pb2.JobOutcome) -> None:
        result = await settle_outcome(self.ledger, outcome)
        tracing.set_attributes({"imagegen.job_id": outcome.job_id, "imagegen.settlement": result})
        metrics.settlement_event(result)
        level = logging.WARNING if result in {"conflict", "unknown_job"} else logging.INFO
        log.log(level, "outcome settled", extra={"job_id": outcome.job_id, "result": result})

    async def _on_started(self, started: jobs_pb2.JobStarted) -> None:
        at = started.start_time.ToDatetime(tzinfo=UTC) if started.HasField("start_time") else now()
        try:
            known = await self.ledger.mark_started(started.job_id, at)
        except InvalidArgumentError as error:  # a job id no reservation can have: unusable, like bad bytes
            raise ValueError(str(error)) from error
        if not known:
            log.debug("start of a job without reservation", extra={"job_id": started.job_id})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="settlement-consumer")

    async def _run(self) -> None:
        connection = self._connection = await connect(
            self._nats_url,
            name=nats_names.BILLING_CLIENT,
            connect_timeout_seconds=self._connect_timeout_seconds,
            user=self._nats_user,
            password=self._nats_password,
        )
        js = connection.jetstream()

        async def bind() -> JetStreamContext.PullSubscription:
            await ensure_stream(js, nats_names.events_stream_config(self.stream_replicas))
            await js.add_consumer(nats_names.EVENTS_STREAM, settlement_consumer_config())
            return await js.pull_subscribe_bind(
                durable=nats_names.BILLING_SETTLEMENT_CONSUMER, stream=nats_names.EVENTS_STREAM
            )

        # JetStream may not be ready yet (a cluster electing its leader, say): keep trying.
        self._sub = await retry_forever(bind, what="starting the settlement consumer")
        self._puller = SlotPuller(
            self._sub,
            self._on_message,
            concurrency=self._concurrency,
            fetch_timeout=FETCH_TIMEOUT_SECONDS,
            name="settlement-pull-loop",
        )
        self._puller.start()
        self.started.set()
        log.info("settlement consumer started", extra={"consumer": nats_names.BILLING_SETTLEMENT_CONSUMER})

    async def stop(self) -> None:
        """Stops pulling, lets the events in hand settle (up to the graceful timeout), hands back the
        rest (nak: redelivered at once to the next consumer) and closes the connection."""
        if self._task is not None and not self._task.done():
            self._task.cancel()  # still connecting or binding: nothing in hand
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._puller is not None:
            handed_back = await self._puller.stop(self._graceful_timeout_seconds)
            if handed_back:
                log.warning("handed back job events not settled in time", extra={"events": handed_back})
        self._puller = None
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.is_connected:
            try:
                await connection.drain()
                return
            except (nats.errors.Error, TimeoutError):
                pass
        # NATS is away: there is nothing to drain, but the client must stop reconnecting.
        await connection.close()
