"""What operators rely on: SIGTERM drains without losing work or leaving credits reserved, and every
metric that the dashboard and the alerts query is one the services really export."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.mcp import mcp_client
from imagegen_testing.stack import RunningStack, start_stack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parents[2]


def metric_names_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("metric_names", ROOT / "scripts" / "metric_names.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate() as server:
        yield server


@pytest.fixture
def slow_stack(tmp_path: Path, fake: FakeReplicate) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path,
        generator_env=fake.generator_env(IMAGEGEN_GENERATOR_DRAIN_TIMEOUT_SECONDS="60"),
        gateway_env={"IMAGEGEN_GATEWAY_DRAIN_TIMEOUT_SECONDS": "60"},
    )
    yield running
    running.stop()


async def test_sigterm_mid_work_finishes_every_call_and_leaves_nothing_reserved(
    slow_stack: RunningStack, fake: FakeReplicate
) -> None:
    fake.behaviour = FakeBehaviour(delay_seconds=3)
    account = slow_stack.create_account(credits=100)

    headers = {"Authorization": f"Bearer {account.token}", "Content-Type": "application/json"}
    client = httpx.AsyncClient(timeout=120)

    async def generate(i: int) -> dict[str, Any]:
        params = {
            "name": "generate_image",
            "arguments": {"prompt": f"drain {i}", "width": 512, "height": 512},
        }
        call = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
        response = await client.post(slow_stack.mcp_url, headers=headers, json=call)
        result: dict[str, Any] = response.json()["result"]
        return result

    calls = [asyncio.create_task(generate(i)) for i in range(4)]
    # Every job is with the provider: the work is in flight.
    await eventually(lambda: len(fake.creates) >= 4, what="four predictions")
    slow_stack.stack.child(slow_stack.generators[0]).send_signal(signal.SIGTERM)
    slow_stack.stack.child("gateway").send_signal(signal.SIGTERM)
    try:
        results = await asyncio.wait_for(asyncio.gather(*calls), timeout=120)
    finally:
        await client.aclose()

    assert [r["isError"] for r in results] == [False] * 4, results
    # both were asked to stop once: they exit on their own, with success, once drained
    assert slow_stack.stack.child("gateway").wait(timeout=60) == 0
    assert slow_stack.stack.child(slow_stack.generators[0]).wait(timeout=60) == 0
    slow_stack.wait_for(lambda: slow_stack.account(account.account_id).account.reserved_credits == 0,
                        what="every reservation settled")  # fmt: skip
    assert slow_stack.credits(account.account_id) == 100 - 4 * 2
    assert len(fake.creates) == 4  # nothing was run twice


def scrape(url: str) -> set[str]:
    """Names of every metric family and sample a /metrics page exposes."""
    names: set[str] = set()
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


async def test_every_metric_in_the_dashboard_and_alerts_is_exported(stack: RunningStack) -> None:
    account = stack.create_account(credits=20)
    async with mcp_client(stack.mcp_url, account.token) as client:  # some traffic, so that samples exist
        await client.call_tool("generate_image", {"prompt": "metrics", "width": 512, "height": 512})
        await client.call_tool("list_models", {})
    ops = {child.name: child.env for child in stack.stack.children}
    exported = scrape(f"{stack.gateway_url}/metrics")
    exported |= scrape(f"http://{ops['billing']['IMAGEGEN_BILLING_OPS_LISTEN']}/metrics")
    exported |= scrape(f"http://{ops[stack.generators[0]]['IMAGEGEN_GENERATOR_OPS_LISTEN']}/metrics")

    names = metric_names_module()
    referenced = set(names.referenced_series_names(ROOT)) - set(names.PROMETHEUS_BUILTIN)
    assert referenced, "the dashboard and rules reference no metric at all?"
    assert sorted(referenced - exported) == []
