"""Webhooks of REST jobs, received by a real HTTP server of the test: Standard Webhooks signatures
(checked here by hand, independently of the gateway's code), retries after a failed attempt, the
account's default webhook set with `imagegen admin webhook`, failures, and the SSRF guard on URLs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import nats
import pytest

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from imagegen_cli.processes import imagegen_command
from imagegen_common import nats_names
from imagegen_common.nats_auth import Role
from imagegen_common.service_auth import Caller
from imagegen_gateway.api.schemas import Image, ImageResponse, ValidationErrorBody
from imagegen_testing import eventually_blocking
from imagegen_testing.net import free_port
from imagegen_testing.stack import Account, RunningStack, start_stack
from imagegen_testing.webhook_receiver import Delivery, WebhookReceiver

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

RETRY_DELAYS = "0.5,0.5,0.5"  # four attempts in all, quickly


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver) -> Iterator[RunningStack]:
    """A stack whose gateway may reach this module's receiver (and nothing else private)."""
    running = start_stack(
        tmp_path_factory.mktemp("stack"),
        gateway_env={
            "IMAGEGEN_AUTH_CACHE_SECONDS": "0.5",
            "IMAGEGEN_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}",
            "IMAGEGEN_WEBHOOK_RETRY_DELAYS_SECONDS": RETRY_DELAYS,
        },
    )
    yield running
    running.stop()


def admin(stack: RunningStack, *args: str) -> dict[str, Any]:
    """``imagegen admin --json …`` as an operator runs it."""
    completed = subprocess.run(
        [
            *imagegen_command("admin"),
            "--billing", stack.billing_address, "--admin-token", stack.admin_token, "--json", *args,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    reply: dict[str, Any] = json.loads(completed.stdout)
    return reply


def rotate_secret(stack: RunningStack, account: Account) -> str:
    with grpc.insecure_channel(stack.billing_address) as channel:
        reply = admin_service_pb2_grpc.AdminServiceStub(channel).RotateWebhookSecret(
            admin_service_pb2.RotateWebhookSecretRequest(account=account.account_id),
            metadata=(("authorization", f"Bearer {stack.admin_token}"),),
            timeout=10,
        )
    return str(reply.signing_secret)


def attempts(stack: RunningStack, image_id: str) -> list[tuple[int, int]]:
    with grpc.insecure_channel(stack.billing_address) as channel:
        reply = billing_service_pb2_grpc.BillingServiceStub(channel).ListWebhookAttempts(
            billing_service_pb2.ListWebhookAttemptsRequest(job_id=image_id),
            metadata=stack.billing_metadata(Caller.WEBHOOKS),
            timeout=10,
        )
    return [(a.attempt, a.status_code) for a in reply.attempts]


def verified(delivery: Delivery, secret: str) -> dict[str, Any]:
    """The body of a delivery whose Standard Webhooks signature is valid for ``secret`` (checked here
    from the spec: base64 HMAC-SHA256 of "id.timestamp.body" keyed with the secret's bytes)."""
    msg_id = delivery.headers["webhook-id"]
    timestamp = delivery.headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < 300
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + delivery.body, hashlib.sha256).digest()
    ).decode()
    signatures = [s.split(",", 1) for s in delivery.headers["webhook-signature"].split()]
    assert ["v1", expected] in [list(s) for s in signatures], "no valid v1 signature"
    assert delivery.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(delivery.body)
    return body


def generate(stack: RunningStack, account: Account, **body: Any) -> httpx.Response:
    payload = {"model": "flux-1", "prompt": "a webhook", "width": 512, "height": 512, **body}
    return httpx.post(
        f"{stack.rest_url}/images/generate",
        json=payload,
        headers={"Authorization": f"Bearer {account.token}"},
        timeout=30,
    )


def image_of(stack: RunningStack, account: Account, image_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{stack.rest_url}/images/{image_id}", headers={"Authorization": f"Bearer {account.token}"}
    )
    assert response.status_code == 200
    image: dict[str, Any] = ImageResponse.model_validate(response.json()).model_dump(mode="json")["image"]
    return image


def delivered(
    stack: RunningStack, account: Account, image_id: str, state: str = "delivered"
) -> dict[str, Any]:
    """The image once its webhook delivery ended in ``state`` (bounded wait)."""
    image: dict[str, Any] = {}

    def done() -> bool:
        nonlocal image
        image = image_of(stack, account, image_id)
        return bool(image["webhook"] and image["webhook"]["state"] == state)

    eventually_blocking(
        done, timeout=60, what=f"webhook of {image_id} becoming {state}", detail=lambda: str(image)
    )
    return image


def webhooks_consumer_idle(stack: RunningStack) -> bool:
    """Whether the gateways' webhooks consumer holds nothing: no outcome waiting, none in hand,
    none nak'ed for a later retry. An acked outcome is never delivered again, so from then on no
    further attempt of the outcomes so far can come."""

    async def idle() -> bool:
        nc = await nats.connect(stack.nats_url, **stack.nats_credentials(Role.GATEWAY))
        try:
            info = await nc.jetstream().consumer_info(nats_names.EVENTS_STREAM, nats_names.WEBHOOKS_CONSUMER)
        finally:
            await nc.close()
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    return asyncio.run(idle())


def test_a_signed_webhook_is_retried_after_a_500_until_delivered(
    stack: RunningStack, receiver: WebhookReceiver
) -> None:
    account = stack.create_account(credits=10)
    secret = rotate_secret(stack, account)
    receiver.script("/retried", 500)
    response = generate(stack, account, webhook_url=receiver.url("/retried"))
    assert response.status_code == 200, response.text
    image_id = response.json()["images"][0]["id"]

    first, second = receiver.wait_for("/retried", 2)
    assert (first.status, second.status) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"evt_{image_id}_completed"
    body = verified(second, secret)
    assert verified(first, secret) == body
    assert body["type"] == "image.completed"
    data = Image.model_validate(body["data"])
    assert (data.id, data.status, data.status_name, data.width, data.height) == (
        image_id,
        2,
        "completed",
        512,
        512,
    )
    assert data.url == f"{stack.gateway_url}/images/{image_id}.png"
    assert data.credits_used == 1 and data.error is None and "webhook" not in body["data"]

    image = delivered(stack, account, image_id)
    assert image["webhook"]["url"] == receiver.url("/retried")
    assert (image["webhook"]["attempts"], image["webhook"]["last_status"]) == (2, 200)
    assert {k: v for k, v in image.items() if k != "webhook"} == body["data"]
    assert attempts(stack, image_id) == [(1, 500), (2, 200)]
    # A delivered webhook is not sent again: proven by the event that makes it impossible (its
    # outcome acked), not by waiting a while and seeing nothing.
    stack.wait_for(lambda: webhooks_consumer_idle(stack), what="the webhooks consumer to ack every outcome")
    assert len(receiver.deliveries("/retried")) == 2


def test_the_accounts_default_webhook_set_by_the_admin_cli(
    stack: RunningStack, receiver: WebhookReceiver
) -> None:
    account = stack.create_account(credits=10)
    shown = admin(stack, "webhook", "set", account.email, receiver.url("/default"))
    secret = shown["signing_secret"]
    assert secret.startswith("whsec_")
    assert admin(stack, "webhook", "show", account.account_id)["url"] == receiver.url("/default")

    response = generate(stack, account, count=2)
    assert response.status_code == 200, response.text
    ids = {image["id"] for image in response.json()["images"]}
    deliveries = receiver.wait_for("/default", 2)
    assert {verified(d, secret)["data"]["id"] for d in deliveries} == ids
    account_view = httpx.get(
        f"{stack.rest_url}/account", headers={"Authorization": f"Bearer {account.token}"}
    )
    assert account_view.json()["account"]["webhook_url"] == receiver.url("/default")
    assert secret not in account_view.text

    admin(stack, "webhook", "clear", account.account_id)
    time.sleep(1.0)  # the gateway caches settings for its auth cache time (0.5 s here)
    plain = generate(stack, account)
    assert image_of(stack, account, plain.json()["images"][0]["id"])["webhook"] is None


def test_a_failed_image_is_posted_as_image_failed(stack: RunningStack, receiver: WebhookReceiver) -> None:
    account = stack.create_account(credits=10)
    secret = rotate_secret(stack, account)
    response = generate(
        stack, account, input=["http://127.0.0.1:1/input.png"], webhook_url=receiver.url("/failed")
    )
    image_id = response.json()["images"][0]["id"]
    [delivery] = receiver.wait_for("/failed", 1)
    body = verified(delivery, secret)
    assert body["type"] == "image.failed"
    assert delivery.headers["webhook-id"] == f"evt_{image_id}_failed"
    assert (body["data"]["status"], body["data"]["status_name"], body["data"]["credits_used"]) == (
        3,
        "failed",
        0,
    )
    assert body["data"]["error"]["code"] == "input_image_refused"
    assert delivered(stack, account, image_id)["status"] == 3
    assert stack.credits(account.account_id) == 10


def test_a_webhook_that_keeps_failing_ends_failed_after_its_last_attempt(
    stack: RunningStack, receiver: WebhookReceiver
) -> None:
    account = stack.create_account(credits=10)
    rotate_secret(stack, account)
    receiver.script("/down", *([503] * 10))
    image_id = generate(stack, account, webhook_url=receiver.url("/down")).json()["images"][0]["id"]
    image = delivered(stack, account, image_id, state="failed")
    assert (image["webhook"]["attempts"], image["webhook"]["last_status"]) == (4, 503)
    assert image["status"] == 2  # the image itself is fine
    assert attempts(stack, image_id) == [(n, 503) for n in range(1, 5)]
    assert len(receiver.deliveries("/down")) == 4


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{other}/hook", "loopback"),
        ("http://localhost:{other}/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:{other}/hook", "loopback"),
        ("ftp://example.com/hook", "URL"),
    ],
)
def test_a_webhook_url_the_guard_refuses_is_422_and_costs_nothing(
    stack: RunningStack, url: str, reason: str
) -> None:
    account = stack.create_account(credits=10)
    rotate_secret(stack, account)
    response = generate(stack, account, webhook_url=url.format(other=free_port()))
    assert response.status_code == 422, response.text
    messages = ValidationErrorBody.model_validate(response.json()).errors["webhook_url"]
    assert any(reason in message for message in messages), messages
    assert stack.credits(account.account_id) == 10


def test_a_webhook_needs_the_accounts_signing_secret(stack: RunningStack, receiver: WebhookReceiver) -> None:
    account = stack.create_account(credits=10)
    response = generate(stack, account, webhook_url=receiver.url("/no-secret"))
    assert response.status_code == 422
    messages = ValidationErrorBody.model_validate(response.json()).errors["webhook_url"]
    assert "imagegen admin webhook rotate-secret" in messages[0]
    assert stack.credits(account.account_id) == 10
