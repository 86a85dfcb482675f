"""The tracing module: off by default, and the trace context across a real nats-server (a published
job's headers continue the publisher's trace in the consumer)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from imagegen_common import tracing
from imagegen_common.messaging import connect

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, with a provider of its own (the global one is set once per process,
    and other tests run in this process with tracing off)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_enabled", True)
    yield exporter
    provider.shutdown()


def test_tracing_is_configured_by_an_otlp_endpoint_only() -> None:
    assert not tracing.tracing_configured({})
    assert not tracing.tracing_configured({"OTEL_SERVICE_NAME": "gateway"})
    assert tracing.tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
    assert tracing.tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.tracing_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"}
    )
    # Without an endpoint, set-up installs nothing: the global provider stays the API's no-op one.
    assert not tracing.setup_tracing("gateway", {})
    assert not tracing.enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


async def test_off_the_helpers_pass_headers_through_and_make_no_span() -> None:
    with tracing.producing("imagegen.jobs.generate", {"Nats-Msg-Id": "job-1"}) as headers:
        assert headers == {"Nats-Msg-Id": "job-1"}
        assert not trace.get_current_span().get_span_context().is_valid

    class Handler:
        @tracing.consuming("generator.job")
        async def handle(self, msg: object) -> bool:
            return not trace.get_current_span().get_span_context().is_valid

    assert await Handler().handle(object())  # not even read: off, the message is handed on as it is


def test_inject_and_extract_carry_the_current_context_in_headers() -> None:
    parent = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        original = {"Nats-Msg-Id": "job-1"}
        headers = tracing.inject(original)
    finally:
        otel_context.detach(token)
    assert original == {"Nats-Msg-Id": "job-1"}  # a copy: the caller's dict is not changed
    assert headers["Nats-Msg-Id"] == "job-1"
    assert headers["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"

    carried = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert (carried.trace_id, carried.span_id, carried.is_remote) == (TRACE_ID, SPAN_ID, True)
    assert not trace.get_current_span(tracing.extract(None)).get_span_context().is_valid
    assert not trace.get_current_span(tracing.extract({"Nats-Msg-Id": "x"})).get_span_context().is_valid


async def test_a_message_through_nats_continues_the_publishers_trace(
    nats_url: str, exported: InMemorySpanExporter
) -> None:
    nc = await connect(nats_url, name="tracing-test")
    received: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe("imagegen.test.traced", cb=received.put)
    try:
        with tracing.producing("imagegen.test.traced", {"Nats-Msg-Id": "job-1"}) as headers:
            await nc.publish("imagegen.test.traced", b"job", headers=headers)
        msg = await asyncio.wait_for(received.get(), timeout=5)
    finally:
        await sub.unsubscribe()
        await nc.close()
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "job-1"

    class Consumer:
        @tracing.consuming("generator.job")
        async def handle(self, msg: Msg) -> None:
            tracing.set_attributes({"imagegen.job_id": "job-1"})

    await Consumer().handle(msg)

    spans: dict[str, ReadableSpan] = {span.name: span for span in exported.get_finished_spans()}
    publish, job = spans["publish imagegen.test.traced"], spans["generator.job"]
    assert publish.kind is SpanKind.PRODUCER and job.kind is SpanKind.CONSUMER
    assert publish.context is not None and job.context is not None and job.parent is not None
    assert job.context.trace_id == publish.context.trace_id
    assert job.parent.span_id == publish.context.span_id
    assert dict(job.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.destination.name": "imagegen.test.traced",
        "imagegen.job_id": "job-1",
    }


async def test_a_message_without_context_starts_a_trace_of_its_own(exported: InMemorySpanExporter) -> None:
    class Delivered:
        subject = "imagegen.events.job.outcome"
        headers = {"Nats-Msg-Id": "outcome-job-1"}

    class Consumer:
        @tracing.consuming("billing.settlement")
        async def handle(self, msg: Delivered) -> None:
            pass

    await Consumer().handle(Delivered())
    [span] = exported.get_finished_spans()
    assert span.name == "billing.settlement" and span.parent is None


async def test_traced_and_untraced(exported: InMemorySpanExporter) -> None:
    @tracing.traced("generator.normalize")
    async def normalize(size: int) -> int:
        return size * 2

    async def suppressed() -> bool:
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled

        return not is_instrumentation_enabled()

    assert await normalize(2) == 4
    assert [span.name for span in exported.get_finished_spans()] == ["generator.normalize"]
    assert await tracing.untraced(suppressed())


async def test_http_client_spans_keep_urls_without_their_query() -> None:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    presigned = "https://bucket.example.com/in.png?X-Amz-Credential=AKIA&X-Amz-Signature=abc123#part"
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200))) as client:
        HTTPXClientInstrumentor.instrument_client(
            client,
            tracer_provider=provider,
            request_hook=tracing._async_without_query,  # an AsyncClient's hook is a coroutine function
        )
        assert (await client.get(presigned)).status_code == 200
    [span] = exporter.get_finished_spans()
    urls = [v for k, v in (span.attributes or {}).items() if k in ("http.url", "url.full")]
    assert urls == ["https://bucket.example.com/in.png"]
    provider.shutdown()


def test_json_log_lines_name_the_trace_they_belong_to(exported: InMemorySpanExporter) -> None:
    import json
    import logging

    from imagegen_common.logging import JsonFormatter

    formatter = JsonFormatter("generator")
    record = logging.makeLogRecord({"msg": "job started", "levelno": logging.INFO, "levelname": "INFO"})
    assert "trace_id" not in json.loads(formatter.format(record))  # no span: no ids
    with tracing._tracer.start_as_current_span("generator.job") as span:
        line = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


SPAN_IN_A_PROCESS = """
from opentelemetry import trace
from imagegen_common import tracing
assert tracing.setup_tracing("billing")
with trace.get_tracer("test").start_as_current_span("one span"):
    pass
"""  # no flush: the exporter's batch goes out as the process exits


@pytest.mark.parametrize(("service_name", "expected"), [(None, "billing"), ("billing-eu", "billing-eu")])
def test_set_up_exports_over_otlp_http_and_flushes_at_exit(service_name: str | None, expected: str) -> None:
    import os
    import subprocess
    import sys

    from imagegen_testing.otlp import OtlpReceiver

    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        env.pop("OTEL_SERVICE_NAME", None)
        if service_name:
            env["OTEL_SERVICE_NAME"] = service_name
        subprocess.run([sys.executable, "-c", SPAN_IN_A_PROCESS], env=env, check=True, timeout=60)
        [span] = receiver.spans()
    assert span.name == "one span"
    assert span.service == expected
    assert span.resource["service.namespace"] == "imagegen"
