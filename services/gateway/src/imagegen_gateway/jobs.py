"""The gateway's side of NATS: publish jobs, receive their updates on this instance's reply subjects,
and cancel them. The jobs' protobuf payloads stay here: callers speak ``JobSpec``, ``Progress`` and
``JobResult``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names, timestamps, tracing
from imagegen_common.ids import random_id
from imagegen_common.jetstream import ensure_key_value, ensure_stream
from imagegen_gateway import wire
from imagegen_gateway.domain import JobResult, ReleaseReason

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
STAGE_NAMES = {
    jobs_pb2.JobProgress.STAGE_QUEUED: "queued",
    jobs_pb2.JobProgress.STAGE_GENERATING: "generating",
    jobs_pb2.JobProgress.STAGE_STORING: "storing",
}
#: What the generators are told when a job is called off (free text for their logs).
_CANCEL_TEXT = {
    ReleaseReason.CANCELLED: "cancelled",
    ReleaseReason.TIMEOUT: "timeout",
    ReleaseReason.NOT_QUEUED: "not queued: job queue unavailable",
}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to queue."""

    job_id: str
    account_id: str
    model: str
    provider_model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    input_image_urls: tuple[str, ...]
    deadline: datetime
    submit_time: datetime
    #: Reply on this instance's subject (a waiting MCP call); else the generator reports the start.
    reply: bool
    notify_webhook: bool


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job's stage ("queued", "generating", "storing"; None when not one we know)."""

    stage: str | None


JobUpdate = Progress | JobResult


class JobBus:
    """Publishes jobs and routes each update that arrives on a reply subject to its waiter."""

    def __init__(self, nc: NATS, stream_replicas: int = 1) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.instance = random_id("gw", 8)
        self.stream_replicas = stream_replicas
        self._waiters: dict[str, list[asyncio.Queue[JobUpdate]]] = {}
        self._subscription: Subscription | None = None
        self._cancelled: KeyValue | None = None

    async def start(self) -> None:
        await ensure_stream(self.js, nats_names.jobs_stream_config(self.stream_replicas))
        self._cancelled = await ensure_key_value(
            self.js, nats_names.cancelled_jobs_kv_config(self.stream_replicas)
        )
        self._subscription = await self.nc.subscribe(
            nats_names.reply_wildcard(self.instance), cb=self._on_reply
        )

    async def close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    def reply_subject(self, job_id: str) -> str:
        return nats_names.reply_subject(self.instance, job_id)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Queue[JobUpdate]]:
        """Updates of a job, registered before it is published so that none is missed."""
        queue: asyncio.Queue[JobUpdate] = asyncio.Queue()
        self._waiters.setdefault(job_id, []).append(queue)
        try:
            yield queue
        finally:
            queues = self._waiters.get(job_id, [])
            queues.remove(queue)
            if not queues:
                self._waiters.pop(job_id, None)

    async def _on_reply(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        queues = self._waiters.get(job_id)
        if not queues:
            return  # the waiter gave up; billing settles from the outcome event
        update = jobs_pb2.JobUpdate()
        try:
            update.ParseFromString(msg.data)
        except Exception:  # a malformed message must not kill the subscription
            log.warning("malformed job update", extra={"job_id": job_id})
            return
        event: JobUpdate = (
            wire.outcome_result(update.outcome)
            if update.HasField("outcome")
            else Progress(STAGE_NAMES.get(update.progress.stage))
        )
        for queue in queues:
            queue.put_nowait(event)

    async def publish(self, spec: JobSpec) -> None:
        """Puts a job on the work queue; the job id deduplicates a repeated publish."""
        job = jobs_pb2.GenerationJob(
            job_id=spec.job_id,
            account_id=spec.account_id,
            model=spec.model,
            provider_model=spec.provider_model,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            width=spec.width,
            height=spec.height,
            input_image_urls=list(spec.input_image_urls),
            deadline=timestamps.from_datetime(spec.deadline),
            reply_subject=self.reply_subject(spec.job_id) if spec.reply else "",
            submit_time=timestamps.from_datetime(spec.submit_time),
            report_start=not spec.reply,  # nobody waits on a reply: the submitter polls the status
            notify_webhook=spec.notify_webhook,
        )
        # The trace context goes with the job: the generator's spans continue this trace.
        with tracing.producing(nats_names.JOBS_SUBJECT, {"Nats-Msg-Id": job.job_id}) as headers:
            await self.js.publish(
                nats_names.JOBS_SUBJECT,
                job.SerializeToString(),
                timeout=PUBLISH_TIMEOUT_SECONDS,
                headers=headers,
            )

    async def cancel(self, job_id: str, reason: ReleaseReason) -> None:
        """Asks the generators not to start the job, or to stop it if one runs it."""
        text = _CANCEL_TEXT.get(reason, "cancelled")
        if self._cancelled is not None:
            await self._cancelled.put(job_id, text.encode())
        await self.nc.publish(
            nats_names.CANCEL_SUBJECT, jobs_pb2.CancelJob(job_id=job_id, reason=text).SerializeToString()
        )

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)
