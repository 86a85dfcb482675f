"""The generation flow (``generation.Generations``) with small in-memory fakes of its ports: billing,
the job bus and the catalog. What it asks billing for (settle, release with which reason) is the point."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from imagegen_common.catalog import Dimensions, PriceRule
from imagegen_gateway.authentication import Principal
from imagegen_gateway.domain import (
    ErrorCode,
    HeldBatch,
    JobResult,
    Model,
    ReleaseReason,
    Reservation,
    ReservationRequest,
    ReservationState,
    Settlement,
    SettleOutcome,
)
from imagegen_gateway.errors import GenerationFailedError, GenerationTimeoutError, ServiceUnavailableError
from imagegen_gateway.generation import Generations, ImageRequest, idempotent_job_id
from imagegen_gateway.jobs import JobSpec, JobUpdate, Progress
from imagegen_gateway.status_watch import StatusWatch
from imagegen_testing import eventually

MODEL = Model(
    key="m",
    provider_model="owner/m",
    provider_version="v1",
    supports_text_to_image=True,
    dimensions=Dimensions(min_width=256, max_width=2048, min_height=256, max_height=2048),
    price_rule=PriceRule(credits_per_megapixel=4, minimum_credits=1),
)


class FakeCatalog:
    async def get(self, key: str) -> Model:
        return MODEL


@dataclass
class FakeBilling:
    """Billing's ledger in a dict; records every release and settlement it is asked for."""

    credits: int = 100
    records: dict[str, Reservation] = field(default_factory=dict)
    releases: list[tuple[str, ReleaseReason]] = field(default_factory=list)
    settlements: list[tuple[str, JobResult]] = field(default_factory=list)
    #: What a release finds: set to CAPTURED to play an image made before the release came.
    captured_result: JobResult | None = None
    #: Billing away: this many releases fail first (ServiceUnavailableError).
    failing_releases: int = 0
    #: Billing stalled or away for status checks: BatchGetReservations fails after this delay.
    status_fails_after: float | None = None
    #: The job ids of every BatchGetReservations call.
    status_reads: list[list[str]] = field(default_factory=list)
    #: Billing holds the credits but its answer is lost (the caller's deadline passed first).
    lose_reserve_answer: bool = False

    async def reserve(
        self, account_id: str, requests: Sequence[ReservationRequest], expire_time: datetime
    ) -> HeldBatch:
        created = []
        for r in requests:
            if r.job_id not in self.records:
                self.records[r.job_id] = Reservation(
                    job_id=r.job_id,
                    account_id=account_id,
                    amount=r.amount,
                    state=ReservationState.HELD,
                    create_time=datetime.now(UTC),
                    expire_time=expire_time,
                    request_fingerprint=r.fingerprint,
                )
                self.credits -= r.amount
                created.append(r.job_id)
        if self.lose_reserve_answer:
            raise ServiceUnavailableError("billing is unavailable; please try again shortly")
        return HeldBatch(
            reservations=tuple(self.records[r.job_id] for r in requests),
            credits=self.credits,
            created_job_ids=frozenset(created),
        )

    async def release(self, job_id: str, reason: ReleaseReason, detail: str = "") -> Reservation | None:
        if self.failing_releases:
            self.failing_releases -= 1
            raise ServiceUnavailableError("billing is unavailable; please try again shortly")
        self.releases.append((job_id, reason))
        held = self.records.get(job_id)
        if held is None:
            return None
        if self.captured_result is not None:
            settled = replace(held, state=ReservationState.CAPTURED, result=self.captured_result)
        else:
            settled = replace(held, state=ReservationState.RELEASED, release_reason=reason)
        self.records[job_id] = settled
        return settled

    async def settle(self, job_id: str, result: JobResult) -> Settlement:
        self.settlements.append((job_id, result))
        state = ReservationState.CAPTURED if result.succeeded else ReservationState.RELEASED
        settled = replace(self.records[job_id], state=state, result=result)
        self.records[job_id] = settled
        outcome = SettleOutcome.CAPTURED if result.succeeded else SettleOutcome.RELEASED
        return Settlement(settled, outcome)

    async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
        self.status_reads.append(list(job_ids))
        if self.status_fails_after is not None:
            await asyncio.sleep(self.status_fails_after)
            raise ServiceUnavailableError("billing is unavailable; please try again shortly")
        return [self.records[job_id] for job_id in job_ids if job_id in self.records]


@dataclass
class FakeJobs:
    """The job queue: keeps what is published and lets a test answer on a job's reply subject."""

    published: list[JobSpec] = field(default_factory=list)
    cancelled: list[tuple[str, ReleaseReason]] = field(default_factory=list)
    fail_publish: bool = False
    #: Sent to the waiter as soon as a job is published (a generator that answers at once).
    answer: JobUpdate | None = None
    _queues: dict[str, asyncio.Queue[JobUpdate]] = field(default_factory=dict)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Queue[JobUpdate]]:
        queue: asyncio.Queue[JobUpdate] = asyncio.Queue()
        self._queues[job_id] = queue
        try:
            yield queue
        finally:
            del self._queues[job_id]

    async def publish(self, spec: JobSpec) -> None:
        if self.fail_publish:
            raise TimeoutError("no ack from JetStream")
        self.published.append(spec)
        if self.answer is not None and spec.job_id in self._queues:
            self._queues[spec.job_id].put_nowait(self.answer)

    async def cancel(self, job_id: str, reason: ReleaseReason) -> None:
        self.cancelled.append((job_id, reason))


PRINCIPAL = Principal(account_id="acc_1", email="a@example.com", token_id="tok_1")
REQUEST = ImageRequest(prompt="a fox", model="m", width=1024, height=1024)
IMAGE = JobResult(image_url="http://x/images/img_a.png", mime_type="image/png", width=1024, height=1024)


#: The status watches the tests started, stopped after each test.
_running: list[StatusWatch] = []


@pytest.fixture(autouse=True)
async def _stop_status_watches() -> AsyncIterator[None]:
    yield
    while _running:
        await _running.pop().stop()


def _generations(
    billing: FakeBilling, jobs: FakeJobs, job_timeout: float = 30.0, release_patience: float = 5.0
) -> Generations:
    status = StatusWatch(billing, interval=0.05)
    status.start()
    _running.append(status)
    return Generations(
        billing=billing,
        bus=jobs,
        catalog=FakeCatalog(),
        status=status,
        job_timeout=job_timeout,
        reservation_grace=60.0,
        poll_interval=0.05,
        release_patience=release_patience,
    )


async def _answer_later(jobs: FakeJobs, update: JobUpdate, after: float) -> None:
    """A generator that replies ``after`` seconds once the job is queued."""
    while not jobs.published:
        await asyncio.sleep(0.01)
    await asyncio.sleep(after)
    jobs._queues[jobs.published[0].job_id].put_nowait(update)


async def test_an_image_is_delivered_with_its_price_and_nothing_is_released() -> None:
    billing, jobs = FakeBilling(credits=100), FakeJobs(answer=IMAGE)
    image = await _generations(billing, jobs).generate(PRINCIPAL, REQUEST)
    assert (image.image_url, image.credits_used, image.credits_remaining) == (IMAGE.image_url, 4, 96)
    [job] = jobs.published
    assert (job.job_id, job.provider_model, job.reply) == (image.image_id, "owner/m:v1", True)
    assert billing.releases == [] and billing.settlements == []  # billing captures from the event


async def test_a_failed_job_is_settled_with_its_error_code_and_never_released() -> None:
    failure = JobResult(error=ErrorCode.CONTENT_REJECTED, error_message="The filter refused it.")
    billing, jobs = FakeBilling(), FakeJobs(answer=failure)
    with pytest.raises(GenerationFailedError) as raised:
        await _generations(billing, jobs).generate(PRINCIPAL, REQUEST)
    assert raised.value.code == "content_rejected"
    assert "The filter refused it." in raised.value.message
    [(job_id, settled)] = billing.settlements
    assert settled.error is ErrorCode.CONTENT_REJECTED and job_id == jobs.published[0].job_id
    assert billing.releases == []


async def test_a_job_the_generator_gave_up_at_its_deadline_reads_as_a_timeout() -> None:
    billing, jobs = FakeBilling(), FakeJobs(answer=JobResult(error=ErrorCode.DEADLINE_EXCEEDED))
    with pytest.raises(GenerationTimeoutError):
        await _generations(billing, jobs).generate(PRINCIPAL, REQUEST)
    assert [r.error for _, r in billing.settlements] == [ErrorCode.DEADLINE_EXCEEDED]


async def test_a_wait_past_the_deadline_releases_with_the_timeout_reason_and_cancels_the_job() -> None:
    billing, jobs = FakeBilling(credits=10), FakeJobs(answer=Progress("generating"))
    with pytest.raises(GenerationTimeoutError):
        await _generations(billing, jobs, job_timeout=0.2).generate(PRINCIPAL, REQUEST)
    job_id = jobs.published[0].job_id
    assert billing.releases == [(job_id, ReleaseReason.TIMEOUT)]
    assert jobs.cancelled == [(job_id, ReleaseReason.TIMEOUT)]


async def test_an_image_made_just_before_the_timeout_release_is_delivered() -> None:
    billing, jobs = FakeBilling(captured_result=IMAGE), FakeJobs()
    image = await _generations(billing, jobs, job_timeout=0.2).generate(PRINCIPAL, REQUEST)
    assert image.image_url == IMAGE.image_url


async def test_a_job_that_cannot_be_queued_is_released_as_not_queued() -> None:
    billing, jobs = FakeBilling(), FakeJobs(fail_publish=True)
    with pytest.raises(ServiceUnavailableError):
        await _generations(billing, jobs).generate(PRINCIPAL, REQUEST)
    [(_, reason)] = billing.releases
    assert reason is ReleaseReason.NOT_QUEUED


async def test_a_client_that_leaves_gets_its_credits_released_as_cancelled() -> None:
    billing, jobs = FakeBilling(), FakeJobs()
    call = asyncio.ensure_future(_generations(billing, jobs).generate(PRINCIPAL, REQUEST))
    while not jobs.published:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert billing.releases == [(jobs.published[0].job_id, ReleaseReason.CANCELLED)]


async def test_a_repeat_of_an_idempotent_request_is_not_queued_again() -> None:
    billing, jobs = FakeBilling(credits=100), FakeJobs(answer=IMAGE)
    generations = _generations(billing, jobs)
    first = await generations.generate(PRINCIPAL, REQUEST, idempotency_key="k")
    billing.records[first.image_id] = replace(
        billing.records[first.image_id], state=ReservationState.CAPTURED, result=IMAGE
    )
    again = await generations.generate(PRINCIPAL, REQUEST, idempotency_key="k")
    assert again.image_id == first.image_id and len(jobs.published) == 1 and billing.credits == 96


@pytest.mark.parametrize("stall", [0.0, 0.3, 60.0])
async def test_a_failing_or_stalled_status_check_never_ends_a_wait_whose_reply_comes(stall: float) -> None:
    # billing restarting (fails at once), slow (fails after a while) or stalled (hangs past the reply)
    billing, jobs = FakeBilling(status_fails_after=stall), FakeJobs()
    replier = asyncio.ensure_future(_answer_later(jobs, IMAGE, after=0.5))
    image = await _generations(billing, jobs, job_timeout=5).generate(PRINCIPAL, REQUEST)
    await replier
    assert image.image_url == IMAGE.image_url
    assert billing.releases == [] and jobs.cancelled == []  # nothing given up: billing captures it


async def test_a_timeout_release_that_billing_answers_late_still_returns_the_captured_image() -> None:
    billing, jobs = FakeBilling(captured_result=IMAGE, failing_releases=2), FakeJobs()
    image = await _generations(billing, jobs, job_timeout=0.2).generate(PRINCIPAL, REQUEST)
    assert image.image_url == IMAGE.image_url  # captured: the client paid for it, so it gets it
    assert [reason for _, reason in billing.releases] == [ReleaseReason.TIMEOUT]


async def test_a_reply_that_comes_while_billing_cannot_release_is_delivered() -> None:
    billing, jobs = FakeBilling(failing_releases=1000, status_fails_after=0.0), FakeJobs()
    replier = asyncio.ensure_future(_answer_later(jobs, IMAGE, after=0.4))
    image = await _generations(billing, jobs, job_timeout=0.2).generate(PRINCIPAL, REQUEST)
    await replier
    assert image.image_url == IMAGE.image_url


async def test_a_timeout_billing_never_confirms_is_not_reported_as_free() -> None:
    billing, jobs = FakeBilling(failing_releases=1000), FakeJobs()
    generations = _generations(billing, jobs, job_timeout=0.2, release_patience=0.3)
    with pytest.raises(ServiceUnavailableError) as raised:
        await generations.generate(PRINCIPAL, REQUEST)
    job_id = jobs.published[0].job_id
    assert "No credits were charged" not in raised.value.message
    assert f"/api/images/{job_id}" in raised.value.message  # where the client finds out
    assert billing.records[job_id].state is ReservationState.HELD


async def test_a_repeat_that_times_out_leaves_the_first_calls_job_alone_and_says_where_to_look() -> None:
    billing, jobs = FakeBilling(credits=100), FakeJobs()
    job_id = idempotent_job_id(PRINCIPAL.account_id, "k")
    billing.records[job_id] = Reservation(  # held by a first call, on a gateway that died
        job_id=job_id,
        account_id=PRINCIPAL.account_id,
        amount=4,
        state=ReservationState.HELD,
        create_time=datetime.now(UTC),
        expire_time=datetime.now(UTC) + timedelta(seconds=60.2),
        request_fingerprint=REQUEST.fingerprint(),
    )
    with pytest.raises(GenerationTimeoutError) as raised:
        await _generations(billing, jobs).generate(PRINCIPAL, REQUEST, idempotency_key="k")
    assert "No credits were charged" not in raised.value.message  # the first call's job may finish
    assert f"/api/images/{job_id}" in raised.value.message
    assert billing.releases == [] and jobs.cancelled == [] and jobs.published == []


async def test_a_repeat_whose_job_replies_elsewhere_ends_with_billings_record() -> None:
    """A repeat of an idempotent request gets no reply (the first call's gateway does): its wait ends
    when the status watch finds the reservation captured."""
    billing, jobs = FakeBilling(credits=100), FakeJobs()
    job_id = idempotent_job_id(PRINCIPAL.account_id, "k")
    billing.records[job_id] = Reservation(  # held by a first call, on another gateway
        job_id=job_id,
        account_id=PRINCIPAL.account_id,
        amount=4,
        state=ReservationState.HELD,
        create_time=datetime.now(UTC),
        expire_time=datetime.now(UTC) + timedelta(seconds=90),
        request_fingerprint=REQUEST.fingerprint(),
    )
    generations = _generations(billing, jobs)

    async def first_call_finishes() -> None:
        await asyncio.sleep(0.2)
        billing.records[job_id] = replace(
            billing.records[job_id], state=ReservationState.CAPTURED, result=IMAGE
        )

    finisher = asyncio.ensure_future(first_call_finishes())
    image = await asyncio.wait_for(generations.generate(PRINCIPAL, REQUEST, idempotency_key="k"), 5)
    await finisher
    assert (image.image_id, image.image_url) == (job_id, IMAGE.image_url)
    assert jobs.published == [] and billing.releases == []


async def test_a_reservation_whose_answer_was_lost_is_given_back() -> None:
    billing, jobs = FakeBilling(credits=100, lose_reserve_answer=True), FakeJobs()
    generations = _generations(billing, jobs)
    with pytest.raises(ServiceUnavailableError):
        await generations.generate(PRINCIPAL, REQUEST)
    await eventually(lambda: bool(billing.releases), what="the release")
    [(job_id, reason)] = billing.releases
    assert reason is ReleaseReason.NOT_QUEUED and billing.records[job_id].state is ReservationState.RELEASED
    assert jobs.published == []


async def test_concurrent_waits_share_one_status_read_per_interval() -> None:
    billing, jobs = FakeBilling(credits=100), FakeJobs()
    generations = _generations(billing, jobs)
    waits = [asyncio.ensure_future(generations.generate(PRINCIPAL, REQUEST)) for _ in range(5)]
    while len(jobs.published) < 5:
        await asyncio.sleep(0.01)
    await eventually(
        lambda: len([read for read in billing.status_reads if len(read) == 5]) >= 3,
        what="three reads of all five waits",
    )
    for job in jobs.published:
        jobs._queues[job.job_id].put_nowait(IMAGE)
    images = await asyncio.gather(*waits)
    assert len({image.image_id for image in images}) == 5
    full = [read for read in billing.status_reads if len(read) == 5]
    # one read for all five, not one per wait (a read may have come while they were registering)
    assert len(billing.status_reads) - len(full) <= 1
