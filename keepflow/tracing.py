"""Keepflow's OpenTelemetry traces: one trace per event, from `POST /events` through routing and
Temporal (its own interceptor carries the trace across the server) to the SendGrid or Twilio call.

Off unless the environment names an exporter: OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER (other than `none`); OTEL_SDK_DISABLED=true
turns it off again. Everything else (headers, protocol details, sampling, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES) is read by the OpenTelemetry SDK itself. Off, `span` hands back one shared
empty context and no interceptor is added: nothing is created per request, event or send.

Imports nothing of Keepflow's but keepflow/logs.py's `mask`, as keepflow/metrics.py imports nothing, so every layer may use it. Workflow
code never does: a span opened there would open again on each replay; Temporal's interceptor makes
the workflow's spans outside the sandbox, once.

Attributes name ids (an event's, a run's, a message key) and fixed words, never a customer's name,
address or phone number.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from keepflow.logs import mask

_tracer = trace.get_tracer("keepflow")
_on = False
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()

P = ParamSpec("P")
R = TypeVar("R")

# Any one of them set means an operator asked for traces.
SWITCHES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module's docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in SWITCHES)


def setup(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export this process' spans if the environment asks for it; True if it does. `service_name`
    unless OTEL_SERVICE_NAME names the service. Call once, before the first client connects."""
    if _on or not wanted(environ):
        return _on
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES.
    provider = TracerProvider(resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or service_name}))
    exporter: SpanExporter
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # Batched off the hot path; the SDK flushes what is left when the process exits.
    provider.add_span_processor(BatchSpanProcessor(masking(exporter)))
    use(provider)
    return True


def masking(exporter: Any) -> Any:
    """`exporter`, sent spans whose texts are masked (keepflow/logs.py `mask`): Temporal's
    interceptor puts a failed activity's error text on its span, as status and as an exception
    event, and a provider's error can quote the recipient."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

    def masked_values(values: Any) -> dict[str, Any]:
        return {k: mask(v) if isinstance(v, str) else v for k, v in (values or {}).items()}

    def masked(span: ReadableSpan) -> ReadableSpan:
        status = span.status
        if status.description:
            status = Status(status.status_code, mask(status.description))
        events = [Event(e.name, masked_values(e.attributes), e.timestamp) for e in span.events]
        return ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=masked_values(span.attributes), events=events, links=span.links, kind=span.kind,
            status=status, start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope)

    class _Masking(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> Any:
            return exporter.export([masked(s) for s in spans])

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return exporter.force_flush(timeout_millis)

    return _Masking()


def use(provider: Any) -> None:
    """Send spans to `provider` (an SDK TracerProvider): what `setup` does, and what tests do
    with an in-memory exporter. The global provider can be set once per process."""
    global _on
    trace.set_tracer_provider(provider)
    _on = True


def on() -> bool:
    return _on


def span(name: str, attributes: Mapping[str, str | int | bool] | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span, or nothing when tracing is off."""
    if not _on:
        return _OFF
    return _span(name, attributes, kind)


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, str | int | bool] | None, kind: SpanKind) -> Iterator[Any]:
    # Not the SDK's own exception recording: an exception's text may quote an address or a provider's answer.
    with _tracer.start_as_current_span(name, attributes=attributes, kind=kind, record_exception=False,
                                       set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as err:
            current.set_status(Status(StatusCode.ERROR, type(err).__name__))
            raise


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, to store with work done later; None when off."""
    if not _on:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def resumed(parent: str | None) -> Iterator[None]:
    """Spans opened inside are children of `parent` (a stored `traceparent`), whose own span
    ended long ago: work picked up later stays in the trace that asked for it."""
    if not _on or not parent:
        yield
        return
    token = context.attach(propagate.extract({"traceparent": parent}))
    try:
        yield
    finally:
        context.detach(token)


def note(**attributes: str | int | bool) -> None:
    """Add attributes to the current span (what a step found out once it ran)."""
    if _on:
        trace.get_current_span().set_attributes(attributes)


@contextlib.contextmanager
def server_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Callable[[int], None]]:
    """An HTTP request's span, continuing the caller's trace when it sent a `traceparent`.
    Yields what records the answer's status."""
    with _tracer.start_as_current_span(
            f"{method} {route}", context=propagate.extract(headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
            record_exception=False, set_status_on_exception=False) as current:
        def answered(status: int) -> None:
            current.set_attribute("http.response.status_code", status)
            if status >= 500:
                current.set_status(Status(StatusCode.ERROR))
        yield answered


def provider_call(provider: str, operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A span around a provider's request (a decorated method), with its HTTP status if it fails."""
    def decorate(call: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(call)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _on:
                return call(*args, **kwargs)
            with _span(f"{provider} {operation}", {"keepflow.provider": provider,
                                                   "keepflow.provider.operation": operation}, SpanKind.CLIENT) as current:
                try:
                    return call(*args, **kwargs)
                except Exception as err:
                    status = getattr(err, "status", None)
                    if isinstance(status, int):
                        current.set_attribute("http.response.status_code", status)
                    raise
        return traced
    return decorate


def interceptors() -> list[Any]:
    """Temporal's tracing interceptor when tracing is on: given to a client, it also serves every
    worker built on that client."""
    if not _on:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def worker_interceptors(client_interceptors: Sequence[Any]) -> list[Any]:
    """For a worker whose client was connected without the interceptor (a test's, an embedded
    server's): the interceptor, unless the client already brings it."""
    if not _on:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if any(isinstance(i, TracingInterceptor) for i in client_interceptors):
        return []
    return interceptors()
