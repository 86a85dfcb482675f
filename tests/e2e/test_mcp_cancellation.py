"""A client that gives up, and a generator that dies: nothing is lost and nothing is paid twice."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from mcp.types import CallToolResult

from imagegen.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, resources_pb2
from imagegen.billing.v1.resources_pb2 import LedgerEntry
from imagegen.jobs.v1 import jobs_pb2
from imagegen_common.service_auth import Caller
from imagegen_gateway.generation import idempotent_job_id
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it


def tool_call(prompt: str) -> dict[str, Any]:
    """A generate_image call; each test's own prompt tells its predictions from a previous test's
    (a job of an earlier test may still be redelivered while the next one runs)."""
    return {"name": "generate_image", "arguments": {"prompt": prompt, "width": 512, "height": 512}}


def creates_of(fake: FakeReplicate, prompt: str) -> int:
    return sum(1 for create in fake.creates if create.input.get("prompt") == prompt)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate() as server:
        yield server


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeReplicate) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("slow-stack"),
        generator_env=fake.generator_env(IMAGEGEN_GENERATOR_ACK_WAIT_SECONDS="2"),
        gateway_env={"IMAGEGEN_PROGRESS_INTERVAL_SECONDS": "0.5"},
    )
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeReplicate) -> None:
    fake.reset()


def entries(stack: RunningStack, account_id: str, kind: LedgerEntry.Kind.ValueType) -> list[LedgerEntry]:
    return [e for e in stack.ledger(account_id) if e.kind == kind]


def test_a_client_that_disconnects_mid_wait_is_not_charged(
    slow_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(hold=True)
    account = slow_stack.create_account(credits=10)
    headers = {
        "Authorization": f"Bearer {account.token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    params = {**tool_call("gone"), "_meta": {"progressToken": "p1"}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", slow_stack.mcp_url, headers=headers, content=body) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():  # held upstream: only progress arrives
            if "notifications/progress" in line and "generating" in line:
                break
    # the connection is closed: the gateway cancels the job and releases its credits
    slow_stack.wait_for(lambda: slow_stack.credits(account.account_id) == 10, what="credits returned")
    slow_stack.wait_for(lambda: len(fake.cancels) == 1, what="the prediction's cancellation")
    [release] = entries(slow_stack, account.account_id, LedgerEntry.KIND_RELEASE)
    assert release.note == "cancelled"
    assert not entries(slow_stack, account.account_id, LedgerEntry.KIND_CAPTURE)


async def test_notifications_cancelled_on_another_request_stops_the_call(
    slow_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(hold=True)
    account = slow_stack.create_account(credits=10)
    headers = {"Authorization": f"Bearer {account.token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=60) as client:
        call = asyncio.create_task(
            client.post(
                slow_stack.mcp_url,
                headers=headers,
                json={"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": tool_call("never mind")},
            )
        )
        await eventually(lambda: bool(creates_of(fake, "never mind")), what="the prediction")
        notice = await client.post(
            slow_stack.mcp_url,
            headers=headers,
            json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}},
        )
        assert notice.status_code == 202
        answer = await call  # ends now, not at the job's deadline minutes away
    assert "cancelled at the client's request" in answer.json()["result"]["content"][0]["text"]
    slow_stack.wait_for(lambda: slow_stack.credits(account.account_id) == 10, what="credits returned")
    [release] = entries(slow_stack, account.account_id, LedgerEntry.KIND_RELEASE)
    assert release.note == "cancelled"


async def test_waits_for_a_job_settled_elsewhere_end_from_billings_record(
    slow_stack: RunningStack, fake: FakeReplicate
) -> None:
    """The waits' fallback for real: a first call and its idempotent repeat wait on a job whose
    provider holds it; billing settles the job without any reply reaching the gateway (as when the
    job replies to another gateway), and both waits end from billing's record (the status watch's
    BatchGetReservations) well before the job's deadline."""
    fake.behaviour = FakeBehaviour(hold=True)
    account = slow_stack.create_account(credits=10)
    headers = {"Authorization": f"Bearer {account.token}", "Content-Type": "application/json"}
    arguments = {"prompt": "settled elsewhere", "width": 512, "height": 512, "idempotency_key": "k-1"}
    params = {"name": "generate_image", "arguments": arguments}
    async with httpx.AsyncClient(timeout=60) as client:

        def call(request_id: int) -> asyncio.Task[httpx.Response]:
            body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            return asyncio.create_task(client.post(slow_stack.mcp_url, headers=headers, json=body))

        first = call(1)
        await eventually(lambda: bool(creates_of(fake, "settled elsewhere")), what="the prediction")
        repeat = call(2)
        await asyncio.sleep(1.0)  # the repeat is waiting too (progress interval 0.5 s)
        assert not first.done() and not repeat.done()
        failure = resources_pb2.JobResult(
            error=jobs_pb2.ERROR_CODE_CONTENT_REJECTED, error_message="refused elsewhere"
        )
        async with grpc.aio.insecure_channel(slow_stack.billing_address) as channel:
            await billing_service_pb2_grpc.BillingServiceStub(channel).SettleJob(
                billing_service_pb2.SettleJobRequest(
                    job_id=idempotent_job_id(account.account_id, "k-1"), result=failure
                ),
                metadata=slow_stack.billing_metadata(Caller.GATEWAY),
                timeout=10,
            )
        answers = await asyncio.wait_for(asyncio.gather(first, repeat), timeout=15)
    for answer in answers:
        result = answer.json()["result"]
        assert result["isError"] and "refused elsewhere" in result["content"][0]["text"]
    assert slow_stack.credits(account.account_id) == 10  # released by the settlement, once


async def test_a_generator_killed_mid_job_leaves_it_to_another_and_it_is_paid_once(
    slow_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(delay_seconds=4)
    account = slow_stack.create_account(credits=10)
    [victim] = slow_stack.generators

    async def generate() -> CallToolResult:
        async with mcp_client(slow_stack.mcp_url, account.token) as client:
            return await client.call_tool("generate_image", tool_call("rescued")["arguments"])

    call = asyncio.create_task(generate())
    await eventually(lambda: bool(creates_of(fake, "rescued")), what="the prediction")
    slow_stack.stack.child(victim).send_signal(signal.SIGKILL)
    slow_stack.add_generator("generator-rescuer")
    result = await asyncio.wait_for(call, timeout=120)
    assert not result.is_error, result
    assert creates_of(fake, "rescued") == 2  # the job ran again on the surviving replica
    assert len(entries(slow_stack, account.account_id, LedgerEntry.KIND_RESERVE)) == 1
    assert len(entries(slow_stack, account.account_id, LedgerEntry.KIND_CAPTURE)) == 1
    assert not entries(slow_stack, account.account_id, LedgerEntry.KIND_RELEASE)
    slow_stack.wait_for(lambda: slow_stack.credits(account.account_id) == 8, what="the capture")
