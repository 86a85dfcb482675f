"""The per-token rate limit of generate requests: 429 with Retry-After and the IETF RateLimit fields,
nothing charged for a refused request, and one quota shared by two gateway replicas (NATS KV)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imagegen_gateway.api.schemas import RateLimitedBody
from imagegen_testing.net import free_port
from imagegen_testing.stack import Account, RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

LIMIT = 3
POLICY = f'"generate";q={LIMIT};w=60'
REMAINING = re.compile(r'^"generate";r=(\d+);t=(\d+)$')


GATEWAY_ENV = {"IMAGEGEN_AUTH_CACHE_SECONDS": "0.5", "IMAGEGEN_RATE_LIMIT_PER_MINUTE": str(LIMIT)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack whose gateway has a low limit."""
    running = start_stack(tmp_path_factory.mktemp("stack"), gateway_env=GATEWAY_ENV)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateways(stack: RunningStack) -> list[str]:
    """The base URLs of two gateway replicas of the stack (the second one is stopped with it)."""
    port = free_port()
    stack.stack.start_gateway("127.0.0.1", port, name="gateway-2", **GATEWAY_ENV)
    return [stack.gateway_url, f"http://127.0.0.1:{port}"]


def generate(base_url: str, account: Account, **body: Any) -> httpx.Response:
    payload = {"model": "flux-1", "prompt": "limited", "width": 512, "height": 512, **body}
    return httpx.post(
        f"{base_url}/api/images/generate",
        json=payload,
        headers={"Authorization": f"Bearer {account.token}"},
        timeout=30,
    )


def remaining(response: httpx.Response) -> int:
    assert response.headers["ratelimit-policy"] == POLICY
    match = REMAINING.match(response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    assert 1 <= int(match[2]) <= 60
    return int(match[1])


def test_the_limit_is_shared_by_the_replicas_and_answered_with_429(
    stack: RunningStack, gateways: list[str]
) -> None:
    account = stack.create_account(credits=100)
    answers: list[httpx.Response] = []
    # Alternate between the replicas until one refuses. A minute may turn over in between, which
    # gives a fresh quota: so allow up to two windows' worth before the refusal.
    for n in range(2 * LIMIT + 1):
        answers.append(generate(gateways[n % 2], account))
        if answers[-1].status_code == 429:
            break
    refused = answers[-1]
    assert refused.status_code == 429, [a.status_code for a in answers]
    accepted = answers[:-1]
    assert all(a.status_code == 200 for a in accepted)
    assert [remaining(a) for a in accepted[-LIMIT:]] == list(range(LIMIT - 1, -1, -1))

    body = RateLimitedBody.model_validate(refused.json())
    assert (body.success, body.error) == (False, "rate_limited")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60 and body.retry_after == retry_after
    assert remaining(refused) == 0
    # nothing is charged for the refused request: every accepted one is one 512x512 image (1 credit)
    assert stack.credits(account.account_id) == 100 - len(accepted)

    other_replica = generate(gateways[len(answers) % 2], account)
    # the other replica refuses too, unless the minute turned over just now (then its quota is fresh)
    assert other_replica.status_code == 429 or remaining(other_replica) == LIMIT - 1
    assert stack.credits(account.account_id) == 100 - len(accepted) - (other_replica.status_code == 200)


def test_each_token_has_its_own_quota(stack: RunningStack) -> None:
    first, second = stack.create_account(credits=10), stack.create_account(credits=10)
    assert [generate(stack.gateway_url, first).status_code for _ in range(LIMIT)] == [200] * LIMIT
    fresh = generate(stack.gateway_url, second)
    assert fresh.status_code == 200 and remaining(fresh) == LIMIT - 1


def test_a_bad_request_counts_but_a_refused_one_costs_nothing(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    statuses = [generate(stack.gateway_url, account, width=1).status_code for _ in range(2 * LIMIT + 1)]
    assert statuses[0] == 422 and 429 in statuses
    assert stack.credits(account.account_id) == 10
