"""Image-to-image inputs: refused URLs fail the job before any provider call; our own image URLs are
read from the store (chained edits); a public URL is fetched and sent to Replicate."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import httpx
import pytest
from PIL import Image

from imagegen.jobs.v1 import jobs_pb2
from imagegen_generator.app import running_generator
from imagegen_generator.config import GeneratorSettings
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.jobs import Bus, make_job

Settings = Callable[..., GeneratorSettings]

PUBLIC_HOST = "images.example.com"
PUBLIC_ADDRESS = "93.184.215.14"


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


async def public_resolver(host: str, port: int) -> Sequence[str]:
    """Test DNS: one public-looking name; everything else resolves to loopback."""
    return [PUBLIC_ADDRESS] if host == PUBLIC_HOST else ["127.0.0.1"]


def public_site(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    """Stands in for the public host: no packet leaves the machine."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.host == PUBLIC_ADDRESS, f"connected to {request.url.host}, not the vetted address"
        assert request.headers["host"] == PUBLIC_HOST
        return routes.get(request.url.path, httpx.Response(404))

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/cat.png",
        "http://[::1]/cat.png",
        "http://10.0.0.1/cat.png",
        "http://[::ffff:192.168.1.1]/cat.png",
        "http://100.64.0.1/cat.png",
        "file:///etc/passwd",
        "ftp://example.com/cat.png",
        "http://localhost:8000/images/cat.png",
    ],
)
async def test_refused_input_urls_fail_the_job_without_a_provider_call(
    url: str, replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    async with running_generator(replicate_settings(), resolver=public_resolver):
        job = make_job("flux-kontext-pro", input_image_urls=[url])
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED, outcome
    assert outcome.failure.message.startswith("Input image 1 was refused")
    assert fake_replicate.api_calls == []


async def test_a_public_url_that_redirects_to_loopback_is_refused(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    site = public_site(
        {"/cat.png": httpx.Response(302, headers={"Location": "http://127.0.0.1:9102/metrics"})}
    )
    async with running_generator(replicate_settings(), resolver=public_resolver, fetch_transport=site):
        job = make_job("flux-kontext-pro", input_image_urls=[f"http://{PUBLIC_HOST}/cat.png"])
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED
    assert "loopback" in outcome.failure.message
    assert fake_replicate.api_calls == []


async def test_a_public_input_image_is_sent_to_replicate_as_a_data_uri(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    image = png(64, 48)
    site = public_site(
        {"/cat.png": httpx.Response(200, content=image, headers={"Content-Type": "image/png"})}
    )
    async with running_generator(replicate_settings(), resolver=public_resolver, fetch_transport=site):
        job = make_job("nano-banana", 1024, 1024, input_image_urls=[f"http://{PUBLIC_HOST}/cat.png"])
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.WhichOneof("result") == "image", outcome
    sent = fake_replicate.creates[0].input["image_input"]
    assert sent == ["data:image/png;base64," + base64.b64encode(image).decode()]


async def test_a_url_that_is_not_an_image_is_refused(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    site = public_site({"/cat.png": httpx.Response(200, content=b"<html>hello</html>")})
    async with running_generator(replicate_settings(), resolver=public_resolver, fetch_transport=site):
        job = make_job("flux-1", input_image_urls=[f"http://{PUBLIC_HOST}/cat.png"])
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED
    assert "not a readable image" in outcome.failure.message
    assert fake_replicate.api_calls == []


async def test_our_own_image_url_is_read_from_the_store_to_chain_edits(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    # The public base URL is not fetchable here (and the guard would refuse a private one):
    # the first image's URL still works as an input, read from the store.
    async with running_generator(replicate_settings(public_base_url="http://127.0.0.1:8000")):
        first = make_job("flux-schnell", 512, 512)
        await bus.submit(first)
        made = await bus.replies.outcome(first.job_id)
        assert made.image.url.startswith("http://127.0.0.1:8000/images/")

        second = make_job("flux-kontext-pro", 512, 512, input_image_urls=[made.image.url])
        await bus.submit(second)
        edited = await bus.replies.outcome(second.job_id)
    assert edited.WhichOneof("result") == "image", edited
    sent = fake_replicate.creates[1].input["input_image"]
    assert isinstance(sent, str)
    assert sent.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1]))) as decoded:
        assert decoded.size == (512, 512)


async def test_a_missing_own_image_is_refused(
    replicate_settings: Settings, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    settings = replicate_settings(public_base_url="http://127.0.0.1:8000")
    async with running_generator(settings):
        job = make_job(
            "flux-1", input_image_urls=["http://127.0.0.1:8000/images/img_aaaaaaaaaaaaaaaaaaaaaaaaaa.png"]
        )
        await bus.submit(job)
        outcome = await bus.replies.outcome(job.job_id)
    assert outcome.failure.code == jobs_pb2.ERROR_CODE_INPUT_IMAGE_REFUSED
    assert "does not exist" in outcome.failure.message
    assert fake_replicate.api_calls == []
