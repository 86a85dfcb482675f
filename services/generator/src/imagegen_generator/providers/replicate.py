"""Replicate, through the official ``replicate`` client.

A prediction is created with ``Prefer: wait`` (held open up to 60 s, never past the job's remaining
time) and polled when it is still running after that; the read timeout of that request is the wait
plus an ordinary request's timeout. Polls (GET, idempotent) and the output download are retried
with exponential backoff on 429, 5xx and network errors, honouring ``Retry-After``. A create (POST)
is retried only when Replicate provably did not start a prediction: a 429, or a connection that was
never made. A 5xx, a timeout or a connection lost after the request was sent may come after the
prediction was created, and a blind retry would pay for two; those fail the delivery as
ProviderUnavailable, and the job is tried again on a later delivery. A prediction is cancelled
upstream when its job is cancelled or runs past its deadline, also when that happens while the
create request is still in flight (the cancel is sent once its id is known, at most the wait later).
The output file is downloaded right away: Replicate's file URLs expire after an hour. Both the API and
the file downloads go through a ShardedTransport: a connection per job, in small pools.

The model called is the job's ``provider_model`` when it names one, otherwise the catalog's; the
catalog model says how the input is built either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError
from replicate.identifier import ModelVersionIdentifier
from replicate.prediction import Prediction
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from imagegen_common.logging import redact
from imagegen_generator import metrics
from imagegen_generator.cpu import CpuPool
from imagegen_generator.errors import (
    ContentRejected,
    InvalidInput,
    JobError,
    ProviderError,
    ProviderUnavailable,
)
from imagegen_generator.providers.base import GenerationRequest, ProviderOutput
from imagegen_generator.providers.http_pool import ShardedTransport
from imagegen_generator.replicate_input import build_input

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
_SAFETY_WORDS = ("nsfw", "safety", "sensitive", "content policy", "flagged", "inappropriate")
_CANCEL_TIMEOUT_SECONDS = 10.0
_SPARE_CONNECTIONS = 16
_CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ReplicateOptions:
    api_token: str
    base_url: str = "https://api.replicate.com"
    #: ``Prefer: wait`` of a create: Replicate's maximum, as the official client's ``replicate.run``.
    wait_seconds: int = 60
    poll_interval_seconds: float = 1.0
    max_retries: int = 4
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    #: Timeout of one request; a create's read timeout is its wait longer.
    request_timeout_seconds: float = 30.0
    output_max_bytes: int = 64 * 1024 * 1024
    #: Connections to Replicate (and to its file host) at most: one per job the replica runs at once,
    #: so that nothing below ``IMAGEGEN_GENERATOR_CONCURRENCY`` caps the predictions in flight.
    max_connections: int = 100


class RetryableStatus(Exception):
    """A 429 or 5xx answer, raised by a response hook so that its Retry-After is not lost."""

    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None


#: Failures before any byte of the request was sent: the request never reached Replicate.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retry_reason(exc: BaseException) -> str | None:
    """The metric label of a retryable failure of an idempotent request, None for one that retrying
    cannot fix."""
    if isinstance(exc, RetryableStatus):
        return "rate_limited" if exc.status == 429 else "server_error"
    if isinstance(exc, httpx.TransportError):
        return "network"
    return None


def create_retry_reason(exc: BaseException) -> str | None:
    """Like retry_reason, for a create: only failures after which no prediction can exist."""
    if isinstance(exc, RetryableStatus):
        return "rate_limited" if exc.status == 429 else None
    if isinstance(exc, _NOT_SENT):
        return "network"
    return None


async def _raise_retryable(response: httpx.Response) -> None:
    if response.status_code == 429 or response.status_code >= 500:
        await response.aread()
        detail = ""
        with contextlib.suppress(ValueError):
            body = response.json()
            detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
        raise RetryableStatus(
            response.status_code, parse_retry_after(response.headers.get("retry-after")), detail
        )


def classify_failure(error: str | None) -> JobError:
    """The JobError of a prediction that ended in ``failed``."""
    text = (error or "").lower()
    if any(word in text for word in _SAFETY_WORDS):
        return ContentRejected("The provider's safety filter rejected the prompt or the image.")
    return ProviderError("The model failed to make the image; try again or change the prompt.")


def classify_api_error(exc: ReplicateError) -> JobError:
    """The JobError of a 4xx answer from Replicate's API (5xx and 429 are retried before this)."""
    detail = redact(exc.detail or exc.title or "")[:300]
    if any(word in detail.lower() for word in _SAFETY_WORDS):
        return ContentRejected("The provider's safety filter rejected the prompt or the image.")
    if exc.status in (400, 422):
        return InvalidInput(
            f"The model refused the input: {detail}" if detail else "The model refused the input."
        )
    if exc.status in (401, 403):
        return ProviderMisconfigured("The image provider is not available right now.")
    if exc.status == 404:
        return ProviderError("The model was not found at the provider.")
    return ProviderError(f"The provider refused the request (HTTP {exc.status}).")


class ProviderMisconfigured(ProviderUnavailable):
    """Our credentials were refused: retrying cannot help, an operator must."""

    retryable = False


class ReplicateProvider:
    name = "replicate"

    def __init__(
        self,
        options: ReplicateOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cpu: CpuPool | None = None,
    ) -> None:
        self.options = options
        self._cpu = cpu or CpuPool()
        # httpx's default pool holds 100 connections: the 101st prediction of a replica would wait
        # for a free one, however many jobs the replica runs. A margin for cancels and downloads.
        connections = options.max_connections + _SPARE_CONNECTIONS
        self.api_transport = transport or ShardedTransport(connections)
        self.download_transport = ShardedTransport(connections)
        self._timeout = httpx.Timeout(options.request_timeout_seconds, connect=_CONNECT_TIMEOUT_SECONDS)
        extra: dict[str, Any] = {
            "event_hooks": {"request": [self._time_out_after_the_wait], "response": [_raise_retryable]}
        }
        self._client = ReplicateClient(
            api_token=options.api_token,
            base_url=options.base_url,
            timeout=self._timeout,
            transport=self.api_transport,
            **extra,
        )
        # Output files are fetched without our token: they live on another host than the API.
        self._downloads = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=True,
            event_hooks={"response": [_raise_retryable]},
            transport=self.download_transport,
        )
        self._cleanups: set[asyncio.Task[None]] = set()
        self._backoff = wait_exponential_jitter(
            multiplier=options.retry_initial_seconds,
            jitter=options.retry_initial_seconds,
            max=options.retry_max_seconds,
        )

    async def generate(self, request: GenerationRequest) -> ProviderOutput:
        reference = request.provider_model or request.model.replicate.reference
        try:
            model = ModelVersionIdentifier.parse(reference)
        except ValueError:
            raise ProviderError("The job names no valid model of the provider.") from None
        # Input images become base64 data URIs (up to 10 x 20 MB): off the event loop.
        payload = await self._cpu.run(build_input, request.model, request)
        wait = self._wait_seconds(request)
        creating = asyncio.ensure_future(
            self._retrying(lambda: self._create(model, payload, wait), create_retry_reason)
        )
        try:
            # Shielded: a cancelled job must not lose the prediction id, or it could not cancel it.
            prediction = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._cancel_when_created(creating)
            raise
        log.info(
            "prediction created",
            extra={"job_id": request.job_id, "prediction_id": prediction.id, "status": prediction.status},
        )
        try:
            while prediction.status not in TERMINAL:
                await asyncio.sleep(self.options.poll_interval_seconds)
                prediction = await self._retrying(partial(self._client.predictions.async_get, prediction.id))
        except asyncio.CancelledError:
            self._track(asyncio.ensure_future(self._cancel(prediction.id)))
            raise
        return await self._result(request, prediction)

    async def _time_out_after_the_wait(self, request: httpx.Request) -> None:
        """Gives a ``Prefer: wait=N`` request N seconds more than an ordinary one to answer.

        The replicate client sets such a request's read timeout to N + 0.5 s: an answer held the
        whole wait that takes longer than half a second to arrive would time out, and a create that
        timed out is not retried (the prediction may exist); the job would be tried again later."""
        wait = prefer_wait_seconds(request.headers.get("prefer"))
        if wait is not None:
            read = wait + self.options.request_timeout_seconds
            timeout = httpx.Timeout(
                self.options.request_timeout_seconds, connect=_CONNECT_TIMEOUT_SECONDS, read=read
            )
            request.extensions["timeout"] = timeout.as_dict()

    def _wait_seconds(self, request: GenerationRequest) -> int:
        # Hold the create request no longer than the job may run, so that its id is known in time.
        if request.deadline is None:
            return self.options.wait_seconds
        remaining = request.deadline - time.time()
        return max(1, min(self.options.wait_seconds, math.floor(remaining)))

    async def _create(self, model: ModelVersionIdentifier, payload: dict[str, Any], wait: int) -> Prediction:
        owner, name, version = model
        try:
            if version:
                return await self._client.predictions.async_create(version=version, input=payload, wait=wait)
            return await self._client.models.predictions.async_create(
                model=(owner, name), input=payload, wait=wait
            )
        except ReplicateError as exc:
            raise classify_api_error(exc) from None

    async def _result(self, request: GenerationRequest, prediction: Prediction) -> ProviderOutput:
        if prediction.status == "failed":
            log.warning(
                "prediction failed",
                extra={
                    "job_id": request.job_id,
                    "prediction_id": prediction.id,
                    "error": redact(str(prediction.error or ""))[:500],
                },
            )
            raise classify_failure(str(prediction.error or ""))
        if prediction.status == "canceled":
            raise ProviderError("The provider cancelled the prediction.")
        url = first_output_url(prediction.output)
        if url is None:
            raise ProviderError("The model returned no image.")
        data, content_type = await self._retrying(lambda: self._download(url))
        return ProviderOutput(data, content_type)

    async def _download(self, url: str) -> tuple[bytes, str]:
        if url.startswith("data:"):
            return await self._decode_data_uri(url)
        async with self._downloads.stream("GET", url) as response:
            if response.status_code != 200:
                raise ProviderError(
                    f"The model's image could not be downloaded (HTTP {response.status_code})."
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.options.output_max_bytes:
                    raise ProviderError("The model's image is larger than allowed.")
            return bytes(body), response.headers.get("content-type", "").split(";")[0]

    async def _decode_data_uri(self, url: str) -> tuple[bytes, str]:
        header, _, encoded = url.partition(",")
        # 4 base64 characters per 3 bytes: refuse an oversized image before decoding it.
        if len(encoded) // 4 * 3 > self.options.output_max_bytes + 3:
            raise ProviderError("The model's image is larger than allowed.")
        try:
            data = await self._cpu.run(base64.b64decode, encoded)
        except binascii.Error:
            raise ProviderError("The model returned an unreadable data URI.") from None
        if len(data) > self.options.output_max_bytes:
            raise ProviderError("The model's image is larger than allowed.")
        return data, header.removeprefix("data:").split(";")[0]

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        reason_of: Callable[[BaseException], str | None] = retry_reason,
    ) -> T:
        """Runs call, retrying the failures ``reason_of`` names a reason for; raises
        ProviderUnavailable when they persist or for a 429/5xx/network failure it does not retry."""
        backoff = self._backoff

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
                return min(exc.retry_after, self.options.retry_max_seconds)
            return float(backoff(state))

        def count(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = reason_of(exc) if exc else None
            metrics.PROVIDER_RETRIES.labels(reason=reason or "network").inc()
            log.info(
                "retrying a Replicate request", extra={"reason": reason, "attempt": state.attempt_number}
            )

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda exc: reason_of(exc) is not None),
                stop=stop_after_attempt(self.options.max_retries + 1),
                wait=wait,
                before_sleep=count,
                reraise=True,
            ):
                with attempt:
                    return await call()
        except RetryableStatus as exc:
            reason = "rate limited" if exc.status == 429 else f"HTTP {exc.status}"
            raise ProviderUnavailable(
                f"The image provider is unavailable ({reason}); try again later."
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"The image provider could not be reached ({type(exc).__name__}); try again later."
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _cancel_when_created(self, creating: asyncio.Future[Prediction]) -> None:
        async def cancel_after() -> None:
            with contextlib.suppress(Exception):
                prediction = await creating
                if prediction.status not in TERMINAL:
                    await self._cancel(prediction.id)

        self._track(asyncio.ensure_future(cancel_after()))

    async def _cancel(self, prediction_id: str) -> None:
        try:
            async with asyncio.timeout(_CANCEL_TIMEOUT_SECONDS):
                await self._retrying(lambda: self._client.predictions.async_cancel(prediction_id))
            log.info("prediction cancelled", extra={"prediction_id": prediction_id})
        except (JobError, ReplicateError, TimeoutError) as exc:
            log.warning(
                "prediction could not be cancelled",
                extra={"prediction_id": prediction_id, "error": type(exc).__name__},
            )

    def _track(self, task: asyncio.Future[None]) -> None:
        assert isinstance(task, asyncio.Task)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def aclose(self) -> None:
        if self._cleanups:
            await asyncio.wait(self._cleanups, timeout=_CANCEL_TIMEOUT_SECONDS)
        await self._downloads.aclose()
        # The client has no close(); its httpx client is created on first use and kept.
        await self._client._async_client.aclose()


def prefer_wait_seconds(header: str | None) -> float | None:
    """Seconds a ``Prefer: wait=N`` header asks the server to hold the request (``wait`` alone: 60);
    None without one."""
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            with contextlib.suppress(ValueError):
                return float(value) if value.strip() else 60.0
            return 60.0
    return None


def first_output_url(output: Any) -> str | None:
    """The first file URL in a prediction's output (a URL, a list of them, or an object of them)."""
    if isinstance(output, str):
        return output if output.startswith(("http://", "https://", "data:")) else None
    if isinstance(output, list | tuple):
        return next((url for item in output if (url := first_output_url(item))), None)
    if isinstance(output, dict):
        return next((url for item in output.values() if (url := first_output_url(item))), None)
    return None
