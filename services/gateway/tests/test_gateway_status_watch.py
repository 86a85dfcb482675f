"""The status watch (``status_watch.StatusWatch``): every waiting job's reservation in one batched read
per interval, with a fake of billing's ``reservations``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from imagegen_gateway.domain import JobResult, Reservation, ReservationState
from imagegen_gateway.errors import ServiceUnavailableError
from imagegen_gateway.status_watch import StatusWatch
from imagegen_testing import eventually

IMAGE = JobResult(image_url="http://x/images/img.png", mime_type="image/png", width=64, height=64)


def held(job_id: str) -> Reservation:
    return Reservation(
        job_id=job_id,
        account_id="acc_1",
        amount=1,
        state=ReservationState.HELD,
        create_time=datetime.now(UTC),
        expire_time=datetime.now(UTC) + timedelta(minutes=5),
    )


@dataclass
class FakeBilling:
    records: dict[str, Reservation] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    #: This many calls fail first (billing away).
    failing: int = 0
    #: Each call takes this long (a slow database).
    delay: float = 0.0
    finished: int = 0

    async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
        self.calls.append(list(job_ids))
        await asyncio.sleep(self.delay)
        if self.failing:
            self.failing -= 1
            raise ServiceUnavailableError("billing is unavailable; please try again shortly")
        self.finished += 1
        return [self.records[j] for j in job_ids if j in self.records]

    def settle(self, job_id: str) -> None:
        self.records[job_id] = replace(self.records[job_id], state=ReservationState.CAPTURED, result=IMAGE)


def _billing(*job_ids: str) -> FakeBilling:
    return FakeBilling(records={j: held(j) for j in job_ids})


async def test_many_waits_cost_one_batched_read_per_interval() -> None:
    job_ids = [f"img_{i}" for i in range(200)]
    billing = _billing(*job_ids)
    status = StatusWatch(billing, interval=0.05)
    with contextlib.ExitStack() as stack:
        for job_id in job_ids:
            stack.enter_context(status.watch(job_id))
        for _ in range(3):
            await status.poll()
        assert len(billing.calls) == 3  # one per poll, not one per wait
        status.start()  # and on its own, once per interval
        try:
            await eventually(lambda: len(billing.calls) >= 5, what="the watch polling by itself")
        finally:
            await status.stop()
    assert all(sorted(call) == sorted(job_ids) for call in billing.calls)


async def test_nothing_is_read_while_nobody_waits() -> None:
    billing = _billing()
    status = StatusWatch(billing, interval=0.02)
    status.start()
    await asyncio.sleep(0.1)
    await status.stop()
    assert billing.calls == []


async def test_a_settled_reservation_wakes_exactly_its_waits() -> None:
    billing = _billing("img_a", "img_b")
    status = StatusWatch(billing, interval=1.0)
    with (
        status.watch("img_a") as first,
        status.watch("img_a") as repeat,  # a concurrent repeat of the same idempotent request
        status.watch("img_b") as other,
    ):
        await status.poll()
        assert not any(f.done() for f in (first, repeat, other))  # all still held

        billing.settle("img_a")
        await status.poll()
        assert first.result().state is ReservationState.CAPTURED
        assert repeat.result() == first.result()
        assert not other.done()
    assert status.watched == 0


async def test_an_unknown_job_keeps_waiting() -> None:
    billing = _billing()
    status = StatusWatch(billing, interval=1.0)
    with status.watch("img_unknown") as settled:
        await status.poll()
        assert not settled.done()


async def test_a_failing_batch_does_not_end_the_waits(caplog: pytest.LogCaptureFixture) -> None:
    billing = _billing("img_a")
    billing.failing = 2
    status = StatusWatch(billing, interval=0.02)
    status.start()
    try:
        with status.watch("img_a") as settled:
            await asyncio.sleep(0.1)  # the first reads fail; the wait goes on
            assert not settled.done()
            billing.settle("img_a")
            reservation = await asyncio.wait_for(settled, timeout=1.0)
    finally:
        await status.stop()
    assert reservation.result == IMAGE
    failures = [r for r in caplog.records if r.getMessage() == "job statuses unavailable; still waiting"]
    assert len(failures) == 2  # once per failed batch, not once per job


async def test_an_unexpected_failure_does_not_stop_the_watch() -> None:
    class Broken(FakeBilling):
        async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
            if not self.calls:
                self.calls.append(list(job_ids))
                raise RuntimeError("a bug")
            return await super().reservations(job_ids)

    billing = Broken(records={"img_a": held("img_a")})
    status = StatusWatch(billing, interval=0.02)
    status.start()
    try:
        with status.watch("img_a") as settled:
            await asyncio.sleep(0.06)
            billing.settle("img_a")
            assert (await asyncio.wait_for(settled, timeout=1.0)).state is ReservationState.CAPTURED
    finally:
        await status.stop()


async def test_more_waits_than_a_batch_takes_are_read_in_chunks() -> None:
    job_ids = [f"img_{i}" for i in range(7)]
    billing = _billing(*job_ids)
    billing.settle("img_6")
    status = StatusWatch(billing, interval=1.0, max_batch=3)
    with contextlib.ExitStack() as stack:
        futures = [stack.enter_context(status.watch(j)) for j in job_ids]
        await status.poll()
        assert [len(call) for call in billing.calls] == [3, 3, 1]
        assert sorted(j for call in billing.calls for j in call) == sorted(job_ids)
        assert [f.done() for f in futures] == [False] * 6 + [True]


async def test_a_wait_that_ends_mid_read_cancels_nothing_in_flight() -> None:
    billing = _billing("img_a", "img_b")
    billing.delay = 0.1
    status = StatusWatch(billing, interval=0.01)
    status.start()
    try:
        with status.watch("img_b"):
            with status.watch("img_a"):
                while not billing.calls:
                    await asyncio.sleep(0.005)
            # img_a's wait ended (its reply came) while the read was in flight: the read finishes
            assert sorted(billing.calls[0]) == ["img_a", "img_b"]
            await asyncio.wait_for(_finished(billing, 1), timeout=1.0)
            await asyncio.wait_for(_finished(billing, 2), timeout=1.0)
        assert billing.calls[1] == ["img_b"]  # the next read asks only for the waits left
    finally:
        await status.stop()


async def _finished(billing: FakeBilling, reads: int) -> None:
    while billing.finished < reads:
        await asyncio.sleep(0.005)


async def test_stop_ends_the_watch_and_a_later_start_resumes_it() -> None:
    billing = _billing("img_a")
    status = StatusWatch(billing, interval=0.02)
    status.start()
    await status.stop()
    await status.stop()  # twice is harmless
    with status.watch("img_a"):
        await asyncio.sleep(0.06)
        assert billing.calls == []  # not running: not polled
        status.start()
        await asyncio.sleep(0.06)
    await status.stop()
    assert billing.calls


def test_a_watch_needs_a_positive_interval_and_batch() -> None:
    with pytest.raises(ValueError):
        StatusWatch(_billing(), interval=0)
    with pytest.raises(ValueError):
        StatusWatch(_billing(), interval=1.0, max_batch=0)
