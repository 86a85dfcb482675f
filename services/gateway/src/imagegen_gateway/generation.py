"""The generation flow that both front ends call: validate → price → reserve → publish → outcome.

Credits are held by billing before a job is queued and settled from the job's outcome event, so a
gateway that dies mid-wait loses nothing. The gateway also settles what it sees itself (a failed job
through ``SettleJob``, an abandoned one through a release) so that a client's balance is right when it
gets its answer. This module speaks the gateway's domain types; its ports (billing, the job bus, the
catalog) are Protocols, so that it is tested with small in-memory fakes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import nats.errors

from imagegen_common.ids import new_job_id
from imagegen_common.logging import prompt_preview
from imagegen_gateway.authentication import Principal
from imagegen_gateway.catalog import price, provider_reference
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
)
from imagegen_gateway.errors import (
    GatewayError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidInputError,
    ServiceUnavailableError,
)
from imagegen_gateway.jobs import JobSpec, JobUpdate
from imagegen_gateway.metrics import GENERATION_WAIT, IMAGES_SUBMITTED, WAITS_IN_FLIGHT
from imagegen_gateway.status_watch import ReservationReader, StatusWatch

log = logging.getLogger(__name__)

#: Called with the stage of a running job ("queued", "generating", "storing") and seconds waited.
ProgressCallback = Callable[[str, float], Awaitable[None]]

NOT_CHARGED = "No credits were charged."
_RELEASE_WORDS = {
    ReleaseReason.EXPIRED: "it expired",
    ReleaseReason.TIMEOUT: "it timed out",
    ReleaseReason.CANCELLED: "it was cancelled",
    ReleaseReason.NOT_QUEUED: "it could not be queued",
    ReleaseReason.OPERATOR: "an operator released it",
}
#: The longest prompt either front end takes (and the hosted API documents).
MAX_PROMPT_CHARS = 1024


class Billing(ReservationReader, Protocol):
    """What the generation flow asks of billing (``BillingClient``); the waits' status reads
    (``reservations``) go through the ``StatusWatch``, batched for every wait."""

    async def reserve(
        self, account_id: str, requests: Sequence[ReservationRequest], expire_time: datetime
    ) -> HeldBatch: ...

    async def release(self, job_id: str, reason: ReleaseReason, detail: str = "") -> Reservation | None: ...

    async def settle(self, job_id: str, result: JobResult) -> Settlement: ...


class Jobs(Protocol):
    """The job queue (``JobBus``)."""

    def watch(self, job_id: str) -> AbstractContextManager[asyncio.Queue[JobUpdate]]: ...

    async def publish(self, spec: JobSpec) -> None: ...

    async def cancel(self, job_id: str, reason: ReleaseReason) -> None: ...


class Catalog(Protocol):
    """Billing's model catalog (``ModelCatalog``)."""

    async def get(self, key: str) -> Model: ...


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One image as a client asks for it."""

    prompt: str
    model: str = ""
    width: int = 1024
    height: int = 1024
    input_image_urls: tuple[str, ...] = field(default=())
    negative_prompt: str = ""

    def fingerprint(self) -> str:
        """Hash of everything that makes the request: a retry must match it to count as a repeat."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Submission:
    """A job whose credits are held and that is on the queue (or was, for a repeat)."""

    job_id: str
    model: str
    width: int
    height: int
    credits: int
    reservation: Reservation
    deadline: datetime
    #: The account's credits right after the reservation (its cost already taken).
    credits_remaining: int
    #: This call made the reservation (and queued the job); False for an idempotent repeat, whose
    #: job belongs to the first call and must not be cancelled by this one.
    owned: bool

    @property
    def state(self) -> ReservationState:
        return self.reservation.state


@dataclass(frozen=True, slots=True)
class DeliveredImage:
    image_id: str
    image_url: str
    mime_type: str
    width: int
    height: int
    credits_used: int
    credits_remaining: int


def idempotent_job_id(account_id: str, key: str, index: int = 0) -> str:
    """The job id of a client's idempotency key: the same key of the same account gives the same job."""
    digest = hashlib.sha256(f"{account_id}\0{key}\0{index}".encode()).digest()[:16]
    return "img_" + base64.b32encode(digest).decode().rstrip("=").lower()


def failure_of(result: JobResult, fallback: str) -> GenerationFailedError:
    message = result.error_message or fallback
    code = result.error or ErrorCode.UNSPECIFIED
    return GenerationFailedError(code.value, f"{message} {NOT_CHARGED}")


class Generations:
    def __init__(
        self,
        *,
        billing: Billing,
        bus: Jobs,
        catalog: Catalog,
        status: StatusWatch,
        job_timeout: float,
        reservation_grace: float,
        poll_interval: float,
        release_patience: float = 30.0,
    ) -> None:
        self.billing = billing
        self.bus = bus
        self.catalog = catalog
        #: Billing's record of the waiting jobs, read for all of them at once (the waits' fallback).
        self.status = status
        self.job_timeout = timedelta(seconds=job_timeout)
        self.reservation_grace = timedelta(seconds=reservation_grace)
        self.poll_interval = poll_interval
        #: How long a wait that ran out keeps asking billing to release (and listening for a late
        #: reply) before it gives up without knowing whether the image was charged.
        self.release_patience = release_patience
        self._settling: set[asyncio.Task[object]] = set()

    async def submit(
        self,
        principal: Principal,
        request: ImageRequest,
        job_ids: Sequence[str],
        reply: bool = True,
        *,
        webhook_url: str = "",
        frontend: str = "mcp",
    ) -> list[Submission]:
        """Quotes, holds the credits of every job (all or none) and queues the new ones.

        A job id that already has a reservation (an idempotent repeat) is returned as it stands,
        provided the request is the same; it is not charged again. ``webhook_url`` is kept with each
        job's reservation; the outcome is posted there.
        """
        model = await self.catalog.get(request.model)
        credits = price(model, request.width, request.height, len(request.input_image_urls))
        deadline = datetime.now(UTC) + self.job_timeout
        fingerprint = request.fingerprint()
        try:
            held = await self.billing.reserve(
                principal.account_id,
                [
                    ReservationRequest(
                        job_id,
                        credits,
                        model.key,
                        request.width,
                        request.height,
                        fingerprint,
                        webhook_url,
                        prompt=request.prompt,
                    )
                    for job_id in job_ids
                ],
                expire_time=deadline + self.reservation_grace,
            )
        except ServiceUnavailableError:
            # No answer in time: billing may still have held the credits (its answer was lost, or came
            # after the deadline). Give back whatever it held; a job it never held is left alone.
            log.warning("a reservation went unanswered; releasing it", extra={"jobs": len(job_ids)})
            for job_id in job_ids:
                self._start_in_background(self.billing.release(job_id, ReleaseReason.NOT_QUEUED))
            raise
        created = set(held.created_job_ids)
        submissions = []
        for reservation in held.reservations:
            if reservation.request_fingerprint != fingerprint:
                raise InvalidInputError(
                    "this idempotency key was already used for a different request; use a new key",
                    field="idempotency_key",
                )
            submissions.append(
                Submission(
                    job_id=reservation.job_id,
                    model=model.key,
                    width=request.width,
                    height=request.height,
                    credits=reservation.amount,
                    reservation=reservation,
                    deadline=reservation.expire_time - self.reservation_grace,
                    credits_remaining=held.credits,
                    owned=reservation.job_id in created,
                )
            )
        queued = [s for s in submissions if s.owned]  # a repeat's job was queued by the first call
        try:
            for submission in queued:
                await self.bus.publish(
                    self._job(principal, request, model, submission, reply, notify_webhook=bool(webhook_url))
                )
        except (nats.errors.Error, TimeoutError) as exc:
            # Some of them may be queued (a publish whose ack was lost, or those before it): mark them
            # all cancelled, so that no generator makes them, then give every credit back.
            log.error("could not queue jobs", extra={"error": repr(exc)})
            for submission in queued:
                await self._abandon(submission.job_id, ReleaseReason.NOT_QUEUED)
            raise ServiceUnavailableError(
                f"the job queue is unavailable; please try again shortly. {NOT_CHARGED}"
            ) from exc
        IMAGES_SUBMITTED.labels(frontend=frontend).inc(len(queued))
        for submission in queued:
            log.info(
                "job queued",
                extra={
                    "job_id": submission.job_id,
                    "model": model.key,
                    "size": f"{request.width}x{request.height}",
                    "credits": submission.credits,
                    "prompt": prompt_preview(request.prompt),
                },
            )
        return submissions

    def _job(
        self,
        principal: Principal,
        request: ImageRequest,
        model: Model,
        submission: Submission,
        reply: bool,
        *,
        notify_webhook: bool,
    ) -> JobSpec:
        return JobSpec(
            job_id=submission.job_id,
            account_id=principal.account_id,
            model=model.key,
            provider_model=provider_reference(model),
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            input_image_urls=request.input_image_urls,
            deadline=submission.deadline,
            submit_time=submission.reservation.create_time,
            reply=reply,
            notify_webhook=notify_webhook,
        )

    async def generate(
        self,
        principal: Principal,
        request: ImageRequest,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
        frontend: str = "mcp",
    ) -> DeliveredImage:
        """Makes one image and waits for it. Raises a GatewayError that costs nothing on failure,
        timeout or cancellation — unless the image was made before the client gave up."""
        job_id = idempotent_job_id(principal.account_id, idempotency_key) if idempotency_key else new_job_id()
        with self.bus.watch(job_id) as updates:
            try:
                [submission] = await self.submit(principal, request, [job_id], frontend=frontend)
            except GatewayError:
                raise  # refused before anything was held, or submit gave the credits back itself
            except BaseException:
                # Cancelled while holding the credits or queueing: free them, unless the job id is an
                # idempotency key's (then the reservation may be a first call's, still running).
                if not idempotency_key:
                    await self._in_background(self._abandon(job_id, ReleaseReason.CANCELLED))
                raise
            started = time.perf_counter()
            try:
                with WAITS_IN_FLIGHT.track_inprogress():
                    result = await self._wait(submission, updates, on_progress)
                GENERATION_WAIT.labels(frontend=frontend).observe(time.perf_counter() - started)
            except GenerationTimeoutError:
                if not submission.owned:  # the first call's job: not ours to cancel; it may still finish
                    raise GenerationTimeoutError(
                        f"the image was not ready within {self.job_timeout.total_seconds():.0f} seconds; "
                        f"it is still being made: repeat the call with the same idempotency_key, or see "
                        f"GET /api/images/{job_id}"
                    ) from None
                late = await self._give_up(job_id, updates)
                if late is None:
                    raise self._timed_out() from None
                result = late
            except BaseException:  # the client went away (cancellation) or we failed: free the credits
                if submission.owned:
                    await self._in_background(self._abandon(job_id, ReleaseReason.CANCELLED))
                raise
        if result.succeeded:
            return await self._delivered(principal, submission, result)
        # billing decides what the failure means for the credits (it releases them)
        await self._in_background(self.billing.settle(submission.job_id, result))
        if result.error is ErrorCode.DEADLINE_EXCEEDED:  # the generator saw the deadline pass first
            raise self._timed_out()
        raise failure_of(result, "the image could not be generated.")

    def _timed_out(self) -> GenerationTimeoutError:
        return GenerationTimeoutError(
            f"the image was not ready within {self.job_timeout.total_seconds():.0f} seconds "
            f"and was cancelled. {NOT_CHARGED}"
        )

    async def _in_background(self, settle: Coroutine[Any, Any, object]) -> None:
        """Runs a settlement to its end even when the caller is cancelled meanwhile (a client that
        left must still get its credits back); a failure is logged, and billing's reaper frees the
        reservation at its deadline anyway."""
        with contextlib.suppress(Exception):  # logged by _settled
            await asyncio.shield(self._start_in_background(settle))

    def _start_in_background(self, settle: Coroutine[Any, Any, object]) -> asyncio.Future[object]:
        """Starts a settlement that nothing waits for (the caller has its answer already)."""
        task = asyncio.ensure_future(settle)
        self._settling.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[object]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a job failed", exc_info=task.exception())

    async def _delivered(
        self, principal: Principal, submission: Submission, result: JobResult
    ) -> DeliveredImage:
        return DeliveredImage(
            image_id=submission.job_id,
            image_url=result.image_url,
            mime_type=result.mime_type,
            width=result.width,
            height=result.height,
            credits_used=submission.credits,
            credits_remaining=submission.credits_remaining,
        )

    async def _abandon(self, job_id: str, reason: ReleaseReason) -> JobResult | None:
        """Cancels the job and frees its credits; returns its result if the image was made anyway.
        A job that has no reservation (it was never held) is left alone."""
        try:
            await self.bus.cancel(job_id, reason)
        except (nats.errors.Error, TimeoutError):
            log.warning("could not publish a job cancellation", extra={"job_id": job_id})
        reservation = await self.billing.release(job_id, reason)
        if (
            reservation is not None
            and reservation.state is ReservationState.CAPTURED
            and reservation.result is not None
            and reservation.result.succeeded
        ):
            return reservation.result
        return None

    async def _wait(
        self,
        submission: Submission,
        updates: asyncio.Queue[JobUpdate],
        on_progress: ProgressCallback | None,
    ) -> JobResult:
        """The job's result, from its reply subject or, as a fallback, from billing's record of it.

        Core NATS delivers a reply at most once; a repeat of an idempotent request waits for a job
        that replies elsewhere. The status watch, which reads billing's record of every waiting job
        once per poll interval, covers both.
        """
        if submission.state is not ReservationState.HELD:
            return self._settled_result(submission.reservation)
        started = time.monotonic()
        stage = "queued"
        if on_progress:
            await on_progress(stage, 0.0)
        # The reply and billing's record are awaited side by side. The record is a fallback,
        # best-effort (the watch's reads may fail or stall without ending a wait, and never keep the
        # reply unread); the deadline alone ends a wait.
        reply: asyncio.Future[JobUpdate] | None = None
        with self.status.watch(submission.job_id) as settled:
            try:
                while True:
                    remaining = (submission.deadline - datetime.now(UTC)).total_seconds()
                    if remaining <= 0:
                        raise GenerationTimeoutError("deadline passed")
                    reply = reply or asyncio.ensure_future(updates.get())
                    pending: set[asyncio.Future[Any]] = {reply, settled}
                    done, _ = await asyncio.wait(
                        pending,
                        timeout=min(self.poll_interval, remaining),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if reply in done:
                        update, reply = reply.result(), None
                        if isinstance(update, JobResult):
                            return update
                        stage = update.stage or stage
                    elif settled in done:
                        return self._settled_result(settled.result())
                    if on_progress:
                        await on_progress(stage, time.monotonic() - started)
            finally:
                _stop_waiting(updates, reply)

    async def _give_up(self, job_id: str, updates: asyncio.Queue[JobUpdate]) -> JobResult | None:
        """Ends a wait that ran out, decided by billing's answer to the release: returns the result
        if the job was settled anyway (an image made just in time was captured: the client paid for
        it and gets it), None only once billing confirmed that nothing is charged.

        While billing cannot answer, a reply that still comes is taken instead (an image: billing
        captures it from its outcome event; a failure: billing releases it). If billing stays away
        longer than ``release_patience``, the client is told that the outcome is not known yet and
        where to look it up, never that nothing was charged.
        """
        try:
            await self.bus.cancel(job_id, ReleaseReason.TIMEOUT)
        except (nats.errors.Error, TimeoutError):
            log.warning("could not publish a job cancellation", extra={"job_id": job_id})
        give_up_at = time.monotonic() + self.release_patience
        delay = min(0.5, self.poll_interval)
        while True:
            try:
                reservation = await self.billing.release(job_id, ReleaseReason.TIMEOUT)
            except GatewayError as error:
                log.warning("release not confirmed; retrying", extra={"job_id": job_id, "error": str(error)})
            else:
                if reservation is None or reservation.state is not ReservationState.CAPTURED:
                    return None  # billing confirmed: nothing is charged
                return self._settled_result(reservation)
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise ServiceUnavailableError(
                    f"the image was not ready in time and billing could not confirm its cancellation; "
                    f"you are charged only if it was made: see GET /api/images/{job_id}"
                )
            with contextlib.suppress(TimeoutError):
                update = await asyncio.wait_for(updates.get(), timeout=min(delay, left))
                if isinstance(update, JobResult):
                    return update
            delay = min(delay * 2, 5.0)

    @staticmethod
    def _settled_result(reservation: Reservation) -> JobResult:
        """The result of a job that billing settled before this wait saw its outcome."""
        result = reservation.result
        if result is not None and (result.succeeded or result.error is not None):
            return result
        why = _RELEASE_WORDS.get(reservation.release_reason, "the job did not finish")
        return JobResult(error=ErrorCode.UNSPECIFIED, error_message=f"The image was not generated ({why}).")


def _stop_waiting(updates: asyncio.Queue[JobUpdate], reply: asyncio.Future[JobUpdate] | None) -> None:
    if reply is None:
        return
    if reply.done() and not reply.cancelled():
        updates.put_nowait(reply.result())  # taken off the queue but not read: keep it there
    reply.cancel()
