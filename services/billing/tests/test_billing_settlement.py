"""Settlement from job events on a real nats-server: outcomes capture or release once, starts are
recorded, and billing serves without NATS until NATS comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing.config import BillingSettings
from imagegen_billing.domain import JobError, ReleaseReason, ReservationState, ReserveRequest
from imagegen_billing.server import BillingServer
from imagegen_billing.settlement import SETTLEMENT_CONCURRENCY
from imagegen_common import nats_names
from imagegen_testing import eventually
from imagegen_testing.nats_server import NatsServer

SettingsFactory = Callable[..., BillingSettings]
ServerFactory = Callable[[BillingSettings], Awaitable[BillingServer]]


def settled(result: str) -> float:
    return REGISTRY.get_sample_value("imagegen_billing_settlement_events_total", {"result": result}) or 0.0


def image_outcome(job_id: str) -> jobs_pb2.JobOutcome:
    return jobs_pb2.JobOutcome(
        job_id=job_id,
        image=jobs_pb2.GeneratedImage(
            image_id=job_id, url=f"http://x/images/{job_id}.png", mime_type="image/png", width=512, height=512
        ),
    )


def failed_outcome(job_id: str) -> jobs_pb2.JobOutcome:
    return jobs_pb2.JobOutcome(
        job_id=job_id,
        failure=jobs_pb2.JobFailure(code=jobs_pb2.ERROR_CODE_PROVIDER_ERROR, message="the provider failed"),
    )


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def publish(nc: Client, outcome: jobs_pb2.JobOutcome, msg_id: str) -> None:
    await nc.jetstream().publish(
        nats_names.OUTCOME_SUBJECT, outcome.SerializeToString(), headers={"Nats-Msg-Id": msg_id}
    )


async def all_acked(nc: Client) -> bool:
    info = await nc.jetstream().consumer_info(
        nats_names.EVENTS_STREAM, nats_names.BILLING_SETTLEMENT_CONSUMER
    )
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_outcomes_settle_reservations_once(
    nats_server: NatsServer,
    nc: Client,
    sqlite_url: str,
    make_settings: SettingsFactory,
    start_billing: ServerFactory,
) -> None:
    server = await start_billing(
        make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=nats_server.url)
    )
    assert server.settlement is not None
    await asyncio.wait_for(server.settlement.started.wait(), timeout=30)
    stream = await nc.jetstream().stream_info(nats_names.EVENTS_STREAM)
    assert stream.config.subjects == [nats_names.EVENTS_SUBJECTS]

    account, _, _ = await server.accounts.create("ada@example.test", 30)
    for job_id in ("img_ok", "img_fail", "img_conflict"):
        await server.ledger.reserve(ReserveRequest(account.id, job_id, 10))
    await server.ledger.release("img_conflict", ReleaseReason.CANCELLED)
    before = {r: settled(r) for r in ("captured", "released", "duplicate", "conflict", "unknown_job")}

    started = jobs_pb2.JobStarted(job_id="img_ok", account_id=account.id, attempt=1)
    started.start_time.FromDatetime(datetime(2026, 1, 1, 12, tzinfo=UTC))
    await nc.jetstream().publish(nats_names.STARTED_SUBJECT, started.SerializeToString())
    await publish(nc, image_outcome("img_ok"), "outcome-img_ok")
    # The same outcome again, as a redelivery after a crash would bring it (another message id).
    await publish(nc, image_outcome("img_ok"), "outcome-img_ok-again")
    await publish(nc, failed_outcome("img_fail"), "outcome-img_fail")
    await publish(nc, image_outcome("img_conflict"), "outcome-img_conflict")
    await publish(nc, image_outcome("img_nobody"), "outcome-img_nobody")
    await nc.jetstream().publish(nats_names.OUTCOME_SUBJECT, b"\xff not a protobuf")
    # A start of a job id no reservation can have: dropped like bad bytes, not retried.
    unusable = jobs_pb2.JobStarted(job_id="../" + "x" * 300, account_id=account.id, attempt=1)
    await nc.jetstream().publish(nats_names.STARTED_SUBJECT, unusable.SerializeToString())
    await eventually(lambda: all_acked(nc))

    ok = await server.ledger.reservation("img_ok")
    assert ok.state is ReservationState.CAPTURED
    assert ok.result.image_url == "http://x/images/img_ok.png"
    assert ok.start_time == datetime(2026, 1, 1, 12, tzinfo=UTC)
    failed = await server.ledger.reservation("img_fail")
    assert (failed.state, failed.release_reason) == (ReservationState.RELEASED, ReleaseReason.FAILED)
    assert (failed.result.error, failed.result.error_message) == (
        JobError.PROVIDER_ERROR,
        "the provider failed",
    )
    assert (await server.ledger.reservation("img_conflict")).state is ReservationState.RELEASED
    assert (await server.accounts.get(account.id)).credits == 20  # img_ok charged once, the others given back
    assert {r: settled(r) - before[r] for r in before} == {
        "captured": 1,
        "released": 1,
        "duplicate": 1,
        "conflict": 1,
        "unknown_job": 1,
    }


async def test_billing_serves_without_nats_and_settles_once_it_comes(
    tmp_path: Path, sqlite_url: str, make_settings: SettingsFactory, start_billing: ServerFactory
) -> None:
    later = NatsServer(store_dir=tmp_path / "nats")  # its port is chosen, nothing listens yet
    try:
        server = await start_billing(
            make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=later.url)
        )
        account, _, _ = await server.accounts.create("ada@example.test", 10)
        await server.ledger.reserve(ReserveRequest(account.id, "img_a", 4))
        assert server.settlement is not None and not server.settlement.started.is_set()

        later.start()
        await asyncio.wait_for(server.settlement.started.wait(), timeout=60)
        client = await nats.connect(later.url)
        try:
            await publish(client, image_outcome("img_a"), "outcome-img_a")
            await eventually(lambda: all_acked(client))
        finally:
            await client.close()
        assert (await server.ledger.reservation("img_a")).state is ReservationState.CAPTURED
    finally:
        later.close()


async def test_billing_stops_cleanly_while_nats_is_still_missing(
    tmp_path: Path, sqlite_url: str, make_settings: SettingsFactory
) -> None:
    never = NatsServer(store_dir=tmp_path / "nats")
    server = BillingServer(make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=never.url))
    await server.start()
    account, _, _ = await server.accounts.create("ada@example.test", 1)
    assert account.credits == 1
    await server.stop()


async def test_an_event_that_cannot_be_settled_now_is_retried_later(
    nats_server: NatsServer,
    nc: Client,
    sqlite_url: str,
    make_settings: SettingsFactory,
    start_billing: ServerFactory,
    *,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that fails for a moment (a fault injected into the ledger's settle) leaves the
    event on the stream, redelivered after a back-off instead of at once, and settled once it can."""
    server = await start_billing(
        make_settings(sqlite_url, billing_settlement_enabled=True, nats_url=nats_server.url)
    )
    assert server.settlement is not None
    await asyncio.wait_for(server.settlement.started.wait(), timeout=30)
    account, _, _ = await server.accounts.create("bo@example.test", 10)
    await server.ledger.reserve(ReserveRequest(account.id, "img_later", 4))
    settle = server.ledger.settle
    failures: list[int] = []

    async def flaky_settle(*args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(1)
            raise ConnectionError("the database went away")
        return await settle(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server.ledger, "settle", flaky_settle)
    await publish(nc, image_outcome("img_later"), "outcome-img_later")
    await eventually(lambda: all_acked(nc))
    assert (await server.ledger.reservation("img_later")).state is ReservationState.CAPTURED
    [retry] = [r for r in caplog.records if r.getMessage() == "job event not settled; retrying"]
    assert retry.delay == 1.0  # type: ignore[attr-defined]  # backed off, not redelivered at once


async def test_the_consumer_holds_no_more_events_than_it_settles_and_hands_back_on_stop(
    nats_server: NatsServer,
    nc: Client,
    sqlite_url: str,
    make_settings: SettingsFactory,
    start_billing: ServerFactory,
    *,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through messaging.SlotPuller: while every settlement hangs, the consumer holds exactly as
    many events as it settles at once (not a prefetched batch, ag2ai/faststream#2563); stopped
    past its graceful timeout, it hands them back, so another consumer gets them at once."""
    server = await start_billing(
        make_settings(
            sqlite_url,
            billing_settlement_enabled=True,
            nats_url=nats_server.url,
            billing_shutdown_grace_seconds=0.1,  # hand back soon rather than wait for the hang
        )
    )
    consumer = server.settlement
    assert consumer is not None
    await asyncio.wait_for(consumer.started.wait(), timeout=30)
    hanging: list[str] = []
    never = asyncio.Event()

    async def hanging_settle(job_id: str, *args: object, **kwargs: object) -> object:
        hanging.append(job_id)
        await never.wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(server.ledger, "settle", hanging_settle)
    for i in range(10):
        await publish(nc, image_outcome(f"img_{i}"), f"outcome-img_{i}")
    await eventually(lambda: len(hanging) == SETTLEMENT_CONCURRENCY, what="settlements in hand")
    info = await nc.jetstream().consumer_info(
        nats_names.EVENTS_STREAM, nats_names.BILLING_SETTLEMENT_CONSUMER
    )
    assert info.num_ack_pending == SETTLEMENT_CONCURRENCY  # nothing fetched beyond them

    await consumer.stop()
    # Handed back (nak), not left to their 30 s ack wait: the next consumer gets all ten now.
    sub = await nc.jetstream().pull_subscribe_bind(
        durable=nats_names.BILLING_SETTLEMENT_CONSUMER, stream=nats_names.EVENTS_STREAM
    )
    again: list[Msg] = []
    async with asyncio.timeout(5):
        while len(again) < 10:  # a fetch may answer with part of a batch
            again += await sub.fetch(batch=10 - len(again), timeout=5)
    deliveries = sorted(m.metadata.num_delivered or 0 for m in again)
    assert deliveries == [1] * (10 - SETTLEMENT_CONCURRENCY) + [2] * SETTLEMENT_CONCURRENCY
