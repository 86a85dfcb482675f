"""OpenTelemetry across the services: one generate_image call is one trace with spans from the
gateway, billing and the generator, the settlement of its outcome included, exported over OTLP/HTTP
to a real receiver in this process."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import httpx
import pytest

from imagegen_testing.mcp import mcp_client
from imagegen_testing.otlp import OtlpReceiver, ReceivedSpan
from imagegen_testing.polling import eventually
from imagegen_testing.stack import start_stack

pytestmark = pytest.mark.slow  # starts service processes

PROMPT = "a secret lighthouse at dusk, token sk-do-not-trace"


def _trace_of(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    [trace_id] = {s.trace_id for s in spans if s.attributes.get("imagegen.job_id") == job_id}
    return [s for s in spans if s.trace_id == trace_id]


def _settled(spans: list[ReceivedSpan], job_id: str) -> bool:
    return any(
        s.name == "billing.settlement" and s.attributes.get("imagegen.job_id") == job_id for s in spans
    )


def _is_settled(receiver: OtlpReceiver, job_id: str) -> bool:
    return _settled(receiver.spans(), job_id)


async def test_one_generation_is_one_trace_across_the_three_services(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        running = start_stack(
            tmp_path,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
        )
        try:
            account = running.create_account(credits=10)
            async with mcp_client(running.mcp_url, account.token) as client:
                result = await client.call_tool(
                    "generate_image", {"prompt": PROMPT, "width": 512, "height": 512}
                )
            assert not result.is_error, result.content
            assert isinstance(result.structured_content, dict)
            job_id = result.structured_content["image_id"]

            # The REST surface: the submit's HTTP request is the root of its image's trace.
            submitted = httpx.post(
                f"{running.rest_url}/images/generate",
                json={"model": "flux-1", "prompt": PROMPT, "width": 512, "height": 512},
                headers={"Authorization": f"Bearer {account.token}"},
                timeout=30,
            )
            assert submitted.status_code == 200, submitted.text
            [queued] = submitted.json()["images"]
            rest_job_id = queued["id"]

            for settled_job in (job_id, rest_job_id):
                await eventually(
                    functools.partial(_is_settled, receiver, settled_job),
                    timeout=30,
                    what="the settlement span of the job",
                    detail=lambda: str(Counter((s.service, s.name) for s in receiver.spans())),
                )
        finally:
            running.stop()
        spans = receiver.spans()

    trace = _trace_of(spans, job_id)
    by_service = {
        service: {s.name for s in trace if s.service == service} for service in {s.service for s in trace}
    }
    detail = str(sorted((s.service, s.name) for s in trace))
    assert set(by_service) == {"gateway", "billing", "generator"}, detail
    # The gateway: the HTTP request, the MCP tool call, billing's RPCs as a client, the job published.
    assert "POST /api/mcp" in by_service["gateway"], detail
    assert "tools/call generate_image" in by_service["gateway"], detail
    assert "/imagegen.billing.v1.BillingService/ReserveBatch" in by_service["gateway"], detail
    assert "publish imagegen.jobs.generate" in by_service["gateway"], detail
    # Billing: the same RPCs as a server, their SQL, and the settlement of the outcome event.
    assert "/imagegen.billing.v1.BillingService/ReserveBatch" in by_service["billing"], detail
    assert "billing.settlement" in by_service["billing"], detail
    # The generator: the job, the provider call, normalising, storing, the outcome published.
    assert {
        "generator.job",
        "generator.provider",
        "generator.normalize",
        "image_store.put",
        "publish imagegen.events.job.outcome",
    } <= by_service["generator"], detail

    # One tree: a single root (the gateway's HTTP request), every other span's parent in the trace.
    ids = {s.span_id for s in trace}
    roots = [s for s in trace if s.parent_span_id not in ids]
    assert [(r.service, r.name) for r in roots] == [("gateway", "POST /api/mcp")], detail
    parent = {s.span_id: s for s in trace}
    job = next(s for s in trace if s.name == "generator.job")
    assert parent[job.parent_span_id].name == "publish imagegen.jobs.generate"
    settlement = next(s for s in trace if s.name == "billing.settlement")
    assert parent[settlement.parent_span_id].name == "publish imagegen.events.job.outcome"

    rest = _trace_of(spans, rest_job_id)
    detail = str(sorted((s.service, s.name) for s in rest))
    rest_ids = {s.span_id for s in rest}
    assert [(s.service, s.name) for s in rest if s.parent_span_id not in rest_ids] == [
        ("gateway", "POST /api/images/generate")
    ], detail
    assert {("generator", "generator.job"), ("billing", "billing.settlement")} <= {
        (s.service, s.name) for s in rest
    }, detail

    # Nothing of the prompt (or anything that looks like a secret) in any attribute of any span.
    for span in spans:
        for value in [*span.attributes.values(), *span.resource.values()]:
            assert "lighthouse" not in str(value) and "sk-do-not-trace" not in str(value), span
