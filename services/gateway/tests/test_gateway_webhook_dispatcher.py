"""The webhook dispatcher's decision for each outcome: skip it, settle it first (``SettleJob`` with the
outcome's result, never Capture or a reason string), or deliver it; and what it acks, naks and records."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from imagegen.jobs.v1 import jobs_pb2
from imagegen_gateway.domain import (
    ErrorCode,
    JobResult,
    Reservation,
    ReservationState,
    Settlement,
    SettleOutcome,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSettings,
    WebhookState,
)
from imagegen_gateway.webhooks.dispatcher import Step, WebhookDispatcher, next_step
from imagegen_gateway.webhooks.sender import SendResult, WebhookSender

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PENDING = WebhookDelivery(url="https://hooks.example/x", state=WebhookState.PENDING)
HELD = Reservation(
    job_id="img_a",
    account_id="acc_1",
    amount=4,
    state=ReservationState.HELD,
    create_time=NOW,
    expire_time=NOW,
    webhook=PENDING,
)


def test_the_next_step_follows_the_reservation() -> None:
    assert next_step(None) is Step.SKIP
    assert next_step(replace(HELD, webhook=None)) is Step.SKIP
    delivered = replace(PENDING, state=WebhookState.DELIVERED)
    assert next_step(replace(HELD, webhook=delivered)) is Step.SKIP
    assert next_step(HELD) is Step.SETTLE
    assert next_step(replace(HELD, state=ReservationState.CAPTURED)) is Step.DELIVER
    assert next_step(replace(HELD, state=ReservationState.RELEASED)) is Step.DELIVER


@dataclass
class Billing:
    reservation: Reservation | None
    #: What SettleJob leaves the reservation in (HELD: billing did not settle it).
    settles_to: ReservationState = ReservationState.RELEASED
    settled: list[JobResult] = field(default_factory=list)
    attempts: list[tuple[WebhookAttempt, bool]] = field(default_factory=list)

    async def find_reservation(self, job_id: str) -> Reservation | None:
        return self.reservation

    async def settle(self, job_id: str, result: JobResult) -> Settlement:
        assert self.reservation is not None
        self.settled.append(result)
        self.reservation = replace(self.reservation, state=self.settles_to, result=result)
        return Settlement(self.reservation, SettleOutcome.RELEASED)

    async def webhook_settings(self, account_id: str) -> WebhookSettings:
        return WebhookSettings(url="", has_secret=True, signing_secret="whsec_c2VjcmV0")

    async def record_webhook_attempt(self, attempt: WebhookAttempt, final: bool) -> None:
        self.attempts.append((attempt, final))


@dataclass
class Sender:
    timeout_seconds: float = 1.0
    sent: list[str] = field(default_factory=list)

    async def send(self, url: str, body: str, headers: dict[str, str]) -> SendResult:
        self.sent.append(body)
        return SendResult(status_code=200, error="", refused=False, seconds=0.01)


@dataclass
class Message:
    data: bytes
    acks: list[str] = field(default_factory=list)
    metadata: Any = field(default_factory=lambda: SimpleNamespace(num_delivered=1))

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acks.append("nak")

    async def term(self) -> None:
        self.acks.append("term")


FAILED = jobs_pb2.JobOutcome(
    job_id="img_a",
    notify_webhook=True,
    failure=jobs_pb2.JobFailure(code=jobs_pb2.ERROR_CODE_PROVIDER_UNAVAILABLE, message="try later"),
)


async def _handle(billing: Billing, outcome: jobs_pb2.JobOutcome) -> tuple[Message, Sender]:
    sender = Sender()
    dispatcher = WebhookDispatcher(
        cast("JetStreamContext", None),
        billing,
        cast("WebhookSender", sender),
        retry_delays=[1.0],
        concurrency=1,
    )
    message = Message(outcome.SerializeToString())
    await dispatcher._handle_outcome(cast("Msg", message))
    return message, sender


async def test_a_held_job_is_settled_with_its_outcome_then_delivered() -> None:
    billing = Billing(HELD)
    message, sender = await _handle(billing, FAILED)
    assert billing.settled == [JobResult(error=ErrorCode.PROVIDER_UNAVAILABLE, error_message="try later")]
    [body] = sender.sent
    assert '"image.failed"' in body and '"provider_unavailable"' in body
    [(attempt, final)] = billing.attempts
    assert (attempt.attempt, attempt.status_code, final) == (1, 200, True)
    assert message.acks == ["ack"]


async def test_a_job_billing_keeps_held_is_tried_again_later_and_nothing_is_sent() -> None:
    billing = Billing(HELD, settles_to=ReservationState.HELD)
    message, sender = await _handle(billing, FAILED)
    assert (message.acks, sender.sent, billing.attempts) == (["nak"], [], [])


@pytest.mark.parametrize("reservation", [None, replace(HELD, webhook=None)])
async def test_a_job_without_a_pending_webhook_is_acked_untouched(reservation: Reservation | None) -> None:
    billing = Billing(reservation)
    message, sender = await _handle(billing, FAILED)
    assert (message.acks, sender.sent, billing.settled) == (["ack"], [], [])


async def test_a_settled_job_is_delivered_without_settling_again() -> None:
    captured = replace(
        HELD, state=ReservationState.CAPTURED, result=JobResult(image_url="http://x/images/img_a.png")
    )
    billing = Billing(captured)
    image = jobs_pb2.JobOutcome(
        job_id="img_a", notify_webhook=True, image=jobs_pb2.GeneratedImage(url="http://x/images/img_a.png")
    )
    message, sender = await _handle(billing, image)
    assert billing.settled == [] and message.acks == ["ack"]
    assert '"image.completed"' in sender.sent[0]
