"""Delivering a webhook behind the SSRF guard: real HTTP to a local receiver that only an explicit
``host:port`` allowance lets through; refusals, failures and timeouts as attempt results."""

from __future__ import annotations

import pytest

from imagegen_common.safe_fetch import FetchPolicy, SafeFetcher
from imagegen_gateway.errors import InvalidInputError
from imagegen_gateway.webhooks.dispatcher import retry_delay
from imagegen_gateway.webhooks.sender import WebhookSender
from imagegen_testing.net import free_port
from imagegen_testing.webhook_receiver import WebhookReceiver


def sender(allowed: str = "", timeout: float = 5.0) -> WebhookSender:
    policy = FetchPolicy(max_redirects=0, allowed_hosts=frozenset({allowed} if allowed else set()))
    return WebhookSender(SafeFetcher(policy), timeout)


async def test_an_allowed_receiver_gets_the_body_and_headers() -> None:
    with WebhookReceiver() as receiver:
        receiver.script("/hook", 500)
        webhooks = sender(f"127.0.0.1:{receiver.port}")
        await webhooks.check(receiver.url("/hook"))
        failed = await webhooks.send(receiver.url("/hook"), '{"a":1}', {"webhook-id": "evt_1"})
        ok = await webhooks.send(receiver.url("/hook"), '{"a":1}', {"webhook-id": "evt_1"})
        [first, second] = receiver.deliveries("/hook")
    assert (failed.status_code, failed.delivered, failed.refused, failed.error) == (
        500,
        False,
        False,
        "answered HTTP 500",
    )
    assert (ok.status_code, ok.delivered, ok.error) == (200, True, "")
    assert second.body == b'{"a":1}'
    assert second.headers["webhook-id"] == "evt_1"
    assert second.headers["content-type"] == "application/json"
    assert second.headers["user-agent"].startswith("imagegen-webhooks/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://user:pw@example.com/hook",
        "file:///etc/passwd",
    ],
)
async def test_a_guarded_url_is_refused_and_never_contacted(url: str) -> None:
    webhooks = sender(allowed=f"127.0.0.1:{free_port()}")  # another port is allowed, not this one
    target = url.format(port=free_port())
    with pytest.raises(InvalidInputError) as refused:
        await webhooks.check(target)
    assert refused.value.field == "webhook_url"
    result = await webhooks.send(target, "{}", {})
    assert (result.status_code, result.refused) == (0, True)
    assert result.error.startswith("refused:")


async def test_no_answer_is_a_retryable_failure() -> None:
    port = free_port()  # nothing listens there
    result = await sender(f"127.0.0.1:{port}").send(f"http://127.0.0.1:{port}/hook", "{}", {})
    assert (result.status_code, result.refused, result.delivered) == (0, False, False)
    assert "could not connect" in result.error


def test_the_retry_schedule() -> None:
    delays = [5.0, 30.0, 120.0]
    assert [retry_delay(n, delays) for n in range(1, 5)] == [5.0, 30.0, 120.0, None]
