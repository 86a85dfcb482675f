"""The jobs consumer: pulls from the durable consumer ``generators`` that every replica shares, runs
each job, publishes its outcome, then acks.

A replica asks for exactly as many jobs as it has free slots (``imagegen_common.messaging.SlotPuller``,
which says why not faststream's ``PullSub``), extends the ack wait of the jobs it works on, and hands
back (nak) whatever it does not finish when it stops.

Acks: a job is acked after its outcome is published; a retryable failure with deliveries left is
nak'ed with a delay; a replica that dies leaves its jobs unacked, so NATS redelivers them after the
ack wait; a job whose last delivery died with its replica is failed from the max-deliveries advisory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names, tracing
from imagegen_common.messaging import SlotPuller
from imagegen_generator import metrics
from imagegen_generator.errors import InternalError
from imagegen_generator.messaging import NatsJobEvents
from imagegen_generator.worker import Finished, JobRunner, failure_outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    concurrency: int = 4
    ack_wait_seconds: float = 10.0  # see GeneratorSettings.generator_ack_wait_seconds
    max_deliver: int = 3
    fetch_timeout_seconds: float = 1.0


def consumer_config(options: ConsumerOptions) -> ConsumerConfig:
    """The shared durable pull consumer of the jobs stream."""
    return ConsumerConfig(
        durable_name=nats_names.GENERATOR_CONSUMER,
        description="imagegen generator replicas (shared work queue)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=options.ack_wait_seconds,
        max_deliver=options.max_deliver,
        filter_subject=nats_names.JOBS_SUBJECT,
        max_ack_pending=-1,
    )


@dataclass(slots=True)
class _Running:
    job_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


class JobConsumer:
    def __init__(
        self, js: JetStreamContext, runner: JobRunner, events: NatsJobEvents, options: ConsumerOptions
    ) -> None:
        self._js = js
        self._runner = runner
        self._events = events
        self._options = options
        self._running: dict[str, _Running] = {}
        self._sub: JetStreamContext.PullSubscription | None = None
        self._puller: SlotPuller | None = None

    async def start(self) -> None:
        """Creates (or updates) the shared consumer, binds to it and starts pulling."""
        await self._js.add_consumer(nats_names.JOBS_STREAM, consumer_config(self._options))
        self._sub = await self._js.pull_subscribe_bind(
            durable=nats_names.GENERATOR_CONSUMER, stream=nats_names.JOBS_STREAM
        )
        self._puller = SlotPuller(
            self._sub,
            self._handle_delivery,
            concurrency=self._options.concurrency,
            fetch_timeout=self._options.fetch_timeout_seconds,
            name="generator-pull-loop",
        )
        self._puller.start()

    def cancel(self, job_id: str) -> bool:
        """Stops the job if this replica runs it; returns whether it did."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.cancel.set()
        return True

    async def stop(self, drain_timeout: float) -> None:
        """Stops pulling, lets jobs in flight finish for up to drain_timeout, then hands back the rest."""
        if self._puller is not None:
            if self._puller.in_flight:
                log.info(
                    "draining jobs in flight",
                    extra={"jobs": self._puller.in_flight, "timeout_seconds": drain_timeout},
                )
            handed_back = await self._puller.stop(drain_timeout)  # a cancelled handler naks its job
            if handed_back:
                log.warning("handed back unfinished jobs", extra={"jobs": handed_back})
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @tracing.consuming("generator.job")  # continues the trace of the gateway that published the job
    async def _handle_delivery(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1
        if attempt > 1:
            metrics.REDELIVERIES.inc()
        try:
            job = jobs_pb2.GenerationJob.FromString(msg.data)
        except DecodeError:
            job = jobs_pb2.GenerationJob()
        if not job.job_id:
            log.error(
                "dropping a message that is not a GenerationJob",
                extra={"sequence": msg.metadata.sequence.stream},
            )
            await msg.term()
            return
        tracing.set_attributes(
            {"imagegen.job_id": job.job_id, "imagegen.model": job.model, "imagegen.attempt": attempt}
        )
        if job.job_id in self._running:
            # Our run of it goes on: NATS handed the job out again because the run's heartbeat came
            # late (a busy event loop). Running it twice would pay the provider twice and store
            # another image behind the same URL; the run's own ack or nak settles the message (JetStream
            # takes either delivery's), and this delivery only restarts the ack wait.
            log.warning(
                "job handed out again while this replica runs it: left to that run",
                extra={"job_id": job.job_id, "attempt": attempt},
            )
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
            return
        running = _Running(job.job_id)
        self._running[job.job_id] = running
        metrics.IN_FLIGHT.inc()
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            decision = await self._runner.run(job, attempt, self._options.max_deliver, running.cancel)
            if isinstance(decision, Finished):
                await self._events.outcome(decision.outcome, job.reply_subject)
                await msg.ack()
            else:
                await msg.nak(delay=decision.delay_seconds)
        except asyncio.CancelledError:
            await _hand_back(msg)
            raise
        except Exception:
            # The outcome could not be published (NATS away?): without an ack the job comes back.
            log.exception("job outcome could not be published", extra={"job_id": job.job_id})
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._options.ack_wait_seconds / 3)
        finally:
            keep_alive.cancel()
            metrics.IN_FLIGHT.dec()
            if self._running.get(job.job_id) is running:
                del self._running[job.job_id]

    async def _keep_alive(self, msg: Msg) -> None:
        """Extends the ack wait while the job runs, so a long provider call is not redelivered."""
        interval = self._options.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def on_max_deliveries(self, advisory: bytes) -> None:
        """A job ran out of deliveries without an outcome (its last replica died): fail it, so that
        its submitter and billing hear of it, and remove it from the work queue."""
        try:
            event = json.loads(advisory)
            sequence = int(event["stream_seq"])
            deliveries = int(event.get("deliveries", self._options.max_deliver))
        except (ValueError, KeyError, TypeError):
            log.error("unreadable max-deliveries advisory")
            return
        try:
            raw = await self._js.get_msg(nats_names.JOBS_STREAM, sequence)
        except NotFoundError:
            return  # already handled
        job = jobs_pb2.GenerationJob.FromString(raw.data or b"")
        error = InternalError("The job could not be completed on our side; no credits are taken for it.")
        outcome = failure_outcome(job, deliveries, error, time.time())
        await self._events.outcome(outcome, job.reply_subject)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(nats_names.JOBS_STREAM, sequence)
        log.warning(
            "job failed after its last delivery was lost",
            extra={"job_id": job.job_id, "deliveries": deliveries},
        )

    async def pending(self) -> int:
        info = await self._js.consumer_info(
            nats_names.JOBS_STREAM, nats_names.GENERATOR_CONSUMER, timeout=2.0
        )
        return int(info.num_pending or 0)


async def _hand_back(msg: Msg) -> None:
    with contextlib.suppress(nats.errors.Error):
        await msg.nak()
