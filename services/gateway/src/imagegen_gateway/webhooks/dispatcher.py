"""The webhook dispatcher: a durable JetStream consumer of job outcomes (``webhooks``), shared by every
gateway replica, that posts each REST job's outcome to its webhook.

For every outcome it reads the job's reservation; a job without a webhook (or whose webhook is done)
is acked at once. Otherwise it settles the job from the outcome if billing has not yet (``SettleJob``,
the same idempotent call as billing's settlement consumer: billing decides what the outcome means for
the credits, so that the webhook and ``GET /api/images/{id}`` agree), signs the image object and POSTs
it. Which of these to do is a pure function of the reservation (:func:`next_step`). Every attempt is
recorded in billing. A failed attempt is nak'ed with the next delay of the retry schedule (hours in
all); the last one, or a URL the guard refuses, ends the delivery as failed. A replica that dies
mid-delivery leaves the message unacked: another one takes it after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names, tracing
from imagegen_common.jetstream import ensure_stream
from imagegen_common.messaging import Backoff, SlotPuller
from imagegen_gateway import wire
from imagegen_gateway.domain import (
    JobResult,
    Reservation,
    ReservationState,
    Settlement,
    WebhookAttempt,
    WebhookSettings,
    WebhookState,
)
from imagegen_gateway.errors import GatewayError
from imagegen_gateway.metrics import WEBHOOK_DELIVERIES, WEBHOOK_DURATION
from imagegen_gateway.presentation import image
from imagegen_gateway.webhooks.sender import SendResult, WebhookSender
from imagegen_gateway.webhooks.signing import COMPLETED, FAILED, message_body, message_id, signed_headers

log = logging.getLogger(__name__)
#: Wait before a message whose handling failed on our side (billing unreachable) is tried again,
#: doubled for every delivery of the message, up to the maximum.
INTERNAL_RETRY = Backoff(first_seconds=5.0, max_seconds=300.0)
#: Deliveries a message may have beyond its attempts, for the failures on our side.
SPARE_DELIVERIES = 20
_FETCH_TIMEOUT_SECONDS = 1.0


def retry_delay(attempt: int, delays: Sequence[float]) -> float | None:
    """Seconds before the attempt after ``attempt`` (1-based); None when none follows."""
    return delays[attempt - 1] if 1 <= attempt <= len(delays) else None


class Step(enum.Enum):
    """What to do with a job's outcome, given its reservation."""

    #: No webhook, or its delivery is over: ack.
    SKIP = enum.auto()
    #: Billing has not settled the job yet: settle it from the outcome first.
    SETTLE = enum.auto()
    #: Settled: post the event.
    DELIVER = enum.auto()


def next_step(reservation: Reservation | None) -> Step:
    if (
        reservation is None
        or reservation.webhook is None
        or reservation.webhook.state is not WebhookState.PENDING
    ):
        return Step.SKIP
    return Step.SETTLE if reservation.state is ReservationState.HELD else Step.DELIVER


class DispatcherBilling(Protocol):
    """What the dispatcher asks of billing (``BillingClient``)."""

    async def find_reservation(self, job_id: str) -> Reservation | None: ...

    async def settle(self, job_id: str, result: JobResult) -> Settlement: ...

    async def webhook_settings(self, account_id: str) -> WebhookSettings: ...

    async def record_webhook_attempt(self, attempt: WebhookAttempt, final: bool) -> None: ...


def consumer_config(ack_wait_seconds: float, max_attempts: int) -> ConsumerConfig:
    """The gateways' shared durable pull consumer of outcomes (new ones only: no backlog on creation)."""
    return ConsumerConfig(
        durable_name=nats_names.WEBHOOKS_CONSUMER,
        description="imagegen gateways: outcomes of REST jobs to their webhooks",
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_seconds,
        max_deliver=max_attempts + SPARE_DELIVERIES,
        filter_subject=nats_names.OUTCOME_SUBJECT,
        max_ack_pending=-1,
    )


class WebhookDispatcher:
    def __init__(
        self,
        js: JetStreamContext,
        billing: DispatcherBilling,
        sender: WebhookSender,
        *,
        retry_delays: Sequence[float],
        concurrency: int,
        stream_replicas: int = 1,
    ) -> None:
        self._js = js
        self._billing = billing
        self._sender = sender
        self._delays = list(retry_delays)
        self.max_attempts = len(self._delays) + 1
        self._concurrency = concurrency
        self._replicas = stream_replicas
        self._ack_wait = sender.timeout_seconds + 30.0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._puller: SlotPuller | None = None

    async def start(self) -> None:
        """Creates (or updates) the consumer and starts pulling; returns at once."""
        await ensure_stream(self._js, nats_names.events_stream_config(self._replicas))
        await self._js.add_consumer(
            nats_names.EVENTS_STREAM, consumer_config(self._ack_wait, self.max_attempts)
        )
        self._sub = await self._js.pull_subscribe_bind(
            durable=nats_names.WEBHOOKS_CONSUMER, stream=nats_names.EVENTS_STREAM
        )
        self._puller = SlotPuller(
            self._sub,
            self._handle,
            concurrency=self._concurrency,
            fetch_timeout=_FETCH_TIMEOUT_SECONDS,
            name="webhook-dispatcher",
        )
        self._puller.start()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops pulling; deliveries in flight get ``grace_seconds``, the rest are handed back."""
        if self._puller is not None:
            await self._puller.stop(grace_seconds)
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @tracing.consuming("gateway.webhook")  # continues the trace of the job the outcome is about
    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handle_outcome(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
            raise
        except Exception as exc:
            # Billing unreachable, NATS hiccup…: nothing was recorded, so the message comes back.
            level = logging.WARNING if isinstance(exc, GatewayError) else logging.ERROR
            log.log(level, "webhook handling failed; retrying", exc_info=not isinstance(exc, GatewayError))
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=INTERNAL_RETRY.delay(msg.metadata.num_delivered or 1))

    async def _handle_outcome(self, msg: Msg) -> None:
        try:
            outcome = jobs_pb2.JobOutcome.FromString(msg.data)
        except DecodeError:
            outcome = jobs_pb2.JobOutcome()
        if not outcome.job_id:
            await msg.term()
            return
        if not outcome.notify_webhook:  # most jobs (every MCP job): no lookup, no work
            await msg.ack()
            return
        reservation = await self._billing.find_reservation(outcome.job_id)
        step = next_step(reservation)
        if step is Step.SETTLE and reservation is not None:
            reservation = (
                await self._billing.settle(outcome.job_id, wire.outcome_result(outcome))
            ).reservation
            step = next_step(reservation)
            if step is Step.SETTLE:  # still held (billing did not settle it): try again later
                await msg.nak(delay=INTERNAL_RETRY.delay(msg.metadata.num_delivered or 1))
                return
        if step is Step.SKIP or reservation is None or reservation.webhook is None:
            await msg.ack()
            return
        attempt = reservation.webhook.attempt_count + 1
        event_type = COMPLETED if reservation.state is ReservationState.CAPTURED else FAILED
        result = await self._send(reservation, reservation.webhook.url, outcome, event_type)
        delay = None if result.delivered or result.refused else retry_delay(attempt, self._delays)
        await self._billing.record_webhook_attempt(
            WebhookAttempt(
                job_id=reservation.job_id,
                attempt=attempt,
                status_code=result.status_code,
                error=result.error,
                attempt_time=datetime.now(UTC),
            ),
            final=delay is None,
        )
        outcome_label = _result_label(result, retrying=delay is not None)
        WEBHOOK_DELIVERIES.labels(event=event_type, result=outcome_label).inc()
        WEBHOOK_DURATION.observe(result.seconds)
        log.info(
            "webhook attempt",
            extra={
                "job_id": reservation.job_id,
                "attempt": attempt,
                "status": result.status_code,
                "result": outcome_label,
            },
        )
        if delay is None:
            await msg.ack()
        else:
            await msg.nak(delay=delay)

    async def _send(
        self, reservation: Reservation, url: str, outcome: jobs_pb2.JobOutcome, event_type: str
    ) -> SendResult:
        signing = await self._billing.webhook_settings(reservation.account_id)
        if not signing.signing_secret:
            return SendResult(0, "the account has no webhook signing secret", refused=True, seconds=0.0)
        data = image(reservation).model_dump(mode="json", exclude={"webhook"})
        happened = (
            wire.optional_moment(outcome, "finish_time") or reservation.settle_time or datetime.now(UTC)
        )
        body = message_body(event_type, happened, data)
        headers = signed_headers(
            signing.signing_secret, message_id(reservation.job_id, event_type), datetime.now(UTC), body
        )
        return await self._sender.send(url, body, headers)


def _result_label(result: SendResult, retrying: bool) -> str:
    if result.delivered:
        return "delivered"
    if result.refused:
        return "refused"
    return "retry" if retrying else "failed"
