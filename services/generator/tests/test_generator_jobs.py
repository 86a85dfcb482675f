"""Jobs through a real nats-server and one in-process replica: outcomes, progress, storage, cancels,
deadlines, retries and the lost last delivery."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from nats.js.api import ConsumerConfig
from PIL import Image

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names
from imagegen_common.images import image_url, parse_image_url
from imagegen_generator.app import running_generator
from imagegen_generator.config import GeneratorSettings
from imagegen_generator.consumer import ConsumerOptions, JobConsumer, consumer_config
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.jobs import Bus, make_job

Settings = Callable[..., GeneratorSettings]

GENERATING = jobs_pb2.JobProgress.STAGE_GENERATING
STORING = jobs_pb2.JobProgress.STAGE_STORING


async def test_a_job_end_to_end_stores_an_image_of_the_requested_size(
    local_settings: Settings, bus: Bus
) -> None:
    settings = local_settings()
    async with running_generator(settings) as generator:
        job = make_job("flux-schnell", 768, 512)
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)

        assert outcome.WhichOneof("result") == "image", outcome
        image = outcome.image
        assert image.image_id == job.job_id
        assert (image.width, image.height, image.mime_type) == (768, 512, "image/png")
        filename = parse_image_url(image.url, settings.public_base_url)
        assert filename == f"{job.job_id}.png"
        stored = await generator.store.get(filename)
        assert stored is not None
        assert stored.info.size_bytes == image.size_bytes == len(stored.data)
        with Image.open(io.BytesIO(stored.data)) as decoded:
            assert decoded.size == (768, 512)
            assert decoded.format == "PNG"

        assert bus.replies.stages(job.job_id) == [GENERATING, STORING]
        assert outcome.attempt == 1
        assert outcome.account_id == "acc_test"
        assert outcome.timings.total.ToNanoseconds() > 0
        events = await bus.outcome_events()
        assert [e.job_id for e in events] == [job.job_id]
        assert events[0].image.url == image.url
        started = await bus.started_events()
        assert [(s.job_id, s.attempt) for s in started] == [(job.job_id, 1)]
        info = await bus.js.stream_info(nats_names.JOBS_STREAM)
        assert info.state.messages == 0  # acked: gone from the work queue


async def test_webp_output_when_configured(local_settings: Settings, bus: Bus) -> None:
    async with running_generator(local_settings(image_format="webp")) as generator:
        job = make_job("sdxl", 640, 960)
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
        image = outcome.image
        assert (image.mime_type, image.width, image.height) == ("image/webp", 640, 960)
        stored = await generator.store.get(f"{job.job_id}.webp")
        assert stored is not None
        with Image.open(io.BytesIO(stored.data)) as decoded:
            assert (decoded.format, decoded.size) == ("WEBP", (640, 960))


async def test_a_job_past_its_deadline_fails_without_a_provider_call(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    async with running_generator(replicate_settings()):
        job = make_job(deadline_in=-1)
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
        assert outcome.failure.code == jobs_pb2.ERROR_CODE_DEADLINE_EXCEEDED
        assert fake_replicate.api_calls == []
        assert bus.replies.stages(job.job_id) == []


async def test_a_provider_call_running_at_the_deadline_is_cancelled_upstream(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.hold = True
    async with running_generator(replicate_settings()):
        job = make_job(deadline_in=3)
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
        assert outcome.failure.code == jobs_pb2.ERROR_CODE_DEADLINE_EXCEEDED
        assert "deadline" in outcome.failure.message
        await eventually(lambda: len(fake_replicate.cancels) == 1, what="the prediction's cancel")
        assert len(fake_replicate.creates) == 1


async def test_cancel_job_stops_a_running_job_and_its_prediction(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.hold = True
    # The cancel comes while the create request is still held (`Prefer: wait`): it reaches the fake
    # once the request returns the prediction's id.
    async with running_generator(replicate_settings(replicate_wait_seconds=2)):
        job = make_job()
        await bus.submit(job)
        await eventually(lambda: len(fake_replicate.creates) == 1, what="the prediction")
        await bus.cancel(job.job_id)
        outcome = await bus.replies.outcome(job.job_id)
        assert outcome.failure.code == jobs_pb2.ERROR_CODE_CANCELLED
        await eventually(lambda: len(fake_replicate.cancels) == 1, what="the prediction's cancel")
        events = await bus.outcome_events()
        assert [e.failure.code for e in events] == [jobs_pb2.ERROR_CODE_CANCELLED]


async def test_a_job_cancelled_while_queued_never_starts(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    settings = replicate_settings()
    async with running_generator(settings):
        pass  # creates the buckets and the consumer, as a deployed generator would have
    job = make_job()
    await bus.cancel(job.job_id)
    await bus.submit(job)
    async with running_generator(settings):
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_CANCELLED
    assert fake_replicate.api_calls == []
    assert await bus.started_events() == []


async def test_image_to_image_on_a_model_without_it_is_invalid_input(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    async with running_generator(replicate_settings()):
        job = make_job("flux-schnell", input_image_urls=["http://8.8.8.8/cat.png"])
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INVALID_INPUT
    assert "image-to-image" in outcome.failure.message
    assert fake_replicate.requests == []


async def test_unknown_model_is_invalid_input(local_settings: Settings, bus: Bus) -> None:
    async with running_generator(local_settings()):
        job = make_job("no-such-model")
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INVALID_INPUT


async def test_a_create_answered_500_is_sent_once_per_delivery(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    # A 500 to a create may come after Replicate made the prediction: no retry within the delivery
    # (that could pay twice), the job is handed back and a later delivery tries again.
    fake_replicate.behaviour.create_failures = [(500, None), (500, None)]
    settings = replicate_settings(replicate_max_retries=3, generator_max_deliver=3)
    async with running_generator(settings):
        job = make_job()
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.WhichOneof("result") == "image", outcome
    assert outcome.attempt == 3
    assert len(fake_replicate.creates) == 3
    started = await bus.started_events()
    assert [s.attempt for s in started] == [1, 2, 3]
    assert len(await bus.outcome_events()) == 1


async def test_provider_unavailable_on_the_last_delivery_is_the_outcome(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.create_failures = [(502, None)] * 10
    settings = replicate_settings(generator_max_deliver=2)
    async with running_generator(settings):
        job = make_job()
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_PROVIDER_UNAVAILABLE
    assert outcome.attempt == 2
    assert len(fake_replicate.creates) == 2
    assert "Traceback" not in outcome.failure.message


async def test_a_redelivered_job_whose_image_is_stored_is_not_made_again(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery makes and stores the image, then cannot publish its outcome (the events
    stream is gone) and hands the job back. A redelivery publishes the outcome of the stored image:
    no second prediction, and the image behind its (immutable) URL is not written again."""
    settings = replicate_settings(generator_max_deliver=5)
    async with running_generator(settings) as generator:
        await bus.js.delete_stream(nats_names.EVENTS_STREAM)
        job = make_job(report_start=False)
        await bus.submit(job)
        await eventually(
            lambda: "job outcome could not be published" in caplog.text, what="the failed publish"
        )
        filename = f"{job.job_id}.png"
        stored = await generator.store.get(filename)
        assert stored is not None
        bucket = await bus.js.object_store(nats_names.IMAGES_BUCKET)
        written = await bucket.get_info(filename)
        await bus.js.add_stream(nats_names.events_stream_config())

        outcome = await bus.replies.outcome(job.job_id)
        assert outcome.WhichOneof("result") == "image", outcome
        assert outcome.attempt >= 2
        assert (await bucket.get_info(filename)).nuid == written.nuid  # the same object, not a new one
        again = await generator.store.get(filename)
        assert again is not None
        assert again.info.etag == stored.info.etag
    assert len(fake_replicate.creates) == 1
    image = outcome.image
    assert image.url == image_url(settings.public_base_url, filename)
    assert (image.image_id, image.mime_type, image.size_bytes) == (
        job.job_id,
        "image/png",
        stored.info.size_bytes,
    )
    assert (image.width, image.height) == (job.width, job.height)
    assert [e.job_id for e in await bus.outcome_events()] == [job.job_id]


async def test_the_jobs_provider_model_is_the_one_called(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    async with running_generator(replicate_settings()):
        job = make_job("flux-schnell", 1024, 576)
        job.provider_model = "someone/flux-schnell-fork"
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.WhichOneof("result") == "image", outcome
    (create,) = fake_replicate.creates
    assert create.path == "/v1/models/someone/flux-schnell-fork/predictions"
    assert create.input["aspect_ratio"] == "16:9"  # the catalog model's input mapping


async def _one_job_runs_once_past_a_1s_ack_wait(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    """Runs one job on a generator whose ack wait (1 s) is shorter than the fake's delay: it has one
    image, from its first delivery, one prediction and one start."""
    async with running_generator(
        replicate_settings(generator_ack_wait_seconds=1.0, replicate_wait_seconds=1)
    ):
        job = make_job()
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert (outcome.WhichOneof("result"), outcome.attempt) == ("image", 1)
    assert len(fake_replicate.creates) == 1
    assert [s.attempt for s in await bus.started_events()] == [1]


async def test_a_job_longer_than_the_ack_wait_is_kept_alive_not_redelivered(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.delay_seconds = 3.5  # over three ack waits
    await _one_job_runs_once_past_a_1s_ack_wait(replicate_settings, bus, fake_replicate)


async def test_a_job_handed_out_again_while_it_runs_here_is_not_run_twice(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat that comes late (an event loop busy with a burst) lets NATS hand the job out
    again, here to the replica that runs it: that run answers for it, not a second prediction."""

    async def late_heartbeat(self: JobConsumer, msg: object) -> None:
        await asyncio.Event().wait()  # never in time: every ack wait lapses

    monkeypatch.setattr(JobConsumer, "_keep_alive", late_heartbeat)
    fake_replicate.behaviour.delay_seconds = 2.5  # past two ack waits: two more deliveries
    await _one_job_runs_once_past_a_1s_ack_wait(replicate_settings, bus, fake_replicate)


async def test_nsfw_failure_is_content_rejected(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.fail_error = "NSFW content detected. Try running it again, or change the prompt."
    async with running_generator(replicate_settings()):
        job = make_job()
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_CONTENT_REJECTED
    assert len(fake_replicate.creates) == 1  # not retried


async def test_a_differently_sized_provider_output_is_normalised(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.output_size = (1024, 1024)
    fake_replicate.behaviour.output_format = "webp"
    async with running_generator(replicate_settings()) as generator:
        job = make_job("nano-banana", 1600, 900)
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
        stored = await generator.store.get(f"{job.job_id}.png")
    assert (outcome.image.width, outcome.image.height) == (1600, 900)
    assert stored is not None
    with Image.open(io.BytesIO(stored.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", (1600, 900))
    assert fake_replicate.creates[0].input["aspect_ratio"] == "16:9"


async def test_a_job_whose_last_delivery_was_lost_gets_a_failed_outcome(
    local_settings: Settings, bus: Bus
) -> None:
    # A "replica" takes the job and dies (never acks) on its only delivery: the max-deliveries
    # advisory makes a live replica publish the failure, and the job leaves the work queue.
    options = ConsumerOptions(ack_wait_seconds=1.0, max_deliver=1)
    config: ConsumerConfig = consumer_config(options)
    await bus.js.add_consumer(nats_names.JOBS_STREAM, config)
    dying = await bus.js.pull_subscribe_bind(
        durable=nats_names.GENERATOR_CONSUMER, stream=nats_names.JOBS_STREAM
    )
    job = make_job()
    await bus.submit(job)
    taken = await dying.fetch(1, timeout=5)
    assert jobs_pb2.GenerationJob.FromString(taken[0].data).job_id == job.job_id
    await dying.unsubscribe()

    settings = local_settings(generator_ack_wait_seconds=1.0, generator_max_deliver=1)
    async with running_generator(settings):
        outcome = await bus.replies.outcome(job.job_id)
        assert outcome.failure.code == jobs_pb2.ERROR_CODE_INTERNAL

        async def work_queue_empty() -> bool:
            return (await bus.js.stream_info(nats_names.JOBS_STREAM)).state.messages == 0

        # The outcome is published before the job is deleted from the work queue: wait for that.
        await eventually(work_queue_empty, timeout=10, what="the exhausted job to leave the work queue")
    assert [e.job_id for e in await bus.outcome_events()] == [job.job_id]


async def test_an_undecodable_message_is_terminated_and_work_goes_on(
    local_settings: Settings, bus: Bus
) -> None:
    async with running_generator(local_settings()):
        await bus.js.publish(nats_names.JOBS_SUBJECT, b"\xff\xff not a protobuf")
        job = make_job()
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.WhichOneof("result") == "image"


async def test_no_reply_subject_still_publishes_the_outcome_event(local_settings: Settings, bus: Bus) -> None:
    async with running_generator(local_settings()):
        job = make_job(reply=False)
        job.ClearField("submit_time")
        await bus.submit(job)
        events: list[jobs_pb2.JobOutcome] = []

        async def published() -> bool:
            events[:] = await bus.outcome_events()
            return bool(events)

        await eventually(published, what="the outcome event")
    assert [e.job_id for e in events] == [job.job_id]
    assert events[0].WhichOneof("result") == "image"


async def test_a_job_whose_submitter_waits_publishes_no_start_event(
    local_settings: Settings, bus: Bus
) -> None:
    """JobStarted is for jobs whose status someone polls (REST); an MCP job's waiter gets progress,
    and its outcome carries the job's webhook flag for the dispatcher."""
    async with running_generator(local_settings()):
        job = make_job(report_start=False)
        job.notify_webhook = True
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.notify_webhook
    assert bus.replies.stages(job.job_id) == [GENERATING, STORING]
    assert await bus.started_events() == []
