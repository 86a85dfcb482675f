"""generate_image against a (fake) Replicate that fails, is slow, or never answers: the client gets
a clear tool error, keeps receiving progress while it waits, and is never charged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mcp.types import CallToolResult, TextContent

from imagegen.billing.v1.resources_pb2 import LedgerEntry
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

JOB_TIMEOUT_SECONDS = 8


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate() as server:
        yield server


@pytest.fixture(scope="module")
def replicate_stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeReplicate) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("replicate-stack"),
        generator_env=fake.generator_env(
            IMAGEGEN_REPLICATE_MAX_RETRIES="1",
            IMAGEGEN_REPLICATE_RETRY_INITIAL_SECONDS="0.1",
            IMAGEGEN_GENERATOR_MAX_DELIVER="1",
        ),
        gateway_env={
            "IMAGEGEN_JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT_SECONDS),
            "IMAGEGEN_PROGRESS_INTERVAL_SECONDS": "0.5",
        },
    )
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeReplicate) -> None:
    fake.reset()


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


async def test_a_replicate_model_serves_the_image_at_the_requested_size(
    replicate_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(output_size=(1024, 1024))  # the model ignores the requested size
    account = replicate_stack.create_account(credits=20)
    async with mcp_client(replicate_stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", {"prompt": "a kite", "width": 1536, "height": 640})
    assert not result.is_error, result
    assert result.structured_content is not None
    assert [c.path for c in fake.creates] == ["/v1/models/google/nano-banana/predictions"]
    assert fake.creates[0].input["aspect_ratio"] == "21:9"
    assert replicate_stack.credits(account.account_id) == 20 - 5  # 1536x640 is 0.9375 MP → 5 credits


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (FakeBehaviour(fail_error="NSFW content detected. Try a different prompt."), "safety"),
        (FakeBehaviour(create_failures=[(503, None)] * 4), "unavailable"),
        (FakeBehaviour(reject_input="aspect_ratio: invalid"), "invalid"),
    ],
    ids=["content-rejected", "provider-unavailable", "input-rejected"],
)
async def test_provider_failures_are_clear_tool_errors_that_cost_nothing(
    replicate_stack: RunningStack, fake: FakeReplicate, behaviour: FakeBehaviour, message: str
) -> None:
    fake.behaviour = behaviour
    account = replicate_stack.create_account(credits=20)
    async with mcp_client(replicate_stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", {"prompt": "anything"})
    text = error_text(result)
    assert message in text.lower()
    assert "No credits were charged." in text
    assert "Traceback" not in text
    replicate_stack.wait_for(
        lambda: replicate_stack.credits(account.account_id) == 20, what="credits returned"
    )


async def test_a_generation_past_the_deadline_is_cancelled_upstream_and_costs_nothing(
    replicate_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(hold=True)
    account = replicate_stack.create_account(credits=20)
    async with mcp_client(replicate_stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", {"prompt": "forever"})
    assert f"not ready within {JOB_TIMEOUT_SECONDS} seconds" in error_text(result)
    assert replicate_stack.credits(account.account_id) == 20
    replicate_stack.wait_for(lambda: len(fake.cancels) == 1, what="the prediction's cancellation")
    releases = [e for e in replicate_stack.ledger(account.account_id) if e.kind == LedgerEntry.KIND_RELEASE]
    assert len(releases) == 1  # whoever noticed first (gateway or generator), credits come back once
    assert releases[0].note in {"timeout", "failed"}  # ReleaseReason TIMEOUT, or FAILED (deadline_exceeded)


async def test_progress_keeps_arriving_while_a_slow_model_works(
    replicate_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(delay_seconds=3)
    account = replicate_stack.create_account(credits=20)
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with mcp_client(replicate_stack.mcp_url, account.token) as client:
        result = await client.call_tool("generate_image", {"prompt": "slow"}, progress_callback=on_progress)
    assert not result.is_error
    stages = [m.split(" ")[0] for m in messages]
    assert stages[0] == "queued"
    assert stages.count("generating") >= 2, messages  # the stage, then heartbeats while it lasts
