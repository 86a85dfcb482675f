"""The fake Replicate speaks what the official client sends and expects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import httpx
import pytest
from PIL import Image
from replicate.client import Client
from replicate.exceptions import ReplicateError

from imagegen_testing.fake_replicate import FakeReplicate


def output_url(output: Any) -> str:
    return str(output[0] if isinstance(output, list) else output)


@contextmanager
def client(fake: FakeReplicate, token: str | None = None) -> Iterator[Client]:
    replicate = Client(api_token=token or fake.token, base_url=fake.url)
    try:
        yield replicate
    finally:
        replicate._client.close()


def test_create_for_an_official_model_with_prefer_wait(fake_replicate: FakeReplicate) -> None:
    with client(fake_replicate) as replicate:
        prediction = replicate.models.predictions.create(
            model="google/nano-banana", input={"prompt": "a fox", "aspect_ratio": "16:9"}, wait=5
        )
    assert prediction.status == "succeeded"
    assert prediction.model == "google/nano-banana"
    (create,) = fake_replicate.creates
    assert create.path == "/v1/models/google/nano-banana/predictions"
    assert create.headers["prefer"] == "wait=5"
    assert create.input == {"prompt": "a fox", "aspect_ratio": "16:9"}
    image = httpx.get(output_url(prediction.output))
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_create_by_version_then_poll_and_cancel(fake_replicate: FakeReplicate) -> None:
    fake_replicate.behaviour.hold = True
    with client(fake_replicate) as replicate:
        prediction = replicate.predictions.create(
            version="abc123", input={"prompt": "x", "width": 640, "height": 480}
        )
        assert prediction.status == "processing"
        assert fake_replicate.creates[0].body["version"] == "abc123"
        assert replicate.predictions.get(prediction.id).status == "processing"
        assert replicate.predictions.cancel(prediction.id).status == "canceled"
        assert [c.path for c in fake_replicate.cancels] == [f"/v1/predictions/{prediction.id}/cancel"]


def test_release_finishes_held_predictions(fake_replicate: FakeReplicate) -> None:
    fake_replicate.behaviour.hold = True
    with client(fake_replicate) as replicate:
        prediction = replicate.predictions.create(
            version="v", input={"prompt": "x", "width": 300, "height": 200}
        )
        fake_replicate.release()
        prediction.wait()
        assert prediction.status == "succeeded"
        assert httpx.get(output_url(prediction.output)).status_code == 200


def test_failures_and_scripted_errors(fake_replicate: FakeReplicate) -> None:
    with client(fake_replicate) as replicate:
        fake_replicate.behaviour.fail_error = "NSFW content detected"
        prediction = replicate.models.predictions.create(model="a/b", input={"prompt": "x"}, wait=2)
        assert (prediction.status, prediction.error) == ("failed", "NSFW content detected")

        fake_replicate.behaviour.create_failures = [(429, "3")]
        with pytest.raises(ReplicateError) as caught:
            replicate.models.predictions.create(model="a/b", input={"prompt": "x"})
        assert caught.value.status == 429

        fake_replicate.behaviour.reject_input = "- input.width: must be at most 1440"
        with pytest.raises(ReplicateError) as caught:
            replicate.models.predictions.create(model="a/b", input={"prompt": "x"})
        assert caught.value.status == 422
        assert "at most 1440" in (caught.value.detail or "")


def test_a_wrong_token_is_refused_and_everything_is_recorded(fake_replicate: FakeReplicate) -> None:
    with client(fake_replicate, token="wrong") as replicate, pytest.raises(ReplicateError) as caught:
        replicate.models.predictions.create(model="a/b", input={"prompt": "x"})
    assert caught.value.status == 401
    assert [(r.method, r.path) for r in fake_replicate.api_calls] == [("POST", "/v1/models/a/b/predictions")]


def test_output_size_follows_the_request_or_the_behaviour(fake_replicate: FakeReplicate) -> None:
    with client(fake_replicate) as replicate:
        prediction = replicate.models.predictions.create(
            model="a/b", input={"prompt": "x", "aspect_ratio": "2:1"}, wait=2
        )
        with Image.open(BytesIO(httpx.get(output_url(prediction.output)).content)) as image:
            assert image.size == (1024, 512)
        fake_replicate.behaviour.output_size = (333, 222)
        fake_replicate.behaviour.output_format = "webp"
        fake_replicate.behaviour.output_as_list = True
        prediction = replicate.models.predictions.create(model="a/b", input={"prompt": "x"}, wait=2)
        with Image.open(BytesIO(httpx.get(output_url(prediction.output)).content)) as image:
            assert (image.size, image.format) == ((333, 222), "WEBP")
