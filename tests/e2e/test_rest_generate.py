"""The asynchronous REST API through the whole path (gateway → billing → NATS → generator → store):
the documented curl example, credits, errors by field, polling to the image, ownership, idempotency,
history, the account and the models."""

from __future__ import annotations

import io
import json
import re
import subprocess
from typing import Any

import grpc
import httpx
import pytest
from PIL import Image

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen_gateway.api.schemas import (
    AccountResponse,
    ErrorBody,
    GenerateResponse,
    ImageListResponse,
    ImageResponse,
    InsufficientCreditsBody,
    ModelsResponse,
    ValidationErrorBody,
)
from imagegen_testing import eventually_blocking
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import Account, RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

#: The hosted API's documented request, as written (model flux-1 exists so that it runs as is).
DOCUMENTED_BODY = '{"model": "flux-1", "prompt": "...", "width": 1024, "height": 1024}'
MICROSECONDS_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
#: flux-1 costs 3 credits per megapixel: a 1024x1024 image costs 3.
FLUX_1_1024 = 3


def auth(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.token}"}


def generate(
    stack: RunningStack, account: Account, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"model": "flux-1", "prompt": "a lighthouse at dusk", "width": 1024, "height": 1024, **body}
    return httpx.post(
        f"{stack.rest_url}/images/generate",
        json=payload,
        headers={**auth(account), **(headers or {})},
        timeout=30,
    )


def poll(stack: RunningStack, account: Account, image_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The image once it completed or failed (bounded by ``timeout``)."""
    image: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal image
        response = httpx.get(f"{stack.rest_url}/images/{image_id}", headers=auth(account), timeout=10)
        assert response.status_code == 200, response.text
        image = ImageResponse.model_validate(response.json()).model_dump(mode="json")["image"]
        return bool(image["status"] >= 2)

    eventually_blocking(
        finished,
        timeout=timeout,
        what=f"image {image_id} finishing",
        detail=lambda: f"still {image.get('status_name')}\n{stack.logs()}",
    )
    return image


def test_the_documented_curl_example_runs_as_written(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    completed = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", f"{stack.rest_url}/images/generate",
            "-H", f"Authorization: Bearer {account.token}",
            "-H", "Content-Type: application/json",
            "-d", DOCUMENTED_BODY,
            "-w", "\n%{http_code}",
        ],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    body, status = completed.stdout.rsplit("\n", 1)
    assert status == "200"
    reply = json.loads(body)
    GenerateResponse.model_validate(reply)
    assert reply["success"] is True
    assert reply["message"] == "1 image(s) queued for generation"
    [image] = reply["images"]
    assert set(image) == {"id", "status", "status_name", "width", "height", "created_at"}
    assert (image["status"], image["status_name"], image["width"], image["height"]) == (
        0,
        "queued",
        1024,
        1024,
    )
    assert MICROSECONDS_ISO.match(image["created_at"]), image["created_at"]
    assert len(image["id"]) >= 26  # 128 random bits
    assert poll(stack, account, image["id"])["status"] == 2


def test_count_three_makes_three_images_and_charges_exactly_three(stack: RunningStack) -> None:
    account = stack.create_account(credits=100)
    response = generate(stack, account, count=3)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert response.json()["message"] == "3 image(s) queued for generation"
    assert len({image["id"] for image in images}) == 3
    assert stack.credits(account.account_id) == 100 - 3 * FLUX_1_1024  # held at once
    finished = [poll(stack, account, image["id"]) for image in images]
    assert [(i["status_name"], i["credits_used"]) for i in finished] == [("completed", FLUX_1_1024)] * 3
    assert stack.credits(account.account_id) == 100 - 3 * FLUX_1_1024
    assert stack.account(account.account_id).account.reserved_credits == 0


def test_insufficient_credits_is_402_and_reserves_nothing(stack: RunningStack) -> None:
    account = stack.create_account(credits=5)
    response = generate(stack, account, count=2)  # 2 x 3 credits
    assert response.status_code == 402
    body = InsufficientCreditsBody.model_validate(response.json())
    assert (body.success, body.error, body.required, body.available) == (False, "insufficient_credits", 6, 5)
    assert "these 2 images cost 6 credits; you have 5" in body.message
    assert stack.credits(account.account_id) == 5
    assert stack.account(account.account_id).account.reserved_credits == 0
    history = httpx.get(f"{stack.rest_url}/images", headers=auth(account)).json()
    assert history["images"] == []


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model": None}, "model", "Field required"),
        ({"model": "dall-e-9"}, "model", "unknown model 'dall-e-9'"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "x" * 1025}, "prompt", "at most 1024 characters"),
        ({"width": 511}, "width", "greater than or equal to 512"),
        ({"width": "wide"}, "width", "valid integer"),
        ({"height": 4097}, "height", "less than or equal to 4096"),
        ({"height": None}, "height", "Field required"),
        ({"model": "flux-schnell", "width": 4096}, "width", "between 512 and 2048"),
        ({"count": 0}, "count", "greater than or equal to 1"),
        ({"count": 11}, "count", "less than or equal to 10"),
        ({"input": ["not a url"]}, "input.0", "URL"),
        ({"input": [f"https://example.com/{n}.png" for n in range(11)]}, "input", "at most 10 items"),
        ({"input": ["https://example.com/a.png"], "model": "flux-schnell"}, "input", "image-to-image"),
        ({"input": ["https://example.com/a.png", "https://example.com/b.png"]}, "input", "at most 1 input"),
        ({"negative_prompt": "x" * 1025}, "negative_prompt", "at most 1024 characters"),
        ({"webhook_url": "not a url"}, "webhook_url", "URL"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_field_is_422_naming_it_and_costs_nothing(
    stack: RunningStack, change: dict[str, Any], field: str, message: str
) -> None:
    account = stack.create_account(credits=20)
    body: dict[str, Any] = {"model": "flux-1", "prompt": "x", "width": 1024, "height": 1024}
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    response = httpx.post(f"{stack.rest_url}/images/generate", json=body, headers=auth(account))
    assert response.status_code == 422, response.text
    error = ValidationErrorBody.model_validate(response.json())
    assert error.error == "validation_error"
    assert field in error.errors, error.errors
    assert any(message in text for text in error.errors[field]), error.errors
    assert message in error.message
    assert stack.credits(account.account_id) == 20


def test_a_body_that_is_not_json_is_422(stack: RunningStack) -> None:
    account = stack.create_account(credits=5)
    response = httpx.post(
        f"{stack.rest_url}/images/generate",
        content=b'{"model": "flux-1",',
        headers={**auth(account), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert ValidationErrorBody.model_validate(response.json()).errors == {
        "body": ["The body is not valid JSON."]
    }


def test_a_body_over_the_size_limit_is_413_unread(stack: RunningStack) -> None:
    account = stack.create_account(credits=5)
    response = generate(stack, account, prompt="x" * 2_000_000)
    assert response.status_code == 413
    assert ErrorBody.model_validate(response.json()).error == "payload_too_large"
    assert stack.credits(account.account_id) == 5


@pytest.mark.parametrize(
    ("headers", "error"),
    [({}, "missing_token"), ({"Authorization": "Bearer igk_not-a-real-token"}, "invalid_token")],
)
def test_every_route_needs_a_valid_token(stack: RunningStack, headers: dict[str, str], error: str) -> None:
    for method, path in [
        ("POST", "/images/generate"),
        ("GET", "/images/img_x"),
        ("GET", "/images"),
        ("GET", "/models"),
        ("GET", "/account"),
    ]:
        response = httpx.request(method, f"{stack.rest_url}{path}", headers=headers, json={})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer realm="imagegen"')
        assert ErrorBody.model_validate(response.json()).error == error


def test_an_image_is_polled_until_completed_and_served_at_its_size(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    response = generate(stack, account, width=768, height=512, negative_prompt="text")
    [queued] = response.json()["images"]
    image = poll(stack, account, queued["id"])
    assert image["status"] == 2 and image["status_name"] == "completed"
    assert (image["model"], image["width"], image["height"]) == ("flux-1", 768, 512)
    assert image["credits_used"] == 2  # 768x512 is 3/8 of a megapixel at 3 credits: rounded up
    assert image["error"] is None and image["webhook"] is None
    assert image["created_at"] == queued["created_at"]
    for stamp in ("created_at", "started_at", "completed_at"):
        assert MICROSECONDS_ISO.match(image[stamp]), (stamp, image[stamp])
    assert image["created_at"] <= image["started_at"] <= image["completed_at"]
    assert image["url"] == f"{stack.gateway_url}/images/{image['id']}.png"
    picture = httpx.get(image["url"])
    assert picture.status_code == 200
    assert Image.open(io.BytesIO(picture.content)).size == (768, 512)
    assert stack.credits(account.account_id) == 8


def test_a_failed_image_says_why_and_costs_nothing(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    # The generator's SSRF guard refuses a loopback input image: the job fails, its credits return.
    response = generate(stack, account, input=["http://127.0.0.1:1/input.png"])
    assert response.status_code == 200, response.text
    image = poll(stack, account, response.json()["images"][0]["id"])
    assert (image["status"], image["status_name"], image["url"], image["credits_used"]) == (
        3,
        "failed",
        None,
        0,
    )
    assert image["error"]["code"] == "input_image_refused"
    assert "loopback" in image["error"]["message"]
    assert image["completed_at"] is not None
    assert stack.credits(account.account_id) == 10


def test_another_accounts_image_is_not_found_like_a_missing_one(stack: RunningStack) -> None:
    owner, other = stack.create_account(credits=10), stack.create_account(credits=10)
    image_id = generate(stack, owner).json()["images"][0]["id"]
    assert httpx.get(f"{stack.rest_url}/images/{image_id}", headers=auth(owner)).status_code == 200
    theirs = httpx.get(f"{stack.rest_url}/images/{image_id}", headers=auth(other))
    missing = httpx.get(f"{stack.rest_url}/images/img_doesnotexist", headers=auth(other))
    assert theirs.status_code == missing.status_code == 404
    assert (
        theirs.json()
        == missing.json()
        == {
            "success": False,
            "error": "not_found",
            "message": "No image with this id.",
        }
    )
    history = httpx.get(f"{stack.rest_url}/images", headers=auth(other)).json()
    assert history["images"] == []


def test_an_idempotency_key_replays_the_first_answer_and_charges_once(stack: RunningStack) -> None:
    account = stack.create_account(credits=20)
    key = {"Idempotency-Key": "order-42"}
    first = generate(stack, account, headers=key, count=2)
    second = generate(stack, account, headers=key, count=2)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert stack.credits(account.account_id) == 20 - 2 * FLUX_1_1024

    reused = generate(stack, account, headers=key, count=2, prompt="something else")
    assert reused.status_code == 422
    assert "Idempotency-Key" in ValidationErrorBody.model_validate(reused.json()).errors
    # the same key of another account is another key
    stranger = stack.create_account(credits=20)
    theirs = generate(stack, stranger, headers=key, count=2)
    assert theirs.status_code == 200
    assert {i["id"] for i in theirs.json()["images"]}.isdisjoint({i["id"] for i in first.json()["images"]})
    for image in first.json()["images"]:
        assert poll(stack, account, image["id"])["status"] == 2
    assert generate(stack, account, headers=key, count=2).json() == first.json()
    assert stack.credits(account.account_id) == 20 - 2 * FLUX_1_1024


def test_a_refused_request_does_not_use_up_its_idempotency_key(stack: RunningStack) -> None:
    account = stack.create_account(credits=2)
    key = {"Idempotency-Key": "retry-after-top-up"}
    assert generate(stack, account, headers=key).status_code == 402
    stack_grant(stack, account, 10)
    retried = generate(stack, account, headers=key)
    assert retried.status_code == 200
    assert stack.credits(account.account_id) == 12 - FLUX_1_1024


def stack_grant(stack: RunningStack, account: Account, credits: int) -> None:
    with grpc.insecure_channel(stack.billing_address) as channel:
        admin_service_pb2_grpc.AdminServiceStub(channel).GrantCredits(
            admin_service_pb2.GrantCreditsRequest(account=account.account_id, amount=credits),
            metadata=(("authorization", f"Bearer {stack.admin_token}"),),
            timeout=10,
        )


def test_the_history_pages_newest_first(stack: RunningStack) -> None:
    account = stack.create_account(credits=100)
    older = generate(stack, account, count=2).json()["images"]
    newer = generate(stack, account, count=3).json()["images"]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = httpx.get(f"{stack.rest_url}/images", headers=auth(account), params=params)
        assert response.status_code == 200, response.text
        page = ImageListResponse.model_validate(response.json())
        pages += 1
        seen.extend(image.id for image in page.images)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert set(seen[:3]) == {i["id"] for i in newer} and set(seen[3:]) == {i["id"] for i in older}

    bad_params: list[dict[str, str | int]] = [{"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 101}]
    for params in bad_params:
        bad = httpx.get(f"{stack.rest_url}/images", headers=auth(account), params=params)
        assert bad.status_code == 422, bad.text
        assert set(ValidationErrorBody.model_validate(bad.json()).errors) == set(params)


def test_the_account_shows_credits_and_token_prefixes_never_a_token(stack: RunningStack) -> None:
    account = stack.create_account(credits=30)
    generate(stack, account)
    response = httpx.get(f"{stack.rest_url}/account", headers=auth(account))
    assert response.status_code == 200
    assert account.token not in response.text
    assert account.token[8:] not in response.text
    info = AccountResponse.model_validate(response.json()).account
    assert (info.id, info.email) == (account.account_id, account.email)
    assert info.credits == 30 - FLUX_1_1024  # held or spent, the image's credits are gone
    assert info.reserved_credits in (0, FLUX_1_1024)
    [token] = info.tokens
    assert (token.label, token.prefix) == ("default", account.token[:8])
    assert token.last_used_at is not None and token.revoked_at is None
    assert (info.webhook_url, info.webhook_secret_set) == (None, False)


async def test_the_models_are_those_of_mcp_list_models(stack: RunningStack) -> None:
    account = stack.create_account(credits=1)
    response = httpx.get(f"{stack.rest_url}/models", headers=auth(account))
    assert response.status_code == 200
    body = ModelsResponse.model_validate(response.json())
    assert "flux-1" in {model.key for model in body.models}
    async with mcp_client(stack.mcp_url, account.token) as client:
        listed = await client.call_tool("list_models", {})
    assert listed.structured_content is not None
    assert response.json()["models"] == listed.structured_content["models"]
    assert body.default_model == listed.structured_content["default_model"]


def test_unknown_paths_and_methods_answer_in_the_error_shape(stack: RunningStack) -> None:
    account = stack.create_account(credits=1)
    missing = httpx.get(f"{stack.rest_url}/nothing-here", headers=auth(account))
    assert missing.status_code == 404
    assert ErrorBody.model_validate(missing.json()).error == "not_found"
    wrong = httpx.delete(f"{stack.rest_url}/images/generate", headers=auth(account))
    assert wrong.status_code == 405
    assert ErrorBody.model_validate(wrong.json()).error == "method_not_allowed"
