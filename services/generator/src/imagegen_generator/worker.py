"""One job, from a decoded GenerationJob to the decision of what to do with it: an outcome to
publish, or a retry later. No NATS here: the consumer (consumer.py) acks, naks and publishes.

Order of a job: on a redelivery, is its image stored already (an earlier delivery did the work but
its outcome was not published)? then its outcome from the stored image. Otherwise: deadline passed?
cancelled? valid for its model? then JobStarted, progress "generating", input images and the
provider call (bounded by the deadline, stopped by a cancel), progress "storing", normalise and
store, and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common.catalog import Catalog, CatalogError, Model
from imagegen_common.images import MIME_BY_EXTENSION, ImageStore, image_filename, image_url
from imagegen_common.logging import prompt_preview
from imagegen_common.messaging import Backoff
from imagegen_common.timestamps import duration, from_seconds, seconds_of
from imagegen_common.tracing import traced
from imagegen_generator import metrics
from imagegen_generator.cpu import CpuPool
from imagegen_generator.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    JobError,
    ProviderError,
)
from imagegen_generator.inputs import InputImageLoader
from imagegen_generator.normalize import (
    MIME_TYPES,
    ImageFormat,
    NormalizedImage,
    UnreadableImage,
    normalize_image,
)
from imagegen_generator.providers.base import GenerationRequest, Provider, ProviderOutput

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobEvents(Protocol):
    """Where a running job reports (JetStream and the job's reply subject)."""

    async def started(self, event: jobs_pb2.JobStarted) -> None: ...

    async def progress(self, reply_subject: str, progress: jobs_pb2.JobProgress) -> None: ...


class CancelledJobs(Protocol):
    async def is_cancelled(self, job_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Finished:
    """The job is over: publish this outcome, then ack."""

    outcome: jobs_pb2.JobOutcome


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A retryable failure with deliveries left: hand the job back after ``delay_seconds``."""

    delay_seconds: float
    error: JobError


Decision = Finished | RetryLater


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    public_base_url: str
    image_format: ImageFormat = "png"
    webp_quality: int = 90
    retry_delay_seconds: float = 2.0


def failure_outcome(
    job: jobs_pb2.GenerationJob, attempt: int, error: JobError, finish_time: float
) -> jobs_pb2.JobOutcome:
    outcome = jobs_pb2.JobOutcome(
        job_id=job.job_id,
        account_id=job.account_id,
        model=job.model,
        notify_webhook=job.notify_webhook,
        failure=jobs_pb2.JobFailure(code=error.code, message=error.message),
        finish_time=from_seconds(finish_time),
        attempt=attempt,
    )
    if job.HasField("submit_time"):
        outcome.timings.total.CopyFrom(duration(finish_time - seconds_of(job.submit_time)))
    return outcome


#: Longest delay before a retryable failure is tried again (the first is the configured delay).
RETRY_MAX_SECONDS = 60.0


def retry_backoff(first_seconds: float) -> Backoff:
    """Exponential: first, 2 x first, 4 x first … after the first, second, third delivery, capped."""
    return Backoff(first_seconds=first_seconds, max_seconds=max(first_seconds, RETRY_MAX_SECONDS))


class JobRunner:
    def __init__(
        self,
        *,
        catalog: Catalog,
        provider: Provider,
        store: ImageStore,
        inputs: InputImageLoader,
        events: JobEvents,
        cancelled_jobs: CancelledJobs,
        options: RunnerOptions,
        clock: Callable[[], float] = time.time,
        cpu: CpuPool | None = None,
    ) -> None:
        self._catalog = catalog
        self._cpu = cpu or CpuPool()
        self._provider = provider
        self._store = store
        self._inputs = inputs
        self._events = events
        self._cancelled_jobs = cancelled_jobs
        self._options = options
        self._clock = clock
        self._retry_backoff = retry_backoff(options.retry_delay_seconds)

    async def run(
        self, job: jobs_pb2.GenerationJob, attempt: int, max_attempts: int, cancel: asyncio.Event
    ) -> Decision:
        """Runs one delivery of a job. ``cancel`` is set when a CancelJob for it arrives."""
        took = self._clock()
        if job.HasField("submit_time") and attempt == 1:
            metrics.QUEUE_WAIT.observe(max(0.0, took - seconds_of(job.submit_time)))
        extra = {"job_id": job.job_id, "model": job.model, "attempt": attempt}
        try:
            outcome = await self._run(job, attempt, cancel, took)
        except JobError as error:
            return self._decide(job, attempt, max_attempts, error, extra)
        except Exception:
            log.exception("job failed on our side", extra=extra)
            internal = InternalError("Something went wrong on our side; no credits are taken for this job.")
            return self._decide(job, attempt, max_attempts, internal, extra)
        log.info("job succeeded", extra=extra)
        return Finished(outcome)

    def _decide(
        self,
        job: jobs_pb2.GenerationJob,
        attempt: int,
        max_attempts: int,
        error: JobError,
        extra: dict[str, Any],
    ) -> Decision:
        now = self._clock()
        delay = self._retry_backoff.delay(attempt)
        deadline = seconds_of(job.deadline) if job.HasField("deadline") else None
        if error.retryable and attempt < max_attempts and (deadline is None or now + delay < deadline):
            log.warning(
                "job failed, will be retried",
                extra={**extra, "code": type(error).__name__, "retry_in_seconds": delay},
            )
            return RetryLater(delay, error)
        log.info(
            "job failed",
            extra={**extra, "code": jobs_pb2.ErrorCode.Name(error.code), "reason": error.message},
        )
        return Finished(failure_outcome(job, attempt, error, now))

    async def _run(
        self, job: jobs_pb2.GenerationJob, attempt: int, cancel: asyncio.Event, took: float
    ) -> jobs_pb2.JobOutcome:
        if attempt > 1:
            done = await self._outcome_of_stored_image(job, attempt, took)
            if done is not None:
                return done
        deadline = seconds_of(job.deadline) if job.HasField("deadline") else None
        if deadline is not None and took >= deadline:
            raise DeadlineExceeded("The job's deadline passed before it could start.")
        if cancel.is_set() or await self._is_cancelled(job.job_id):
            raise Cancelled("The job was cancelled before it started.")
        model = self._validate(job)
        log.info(
            "job started",
            extra={
                "job_id": job.job_id,
                "model": job.model,
                "attempt": attempt,
                "size": f"{job.width}x{job.height}",
                "input_images": len(job.input_image_urls),
                "prompt": prompt_preview(job.prompt),
            },
        )
        if job.report_start:
            await self._events.started(
                jobs_pb2.JobStarted(
                    job_id=job.job_id,
                    account_id=job.account_id,
                    start_time=from_seconds(took),
                    attempt=attempt,
                )
            )
        await self._progress(job, jobs_pb2.JobProgress.STAGE_GENERATING, "generating the image")

        provider_started = time.monotonic()
        output = await self._guarded(self._generate(job, model, deadline), deadline, cancel)
        provider_seconds = time.monotonic() - provider_started
        metrics.PROVIDER_DURATION.labels(provider=self._provider.name, model=model.key).observe(
            provider_seconds
        )

        await self._progress(job, jobs_pb2.JobProgress.STAGE_STORING, "storing the image")
        storing_started = time.monotonic()
        normalized = await self._normalize(output.data, job)
        try:
            stored = await self._store.put(job.job_id, normalized.data, normalized.mime_type)
        except Exception as exc:
            log.exception("image could not be stored", extra={"job_id": job.job_id})
            raise InternalError("The image could not be stored; no credits are taken for this job.") from exc
        storage_seconds = time.monotonic() - storing_started

        submit = seconds_of(job.submit_time) if job.HasField("submit_time") else took
        return self._success_outcome(
            job,
            attempt,
            took,
            jobs_pb2.GeneratedImage(
                image_id=job.job_id,
                url=image_url(self._options.public_base_url, stored.filename),
                mime_type=normalized.mime_type,
                width=normalized.width,
                height=normalized.height,
                size_bytes=len(normalized.data),
            ),
            jobs_pb2.JobTimings(
                queue_wait=duration(took - submit),
                provider=duration(provider_seconds),
                storage=duration(storage_seconds),
            ),
        )

    def _success_outcome(
        self,
        job: jobs_pb2.GenerationJob,
        attempt: int,
        took: float,
        image: jobs_pb2.GeneratedImage,
        timings: jobs_pb2.JobTimings,
    ) -> jobs_pb2.JobOutcome:
        """The outcome of a job with its image; ``timings`` gets its total (submit to now) here."""
        finish = self._clock()
        submit = seconds_of(job.submit_time) if job.HasField("submit_time") else took
        timings.total.CopyFrom(duration(finish - submit))
        return jobs_pb2.JobOutcome(
            job_id=job.job_id,
            account_id=job.account_id,
            model=job.model,
            notify_webhook=job.notify_webhook,
            image=image,
            timings=timings,
            finish_time=from_seconds(finish),
            attempt=attempt,
        )

    async def _outcome_of_stored_image(
        self, job: jobs_pb2.GenerationJob, attempt: int, took: float
    ) -> jobs_pb2.JobOutcome | None:
        """The success outcome of a job whose image an earlier delivery stored, None when there is none.

        Stored images are served as immutable: making and storing it again would change the bytes
        behind a URL that clients may have cached, and pay the provider twice. The deadline and a
        cancel are not looked at: the earlier delivery was past both once it had stored the image.
        """
        configured = MIME_TYPES[self._options.image_format]
        for mime_type in (configured, *(m for m in MIME_BY_EXTENSION.values() if m != configured)):
            found = await self._store.info(image_filename(job.job_id, mime_type))
            if found is None:
                continue
            log.info(
                "job's image stored by an earlier delivery: publishing its outcome",
                extra={"job_id": job.job_id, "model": job.model, "attempt": attempt},
            )
            return self._success_outcome(
                job,
                attempt,
                took,
                jobs_pb2.GeneratedImage(
                    image_id=job.job_id,
                    url=image_url(self._options.public_base_url, found.filename),
                    mime_type=found.mime_type,
                    # Stored images are normalised to exactly the job's size.
                    width=job.width,
                    height=job.height,
                    size_bytes=found.size_bytes,
                ),
                jobs_pb2.JobTimings(),
            )
        return None

    def _validate(self, job: jobs_pb2.GenerationJob) -> Model:
        try:
            model = self._catalog.get(job.model)
            model.check_inputs(len(job.input_image_urls))
            model.dimensions.check(model.key, job.width, job.height)
        except CatalogError as exc:
            raise InvalidInput(str(exc)) from None
        if not job.prompt.strip():
            raise InvalidInput("The prompt is empty.")
        return model

    @traced("generator.provider")
    async def _generate(
        self, job: jobs_pb2.GenerationJob, model: Model, deadline: float | None
    ) -> ProviderOutput:
        images = await self._inputs.load_all(list(job.input_image_urls))
        request = GenerationRequest(
            job_id=job.job_id,
            model=model,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            input_images=images,
            deadline=deadline,
            provider_model=job.provider_model,
        )
        return await self._provider.generate(request)

    @traced("generator.normalize")
    async def _normalize(self, data: bytes, job: jobs_pb2.GenerationJob) -> NormalizedImage:
        try:
            # Decoding and encoding are CPU work: off the event loop, which keeps pulling and acking.
            return await self._cpu.run(
                normalize_image,
                data,
                job.width,
                job.height,
                self._options.image_format,
                self._options.webp_quality,
            )
        except UnreadableImage:
            raise ProviderError("The model returned a file that is not a readable image.") from None

    async def _guarded(
        self, work: Coroutine[Any, Any, T], deadline: float | None, cancel: asyncio.Event
    ) -> T:
        """Runs work until it ends, the deadline passes (DeadlineExceeded) or cancel is set (Cancelled).
        Either way the work is cancelled and awaited, so that the provider stops its prediction."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(cancel.wait())
        loop = asyncio.get_running_loop()
        when = None if deadline is None else loop.time() + (deadline - self._clock())
        try:
            async with asyncio.timeout_at(when):
                await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise DeadlineExceeded("The job's deadline passed before the image was made.") from None
        finally:
            watcher.cancel()
            await _cancel_and_wait(task)
        if not task.done() or task.cancelled():
            raise Cancelled("The job was cancelled.")
        return task.result()

    async def _progress(
        self, job: jobs_pb2.GenerationJob, stage: jobs_pb2.JobProgress.Stage.ValueType, text: str
    ) -> None:
        if job.reply_subject:
            await self._events.progress(
                job.reply_subject, jobs_pb2.JobProgress(job_id=job.job_id, stage=stage, message=text)
            )

    async def _is_cancelled(self, job_id: str) -> bool:
        try:
            return await self._cancelled_jobs.is_cancelled(job_id)
        except Exception:  # best effort: a job is not failed because the lookup failed
            log.warning("cancelled-jobs lookup failed", extra={"job_id": job_id}, exc_info=True)
            return False


async def _cancel_and_wait(task: asyncio.Future[Any]) -> None:
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
