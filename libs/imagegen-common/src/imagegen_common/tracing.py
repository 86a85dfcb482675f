"""OpenTelemetry traces: the one set-up of a process, and the trace context across NATS.

One generation is one trace across the three services: the gateway's HTTP request and MCP tool call,
billing's gRPC calls (client and server spans, context in the gRPC metadata, by the gRPC
instrumentation), the job on NATS (context in the message headers, by ``producing`` and
``consuming`` here), the generator's job, and billing's settlement of its outcome event.

Off and free unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set: no SDK is imported, no instrumentation installed, the tracer is the API's no-op one, and the
helpers below return at once. When it is set, ``setup_tracing`` installs the SDK with a batch span
processor and the OTLP/HTTP (protobuf) exporter; everything else is the standard ``OTEL_*``
variables, read by the SDK itself: ``OTEL_SERVICE_NAME`` (default: the service, ``gateway``,
``billing``, ``generator``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_PROPAGATORS``,
``OTEL_SDK_DISABLED``.

NATS has no OpenTelemetry instrumentation: publishers wrap a publish in ``producing(subject,
headers)`` (a PRODUCER span whose context goes into the headers), handlers of a delivered message
are decorated with ``@consuming(name)`` (a CONSUMER span that continues the context of the
message's headers). Never a prompt, a token or a secret as a span attribute: ids, models and sizes
only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

#: Either of these set (and ``OTEL_SDK_DISABLED`` not ``true``) turns tracing on.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: ``service.namespace`` of every span's resource.
SERVICE_NAMESPACE = "imagegen"

_tracer = trace.get_tracer("imagegen")  # a proxy: it becomes the SDK's tracer once one is installed
_enabled = False


class Message(Protocol):
    """What ``consuming`` reads of a delivered NATS message (``nats.aio.msg.Msg``)."""

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, the SDK not disabled)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    """Whether ``setup_tracing`` installed the SDK in this process."""
    return _enabled


def setup_tracing(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Installs the OpenTelemetry SDK (batch processor, OTLP/HTTP exporter) as the global tracer
    provider when the environment names an OTLP endpoint; returns whether tracing is on.

    Call it once at start-up, before the service creates its gRPC channels and servers (the gRPC
    instrumentation patches their constructors). ``service`` is the default ``service.name``;
    ``OTEL_SERVICE_NAME`` overrides it. Spans still buffered are exported when the process exits.
    """
    global _enabled  # noqa: PLW0603  (one tracer provider per process)
    if _enabled:
        return True
    if not tracing_configured(environ):
        return False
    # Imported here: a process without an endpoint never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"service.namespace": SERVICE_NAMESPACE}
    if not environ.get("OTEL_SERVICE_NAME", "").strip():
        attributes[SERVICE_NAME] = service
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; the sampler comes from
    # OTEL_TRACES_SAMPLER, the exporter's endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info(
        "tracing on",
        extra={"service_name": provider.resource.attributes.get(SERVICE_NAME), "exporter": "http/protobuf"},
    )
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    if protocol not in ("", "http/protobuf"):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL ignored: spans are exported as OTLP http/protobuf")
    return True


def inject(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current trace context (``traceparent``, ``tracestate``, baggage) in the
    global propagator's format; a copy, never the argument itself."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by a message's headers (an empty context when there is none)."""
    return propagate.extract(headers or {})


@contextlib.contextmanager
def producing(subject: str, headers: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """A PRODUCER span ``publish <subject>`` around a NATS publish; yields the headers to publish
    with: ``headers`` plus that span's context. Off: yields ``headers`` as they are, no span."""
    if not _enabled:
        yield dict(headers or {})
        return
    with _tracer.start_as_current_span(
        f"publish {subject}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ):
        yield inject(headers)


def consuming(
    name: str,
) -> Callable[[Callable[[S, Any], Coroutine[Any, Any, R]]], Callable[[S, Any], Coroutine[Any, Any, R]]]:
    """Decorates a method that handles one delivered NATS message (``async def handle(self, msg)``):
    it runs in a CONSUMER span ``name`` that continues the trace of the message's headers (a new
    trace when they carry none). Off: the method runs as it is."""

    def decorate(
        handler: Callable[[S, Any], Coroutine[Any, Any, R]],
    ) -> Callable[[S, Any], Coroutine[Any, Any, R]]:
        @functools.wraps(handler)
        async def traced_handler(self: S, msg: Message) -> R:
            if not _enabled:
                return await handler(self, msg)
            with _tracer.start_as_current_span(
                name,
                context=extract(msg.headers),
                kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject},
            ):
                return await handler(self, msg)

        return traced_handler

    return decorate


def traced(name: str) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorates a coroutine function: each call is an INTERNAL span ``name``, a child of the current
    one (the provider call, normalising, storing an image). Off: the function runs as it is."""

    def decorate(function: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(function)
        async def traced_call(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _enabled:
                return await function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await function(*args, **kwargs)

        return traced_call

    return decorate


def set_attributes(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Sets attributes on the current span (ids, models, sizes: never a prompt or a secret)."""
    if _enabled:
        trace.get_current_span().set_attributes(attributes)


def log_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for a log line (Jaeger finds the trace by
    its id); empty when tracing is off or no span is current."""
    if not _enabled:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}


async def untraced(work: Awaitable[R]) -> R:
    """Awaits ``work`` with instrumentation suppressed: for background loops (health probes, the
    reaper) whose database queries would otherwise each be a trace of their own."""
    if not _enabled:
        return await work
    token = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        return await work
    finally:
        otel_context.detach(token)


# Instrumentations of the libraries the services use; each does nothing while tracing is off. The
# health service is left out of the gRPC spans: probes every few seconds are not generations.
_HEALTH_SERVICE = "grpc.health.v1.Health"
#: Gateway routes that are not traced (probes and scrapes).
_UNTRACED_URLS = "/healthz,/readyz,/metrics"


def _grpc_filter() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.service_name(_HEALTH_SERVICE))


def instrument_grpc_server() -> None:
    """Server spans for every RPC of the ``grpc.aio.server`` built after this call."""
    if _enabled:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer(filter_=_grpc_filter()).instrument()  # type: ignore[no-untyped-call]


def instrument_grpc_client() -> None:
    """Client spans (and the context in the metadata) for the ``grpc.aio`` channels opened after
    this call."""
    if _enabled:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

        GrpcAioInstrumentorClient(filter_=_grpc_filter()).instrument()  # type: ignore[no-untyped-call]


def instrument_sqlalchemy(*engines: Any) -> None:
    """A span per statement of each engine (``AsyncEngine`` or sync ``Engine``), all in one call (the
    instrumentor instruments once); the statement text is recorded with its bound parameters left out."""
    if _enabled and engines:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 while its engine events work
        # as they are on 2.1 (tests/e2e/test_tracing.py sees the statement spans).
        SQLAlchemyInstrumentor().instrument(
            engines=[getattr(engine, "sync_engine", engine) for engine in engines], skip_dep_check=True
        )


#: Span attributes that hold a request's full URL (old and stable HTTP semantic conventions).
_URL_ATTRIBUTES = ("http.url", "url.full")


def _without_query(span: Any, request: Any) -> None:
    """An input image's URL may be presigned (a signature, a token in its query): the span keeps the
    URL without its query and fragment."""
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and ("?" in value or "#" in value):
            span.set_attribute(key, value.split("#", 1)[0].split("?", 1)[0])


def instrument_httpx() -> None:
    """Client spans for every ``httpx`` request (the provider's calls to Replicate, input images),
    their URLs without the query."""
    if _enabled:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(
            request_hook=_without_query, async_request_hook=_async_without_query
        )


async def _async_without_query(span: Any, request: Any) -> None:
    _without_query(span, request)


def instrument_asgi_app(app: Any) -> None:
    """Server spans for the HTTP requests of a FastAPI application (probes and scrapes left out)."""
    if _enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # Not the ASGI "http send"/"http receive" spans: one per chunk of a streamed answer.
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls=_UNTRACED_URLS, exclude_spans=["receive", "send"]
        )
