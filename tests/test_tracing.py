"""Traces: one event posted to the public app is one trace, from the request to SendGrid, through
routing, Temporal's server and the worker, also when Temporal was down and the reconciler routes it
later; no customer's address in any span. Off, nothing is made at all.

The process' tracer provider can be set once: the spans go to one in-memory exporter for the
session, and tracing is on only inside the tests that ask for it (`traced`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from keepflow import tracing
from keepflow.runtime import routing
from keepflow.tools.temporal_dev_server import free_port
from tests import helpers
from tests.engine import CATALOG, running_worker
from tests.test_webhooks import SECRET, event, signed

EXPORTER = InMemorySpanExporter()


class _WhileOn(SimpleSpanProcessor):
    """Keeps spans only while a test has tracing on: the provider stays for the session, and
    libraries that trace on their own (FastAPI) would otherwise fill the exporter in later tests."""

    def on_end(self, span: ReadableSpan) -> None:
        if tracing.on():
            super().on_end(span)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    # Recorded first, so tracing is off again after the test whatever `use` sets.
    monkeypatch.setattr(tracing, "_on", False)
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_WhileOn(EXPORTER))
        tracing.use(provider)
    monkeypatch.setattr(tracing, "_on", True)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def test_tracing_is_on_only_when_an_exporter_is_named():
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_SERVICE_NAME": "keepflow"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})


def test_off_makes_nothing():
    assert not tracing.on()  # also after a traced test (this file runs it again last)
    assert tracing.span("keepflow.route") is tracing.span("keepflow.intake")  # one shared empty context
    assert tracing.interceptors() == [] and tracing.worker_interceptors([]) == []


def _chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = [span.name]
    while span.parent is not None:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_event_is_one_trace_from_the_request_to_sendgrid(env, settings, db, fake, traced):
    client = Client(**{**env.client.config(), "interceptors": tracing.interceptors()})
    body = event()
    async with running_worker(env, settings, db, client=client) as tq:
        async with helpers.serving(settings.model_copy(update={"task_queue": tq}), db, client=client,
                                   secrets=(SECRET,)) as http:
            raw, headers = signed(body)
            assert (await http.post("/events", content=raw, headers=headers)).status_code == 202
            for _ in range(200):
                if any(s.name == "sendgrid send" for s in traced.get_finished_spans()):
                    break
                await asyncio.sleep(0.05)
    assert fake.accepted("sendgrid")[0]["to"] == "ann@example.com"

    spans = traced.get_finished_spans()
    call = next(s for s in spans if s.name == "sendgrid send")
    assert call.context is not None
    same = [s for s in spans if s.context is not None and s.context.trace_id == call.context.trace_id]
    by_id = {s.context.span_id: s for s in same if s.context is not None}
    chain = _chain(call, by_id)
    # Each span's parent is in the same trace, up to the request's own span.
    assert chain[-1] == "POST /events" and by_id[call.parent.span_id].name == "RunActivity:send_message"
    assert [n for n in chain if not n.startswith("fastapi.")] == [
        "sendgrid send", "RunActivity:send_message", "StartActivity:send_message", "StartWorkflow:sequence",
        "keepflow.route", "keepflow.intake", "POST /events"]
    # The workflow's own span beside its activity's, under the start (Temporal's interceptor makes it once).
    run = next(s for s in same if s.name == "RunWorkflow:sequence")
    assert run.parent is not None and by_id[run.parent.span_id].name == "StartWorkflow:sequence"
    checks = next(s for s in same if s.name == "keepflow.send.checks")
    assert checks.parent is not None and by_id[checks.parent.span_id].name == "RunActivity:send_message"
    assert checks.attributes is not None and checks.attributes["keepflow.send.decision"] == "send"
    assert any(s.name == "keepflow.accept" for s in same)
    intake = next(s for s in same if s.name == "keepflow.intake")
    assert intake.attributes is not None and intake.attributes["keepflow.event.id"] == body["id"]

    customer = body["customer"]
    said = " ".join(f"{s.name} {dict(s.attributes or {})} {[dict(e.attributes or {}) for e in s.events]}" for s in same)
    for private in (customer["email"], customer["phone"]):
        assert private not in said


async def test_an_event_routed_later_stays_in_its_requests_trace(env, settings, db, fake, traced):
    """Temporal was unreachable when the event came: the request stored it and answered 503. The
    reconciler routes it later, and what that sets off joins the request's trace."""
    client = Client(**{**env.client.config(), "interceptors": tracing.interceptors()})
    dead = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    raw, headers = signed(event())
    async with running_worker(env, settings, db, client=client) as tq:
        async with helpers.serving(dead.model_copy(update={"task_queue": tq}), db, client=None, secrets=(SECRET,)) as http:
            assert (await http.post("/events", content=raw, headers=headers)).status_code == 503
        request = next(s for s in traced.get_finished_spans() if s.name == "keepflow.intake")
        assert await routing.reconcile(db, client, CATALOG, tq, older_than=timedelta(0)) == 1
        for _ in range(200):
            if any(s.name == "sendgrid send" for s in traced.get_finished_spans()):
                break
            await asyncio.sleep(0.05)
    spans = traced.get_finished_spans()
    call = next(s for s in spans if s.name == "sendgrid send")
    assert call.context is not None and request.context is not None
    assert call.context.trace_id == request.context.trace_id
    by_id = {s.context.span_id: s for s in spans if s.context is not None and s.context.trace_id == request.context.trace_id}
    chain = [n for n in _chain(call, by_id) if not n.startswith("fastapi.")]
    assert chain[-4:] == ["StartWorkflow:sequence", "keepflow.route", "keepflow.intake", "POST /events"], chain
    route = by_id[next(s for s in by_id.values() if s.name == "keepflow.route").context.span_id]
    assert route.attributes is not None and route.attributes["keepflow.rerouting"] is True


test_still_off_after_a_traced_test = test_off_makes_nothing


def test_an_exported_span_carries_no_address_even_where_an_error_quoted_one():
    """Temporal's interceptor puts a failed activity's error text on its span (status and exception
    event), and a provider's error can quote the recipient: the exporter masks it, as the logs do."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    from keepflow.tracing import masking

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(masking(memory)))
    with provider.get_tracer("test").start_as_current_span(
            "RunActivity:send_message", record_exception=False, set_status_on_exception=False,
            attributes={"keepflow.note": "to nok@example.com"}) as span:
        span.set_status(Status(StatusCode.ERROR, "ProviderRejected: nok@example.com does not exist"))
        span.record_exception(ValueError("no such number +66 81 234 5678"))
    [exported] = memory.get_finished_spans()
    text = repr((exported.status.description, dict(exported.attributes or {}),
                 [dict(e.attributes or {}) for e in exported.events]))
    assert "nok@example.com" not in text and "234 5678" not in text, text
    assert exported.status.description == "ProviderRejected: <email> does not exist"
    assert exported.events[0].attributes["exception.type"] == "ValueError"
    assert exported.context == span.get_span_context()  # the same span, only its text masked
