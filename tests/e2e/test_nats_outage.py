"""NATS goes away and comes back: a generation that cannot be queued costs nothing and says so, and
the stack works again once NATS is back, with nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.types import TextContent

from imagegen.billing.v1.resources_pb2 import LedgerEntry
from imagegen_cli.processes import http_ok
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    running = start_stack(tmp_path)
    yield running
    running.stop()


async def test_a_job_that_cannot_be_queued_costs_nothing_and_the_stack_recovers(stack: RunningStack) -> None:
    account = stack.create_account(credits=10)
    stack.nats.stop()
    async with mcp_client(stack.mcp_url, account.token) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "in the dark", "width": 512, "height": 512}
        )
    assert result.is_error
    [content] = result.content
    assert isinstance(content, TextContent)
    assert "the job queue is unavailable" in content.text
    assert "No credits were charged." in content.text
    assert stack.credits(account.account_id) == 10
    [release] = [e for e in stack.ledger(account.account_id) if e.kind == LedgerEntry.KIND_RELEASE]
    assert release.note == "not_queued"  # billing keeps the ReleaseReason, not free text

    stack.nats.start()  # same port, same JetStream store: every client reconnects by itself
    stack.wait_for(http_ok(f"{stack.gateway_url}/readyz"), what="the gateway back on NATS")
    async with mcp_client(stack.mcp_url, account.token) as client:
        again = await client.call_tool(
            "generate_image", {"prompt": "light again", "width": 512, "height": 512}
        )
    assert not again.is_error, again
    assert stack.credits(account.account_id) == 8
