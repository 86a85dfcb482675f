"""Publish GenerationJobs and read what became of them, on a real NATS (tests of any service)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names
from imagegen_common.ids import new_job_id
from imagegen_common.timestamps import from_seconds
from imagegen_testing.polling import eventually

#: Instance part of the reply subjects of test jobs: imagegen.replies.test.<job id>
REPLY_INSTANCE = "test"


def make_job(
    model: str = "flux-schnell",
    width: int = 768,
    height: int = 512,
    *,
    prompt: str = "a lighthouse on a cliff at dusk",
    input_image_urls: Iterable[str] = (),
    deadline_in: float = 120.0,
    reply: bool = True,
    job_id: str | None = None,
    report_start: bool = True,
) -> jobs_pb2.GenerationJob:
    job_id = job_id or new_job_id()
    now = time.time()
    return jobs_pb2.GenerationJob(
        job_id=job_id,
        account_id="acc_test",
        model=model,
        prompt=prompt,
        width=width,
        height=height,
        input_image_urls=list(input_image_urls),
        deadline=from_seconds(now + deadline_in),
        submit_time=from_seconds(now),
        reply_subject=nats_names.reply_subject(REPLY_INSTANCE, job_id) if reply else "",
        report_start=report_start,
    )


@dataclass
class Replies:
    """Every JobUpdate sent on this test's reply subjects, by job id."""

    updates: dict[str, list[jobs_pb2.JobUpdate]] = field(default_factory=lambda: defaultdict(list))

    def outcomes(self, job_id: str) -> list[jobs_pb2.JobOutcome]:
        return [u.outcome for u in self.updates[job_id] if u.HasField("outcome")]

    def stages(self, job_id: str) -> list[int]:
        return [u.progress.stage for u in self.updates[job_id] if u.HasField("progress")]

    async def outcome(self, job_id: str, timeout: float = 30.0) -> jobs_pb2.JobOutcome:
        await eventually(
            lambda: bool(self.outcomes(job_id)), timeout=timeout, what=f"the outcome of {job_id}"
        )
        return self.outcomes(job_id)[0]


@dataclass
class Bus:
    """A test's view of the job flow: submit jobs and cancels, read replies and events."""

    nc: Client
    js: JetStreamContext
    replies: Replies

    async def submit(self, job: jobs_pb2.GenerationJob) -> None:
        await self.js.publish(
            nats_names.JOBS_SUBJECT,
            job.SerializeToString(),
            stream=nats_names.JOBS_STREAM,
            headers={"Nats-Msg-Id": job.job_id},
        )

    async def cancel(self, job_id: str, *, mark: bool = True) -> None:
        if mark:
            kv = await self.js.key_value(nats_names.CANCELLED_JOBS_BUCKET)
            await kv.put(job_id, b"cancelled")
        await self.nc.publish(
            nats_names.CANCEL_SUBJECT, jobs_pb2.CancelJob(job_id=job_id, reason="test").SerializeToString()
        )
        await self.nc.flush()

    async def events(self, subject: str) -> list[Msg]:
        """Every message on an events subject so far."""
        psub = await self.js.pull_subscribe(
            subject,
            stream=nats_names.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10.0
            ),
        )
        messages: list[Msg] = []
        try:
            while True:
                try:
                    batch = await psub.fetch(batch=500, timeout=0.5)
                except TimeoutError:  # nats-py raises its own subclass or asyncio's
                    return messages
                messages.extend(batch)
        finally:
            await psub.unsubscribe()

    async def outcome_events(self) -> list[jobs_pb2.JobOutcome]:
        return [jobs_pb2.JobOutcome.FromString(m.data) for m in await self.events(nats_names.OUTCOME_SUBJECT)]

    async def started_events(self) -> list[jobs_pb2.JobStarted]:
        return [jobs_pb2.JobStarted.FromString(m.data) for m in await self.events(nats_names.STARTED_SUBJECT)]


async def connect_bus(url: str) -> Bus:
    """A client subscribed to the test reply subjects; the jobs and events streams exist afterwards
    (as the gateway makes sure of before it publishes)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    for config in (nats_names.jobs_stream_config(), nats_names.events_stream_config()):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
    replies = Replies()

    async def on_reply(msg: Msg) -> None:
        update = jobs_pb2.JobUpdate.FromString(msg.data)
        job_id = update.outcome.job_id if update.HasField("outcome") else update.progress.job_id
        replies.updates[job_id].append(update)

    await nc.subscribe(nats_names.reply_wildcard(REPLY_INSTANCE), cb=on_reply)
    return Bus(nc, js, replies)
