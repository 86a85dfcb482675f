"""The Replicate provider with the real `replicate` client against the fake Replicate over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from imagegen_common.catalog import load_catalog
from imagegen_generator import errors
from imagegen_generator.app import make_provider
from imagegen_generator.config import GeneratorSettings
from imagegen_generator.providers.base import GenerationRequest
from imagegen_generator.providers.replicate import (
    ReplicateOptions,
    ReplicateProvider,
    classify_failure,
    first_output_url,
    parse_retry_after,
    prefer_wait_seconds,
)
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeReplicate, output_size, render_output

CATALOG = load_catalog()


def options(fake: FakeReplicate, **overrides: Any) -> ReplicateOptions:
    values: dict[str, Any] = {
        "api_token": fake.token,
        "base_url": fake.url,
        "wait_seconds": 5,
        "poll_interval_seconds": 0.05,
        "max_retries": 3,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 2.0,
        **overrides,
    }
    return ReplicateOptions(**values)


@pytest.fixture
async def provider(fake_replicate: FakeReplicate) -> AsyncIterator[ReplicateProvider]:
    provider = ReplicateProvider(options(fake_replicate))
    yield provider
    await provider.aclose()


class FaultyNetwork(httpx.AsyncBaseTransport):
    """The network between the client and the fake Replicate, failing the next creates: ``unsent``
    ones before they leave (connection refused), ``lost`` ones after the fake has answered them
    (the answer never arrives)."""

    def __init__(self, unsent: int = 0, lost: int = 0, lost_as: type[httpx.TransportError] | None = None):
        self._network = httpx.AsyncHTTPTransport()
        self.unsent = unsent
        self.lost = lost
        self.lost_as = lost_as or httpx.RemoteProtocolError

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        create = request.method == "POST" and request.url.path.endswith("/predictions")
        if create and self.unsent:
            self.unsent -= 1
            raise httpx.ConnectError("connection refused", request=request)
        response = await self._network.handle_async_request(request)
        if create and self.lost:
            self.lost -= 1
            await response.aclose()
            raise self.lost_as("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self._network.aclose()


class DataUriReplicate(FakeReplicate):
    """A fake Replicate whose predictions give their image inline, as a data URI (some models do)."""

    def _json(self, prediction: Any) -> dict[str, Any]:
        body = super()._json(prediction)
        if body["output"] is not None:
            width, height = output_size(prediction.behaviour, prediction.input)
            data = render_output(width, height, "png")
            body["output"] = f"data:image/png;base64,{base64.b64encode(data).decode()}"
        return body


@pytest.fixture
def data_uri_replicate() -> Iterator[DataUriReplicate]:
    fake = DataUriReplicate()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def request(
    model: str = "flux-schnell", width: int = 1024, height: int = 576, **extra: Any
) -> GenerationRequest:
    return GenerationRequest(
        job_id="img_test", model=CATALOG.get(model), prompt="a red fox", width=width, height=height, **extra
    )


def retries(reason: str) -> float:
    value = REGISTRY.get_sample_value("imagegen_generator_provider_retries_total", {"reason": reason})
    return value or 0.0


async def test_official_model_prediction_with_prefer_wait(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    output = await provider.generate(request())
    with Image.open(io.BytesIO(output.data)) as image:
        assert image.size == (1024, 576)
    (create,) = fake_replicate.creates
    assert create.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create.headers["prefer"] == "wait=5"
    assert create.headers["authorization"] == f"Bearer {fake_replicate.token}"
    assert create.input == {
        "output_format": "png",
        "num_outputs": 1,
        "prompt": "a red fox",
        "aspect_ratio": "16:9",
    }
    # The output file is fetched without our token: it lives on another host in production.
    (download,) = fake_replicate.recorded("GET", "/files/")
    assert "authorization" not in download.headers


async def test_a_create_waits_up_to_replicates_maximum_by_default(fake_replicate: FakeReplicate) -> None:
    provider = ReplicateProvider(
        ReplicateOptions(api_token=fake_replicate.token, base_url=fake_replicate.url)
    )
    try:
        await provider.generate(request())
        await provider.generate(request(deadline=time.time() + 30.5))
    finally:
        await provider.aclose()
    unbounded, bounded = fake_replicate.creates
    assert unbounded.headers["prefer"] == "wait=60"
    assert bounded.headers["prefer"] == "wait=30"  # never past the job's remaining time
    assert GeneratorSettings().replicate_wait_seconds == 60


@pytest.mark.parametrize(("wait", "drain", "held"), [(60, 20.0, 20), (10, 20.0, 10), (60, 0.0, 1)])
async def test_a_create_is_never_held_past_the_drain(wait: int, drain: float, held: int) -> None:
    """A replica told to stop drains its jobs, then hands the rest back to NATS and cancels their
    predictions: a create still held then would end with the process, its prediction uncancelled."""
    settings = GeneratorSettings(
        provider="replicate",
        replicate_api_token="r8_test",
        replicate_wait_seconds=wait,
        generator_drain_timeout_seconds=drain,
    )
    provider = make_provider(settings)
    try:
        assert isinstance(provider, ReplicateProvider) and provider.options.wait_seconds == held
    finally:
        await provider.aclose()


async def test_a_held_create_whose_answer_is_slow_to_arrive_is_not_timed_out(
    fake_replicate: FakeReplicate,
) -> None:
    """The replicate client alone gives a create its wait + 0.5 s to answer: a create that timed out
    cannot be retried (the prediction may exist), so the margin is an ordinary request's timeout."""
    fake_replicate.behaviour.delay_seconds = 2.0  # still running after the 1 s wait
    fake_replicate.behaviour.create_latency_seconds = 1.5  # then answered 1.5 s late
    provider = ReplicateProvider(options(fake_replicate, wait_seconds=1, request_timeout_seconds=3))
    try:
        output = await provider.generate(request())
    finally:
        await provider.aclose()
    assert output.data
    assert len(fake_replicate.creates) == 1
    assert len(fake_replicate.recorded("GET", "/v1/predictions/")) >= 1


def test_prefer_wait_parsing() -> None:
    assert prefer_wait_seconds("wait=5") == 5.0
    assert prefer_wait_seconds("respond-async, wait=60") == 60.0
    assert prefer_wait_seconds("wait") == 60.0
    assert prefer_wait_seconds("respond-async") is None
    assert prefer_wait_seconds(None) is None


async def test_versioned_model_is_created_by_version(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    await provider.generate(request("sdxl", 1024, 1024))
    (create,) = fake_replicate.creates
    assert create.path == "/v1/predictions"
    assert create.body["version"] == CATALOG.get("sdxl").replicate.version


async def test_a_slow_prediction_is_polled_after_the_wait(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.delay_seconds = 1.5
    deadline = time.time() + 1.2  # the create holds at most 1 s: then polling takes over
    output = await provider.generate(request(deadline=deadline + 60))
    assert output.data
    output = await provider.generate(request(deadline=deadline))
    assert fake_replicate.creates[-1].headers["prefer"] == "wait=1"
    assert len(fake_replicate.recorded("GET", "/v1/predictions/")) >= 1


async def test_429_with_retry_after_is_retried(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    before = retries("rate_limited")
    fake_replicate.behaviour.create_failures = [(429, "1"), (429, "0")]
    await provider.generate(request())
    assert len(fake_replicate.creates) == 3
    assert retries("rate_limited") == before + 2


async def test_5xx_on_poll_is_retried(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    before = retries("server_error")
    fake_replicate.behaviour.delay_seconds = 2.0  # longer than the 1 s wait: polled
    fake_replicate.behaviour.get_failures = [(500, None), (502, None)]
    await provider.generate(request(deadline=time.time() + 1.5))
    assert len(fake_replicate.creates) == 1
    assert retries("server_error") == before + 2


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_create_answered_5xx_is_sent_once(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, status: int
) -> None:
    """A 5xx may come from a proxy after Replicate made the prediction: sending the create again could
    pay for two. The delivery fails as retryable; a later delivery tries again."""
    fake_replicate.behaviour.create_failures = [(status, None)] * 10
    with pytest.raises(errors.ProviderUnavailable, match=f"HTTP {status}") as caught:
        await provider.generate(request())
    assert caught.value.retryable
    assert len(fake_replicate.creates) == 1


async def test_persistent_5xx_on_poll_is_provider_unavailable(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.hold = True
    fake_replicate.behaviour.get_failures = [(500, None)] * 10
    with pytest.raises(errors.ProviderUnavailable) as caught:
        await provider.generate(request(deadline=time.time() + 1))
    assert caught.value.retryable
    assert len(fake_replicate.recorded("GET", "/v1/predictions/")) == 4  # 1 + max_retries
    assert len(fake_replicate.creates) == 1


async def test_a_create_that_could_not_connect_is_retried(fake_replicate: FakeReplicate) -> None:
    network = FaultyNetwork(unsent=2)
    provider = ReplicateProvider(options(fake_replicate), transport=network)
    try:
        output = await provider.generate(request())
    finally:
        await provider.aclose()
    assert output.data
    assert network.unsent == 0
    assert len(fake_replicate.creates) == 1


@pytest.mark.parametrize("lost_as", [httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ReadError])
async def test_a_create_whose_answer_was_lost_is_not_sent_again(
    fake_replicate: FakeReplicate, lost_as: type[httpx.TransportError]
) -> None:
    provider = ReplicateProvider(options(fake_replicate), transport=FaultyNetwork(lost=1, lost_as=lost_as))
    try:
        with pytest.raises(errors.ProviderUnavailable, match="could not be reached") as caught:
            await provider.generate(request())
    finally:
        await provider.aclose()
    assert caught.value.retryable
    assert len(fake_replicate.creates) == 1


async def test_the_jobs_provider_model_is_called_with_the_catalogs_input(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    await provider.generate(request("flux-schnell", provider_model="someone/flux-schnell-fork"))
    await provider.generate(request("flux-schnell", provider_model="someone/flux-schnell-fork:0123abcd"))
    by_model, by_version = fake_replicate.creates
    assert by_model.path == "/v1/models/someone/flux-schnell-fork/predictions"
    assert by_version.path == "/v1/predictions"
    assert by_version.body["version"] == "0123abcd"
    for create in (by_model, by_version):
        assert create.input == {
            "output_format": "png",
            "num_outputs": 1,
            "prompt": "a red fox",
            "aspect_ratio": "16:9",
        }


async def test_an_invalid_provider_model_is_a_provider_error_without_a_call(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    with pytest.raises(errors.ProviderError):
        await provider.generate(request(provider_model="no-owner"))
    assert fake_replicate.api_calls == []


async def test_a_data_uri_output_is_decoded(data_uri_replicate: DataUriReplicate) -> None:
    provider = ReplicateProvider(options(data_uri_replicate))
    try:
        output = await provider.generate(request())
    finally:
        await provider.aclose()
    assert output.mime_type == "image/png"
    assert output.data == render_output(1024, 576, "png")


@pytest.mark.parametrize("under_by", [1, 1000])
async def test_a_data_uri_output_over_the_cap_is_refused(
    data_uri_replicate: DataUriReplicate, under_by: int
) -> None:
    cap = len(render_output(1024, 576, "png")) - under_by
    provider = ReplicateProvider(options(data_uri_replicate, output_max_bytes=cap))
    try:
        with pytest.raises(errors.ProviderError, match="larger than allowed"):
            await provider.generate(request())
    finally:
        await provider.aclose()


async def test_unreachable_provider_is_provider_unavailable(fake_replicate: FakeReplicate) -> None:
    provider = ReplicateProvider(
        ReplicateOptions(
            api_token="x", base_url="http://127.0.0.1:9", max_retries=1, retry_initial_seconds=0.01
        )
    )
    try:
        with pytest.raises(errors.ProviderUnavailable, match="could not be reached"):
            await provider.generate(request())
    finally:
        await provider.aclose()


async def test_nsfw_is_content_rejected(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.behaviour.fail_error = (
        "NSFW content detected. Try running it again, or try a different prompt."
    )
    with pytest.raises(errors.ContentRejected):
        await provider.generate(request())


async def test_model_failure_is_provider_error_without_upstream_details(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.fail_error = (
        "Traceback (most recent call last): CUDA out of memory at /src/predict.py"
    )
    with pytest.raises(errors.ProviderError) as caught:
        await provider.generate(request())
    assert "Traceback" not in caught.value.message
    assert "/src" not in caught.value.message


async def test_invalid_input_422_is_invalid_input(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.reject_input = "- input.aspect_ratio: aspect_ratio must be one of the following"
    with pytest.raises(errors.InvalidInput, match="aspect_ratio must be one of"):
        await provider.generate(request())
    assert len(fake_replicate.creates) == 1


async def test_a_wrong_token_is_not_retried(fake_replicate: FakeReplicate) -> None:
    provider = ReplicateProvider(ReplicateOptions(api_token="wrong", base_url=fake_replicate.url))
    try:
        with pytest.raises(errors.ProviderUnavailable) as caught:
            await provider.generate(request())
    finally:
        await provider.aclose()
    assert not caught.value.retryable
    assert len(fake_replicate.creates) == 1


async def test_cancelling_the_call_cancels_the_prediction(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.hold = True
    task = asyncio.create_task(provider.generate(request(deadline=time.time() + 1)))
    await eventually(lambda: len(fake_replicate.recorded("GET", "/v1/predictions/")) > 0, what="polling")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: len(fake_replicate.cancels) == 1, what="the cancel")
    prediction_id = fake_replicate.cancels[0].path.split("/")[3]
    assert fake_replicate.prediction_status(prediction_id) == "canceled"


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_output_shapes_and_failure_classes() -> None:
    assert first_output_url("https://x/a.png") == "https://x/a.png"
    assert first_output_url(["https://x/a.webp", "https://x/b.webp"]) == "https://x/a.webp"
    assert first_output_url({"images": ["https://x/c.png"]}) == "https://x/c.png"
    assert first_output_url(None) is None
    assert isinstance(classify_failure("Prediction flagged by safety checker"), errors.ContentRejected)
    assert isinstance(classify_failure("Prediction interrupted"), errors.ProviderError)
