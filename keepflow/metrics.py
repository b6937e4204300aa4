"""Keepflow's own Prometheus metrics, defined once for every layer that counts something.

Imports nothing of Keepflow's, so the store, sending, the runtime and HTTP may all import it.
Workflow code never does: a workflow is replayed, so a count there would count each replay.

Every label takes its value from a small fixed set (a source, a channel, an outcome, a reason
mapped below, an HTTP status, a sequence id from the shop's own file): never a customer, an
event, a message or an address. docs/operations.md "Metrics and alerts" lists them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess, start_http_server)

# -- intake -------------------------------------------------------------------------------------

EVENTS_RECEIVED = Counter("keepflow_events_received", "Requests to an event or webhook endpoint", ["source"])
EVENTS_ACCEPTED = Counter("keepflow_events_accepted",
                          "Event and webhook requests answered 2xx (new, duplicate or an ignored topic)", ["source"])
EVENTS_REJECTED = Counter("keepflow_events_rejected", "Event and webhook requests refused, by reason",
                          ["source", "reason"])

# The public app's event endpoints, by path: a request to any other path is not counted.
SOURCES = {
    "/events": "api",
    "/webhooks/shopify": "shopify",
    "/webhooks/sendgrid": "sendgrid",
    "/webhooks/twilio/inbound": "twilio_inbound",
    "/webhooks/twilio/status": "twilio_status",
    "/webhooks/line": "line",
}
# Why a request was refused, by its answer's status; any other status is "other".
REJECTIONS = {
    400: "bad_request",
    401: "signature",
    403: "forbidden",
    413: "too_large",
    415: "media_type",
    422: "invalid",
    500: "error",
    503: "unavailable",
}


def count_request(source: str, status: int) -> None:
    EVENTS_RECEIVED.labels(source).inc()
    if status < 400:
        EVENTS_ACCEPTED.labels(source).inc()
    else:
        EVENTS_REJECTED.labels(source, REJECTIONS.get(status, "other")).inc()


# -- routing and runs ---------------------------------------------------------------------------

ROUTING_LAG = Histogram(
    "keepflow_routing_lag_seconds", "From an event stored to its routing done (the reconciler's included)",
    # Routing in the answer takes well under a second; a reconciled event waits its 10 s and more.
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
RUNS_STARTED = Counter("keepflow_runs_started", "Runs started (by an event, a start step or the scan)", ["sequence"])


# Counted from the store by each public app's reconciler, every round, also while Temporal is
# away: a backlog shows while it builds, where ROUTING_LAG sees an event only once it is routed.
# Every process reads the same table, so `keepflow serve --workers N` reports the largest, not a sum.
EVENTS_UNROUTED = Gauge("keepflow_events_unrouted", "Events stored and not yet routed", multiprocess_mode="livemax")
EVENTS_UNROUTED_AGE = Gauge("keepflow_events_unrouted_oldest_seconds",
                            "How long the oldest event not yet routed has waited (0: none waits)",
                            multiprocess_mode="livemax")


def unrouted(waiting: int, oldest: datetime | None) -> None:
    EVENTS_UNROUTED.set(waiting)
    if oldest is not None and oldest.tzinfo is None:  # SQLite keeps the clock time of a UTC timestamp
        oldest = oldest.replace(tzinfo=timezone.utc)
    EVENTS_UNROUTED_AGE.set(0.0 if oldest is None else max((datetime.now(timezone.utc) - oldest).total_seconds(), 0.0))


def routed(received_at: datetime | None, routed_at: datetime) -> None:
    if received_at is None:
        return
    if received_at.tzinfo is None:  # SQLite keeps the clock time of a UTC timestamp
        received_at = received_at.replace(tzinfo=timezone.utc)
    ROUTING_LAG.observe(max((routed_at - received_at).total_seconds(), 0.0))


# -- sending ------------------------------------------------------------------------------------

MESSAGES = Counter("keepflow_messages", "Sends settled, by channel, outcome and (skipped or deferred) reason",
                   ["channel", "outcome", "reason"])
OUTCOMES = {"sent", "skipped", "deferred", "failed", "unknown"}
# The reasons send_rules and send_message give, by how they begin: each maps to one label.
REASONS = (
    ("superseded", "superseded"),
    ("expired", "expired"),
    ("customer has no", "no_address"),
    ("invalid", "invalid_address"),
    ("suppressed", "suppressed"),
    ("no ", "no_consent"),
    ("coupon", "coupon"),
    ("frequency cap", "frequency_cap"),
    ("quiet hours", "quiet_hours"),
    ("template", "template"),
    ("an earlier attempt", "interrupted"),
)


def reason_label(reason: str | None) -> str:
    if not reason:
        return "none"
    return next((label for prefix, label in REASONS if reason.startswith(prefix)), "other")


def message_settled(channel: str, outcome: str, reason: str | None) -> None:
    MESSAGES.labels(channel, outcome if outcome in OUTCOMES else "other",
                    "none" if outcome in ("sent", "failed") else reason_label(reason)).inc()


PROVIDER_SECONDS = Histogram("keepflow_provider_request_seconds", "Calls to SendGrid and Twilio, by how long they took",
                             ["provider", "operation"],
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30))
PROVIDER_ERRORS = Counter("keepflow_provider_errors", "Calls to SendGrid and Twilio that failed, by HTTP status "
                          "(\"none\": no answer, or refused before or after the request)",
                          ["provider", "operation", "status"])


@contextlib.contextmanager
def provider_call(provider: str, operation: str) -> Iterator[None]:
    """Time a provider call (a `with` block or a decorated method); count it as an error by its
    HTTP status if it raises."""
    began = time.perf_counter()
    try:
        yield
    except Exception as err:
        status = getattr(err, "status", None)
        PROVIDER_ERRORS.labels(provider, operation,
                               str(status) if isinstance(status, int) and 100 <= status < 600 else "none").inc()
        raise
    finally:
        PROVIDER_SECONDS.labels(provider, operation).observe(time.perf_counter() - began)


SUPPRESSIONS = Counter("keepflow_suppressions_added", "Suppressions added or re-armed, by channel and source",
                       ["channel", "source"])
SUPPRESSION_SOURCES = {"unsubscribe_link", "sendgrid", "twilio", "twilio-inbound", "outbox", "line_unfollow"}


def suppressed(channel: str, source: str) -> None:
    SUPPRESSIONS.labels(channel, source if source in SUPPRESSION_SOURCES else "other").inc()


# -- the inactivity scan ------------------------------------------------------------------------

SCAN_PAGES = Counter("keepflow_scan_pages", "Pages of the inactivity scan done")
SCAN_CUSTOMERS = Counter("keepflow_scan_customers", "Customers the inactivity scan looked at")
SCAN_STARTED = Counter("keepflow_scan_runs_started", "Runs the inactivity scan started")
SCAN_SKIPPED = Counter("keepflow_scan_skipped", "Customers the inactivity scan passed over, by reason", ["reason"])
SCAN_PAGE_AT = Gauge("keepflow_scan_last_page_timestamp_seconds", "When this worker last finished a page of the scan")
SCAN_FINISHED_AT = Gauge("keepflow_scan_last_finished_timestamp_seconds",
                         "When this worker finished the last page of a scan (no more customers to read)")
SCAN_SKIP_REASONS = {"cool-down": "cool_down", "no marketing consent": "no_consent", "segment": "segment",
                     "level": "level", "already in a run": "in_a_run"}


def scan_page(scanned: int, started: int, skipped: dict[str, int], last: bool) -> None:
    SCAN_PAGES.inc()
    SCAN_CUSTOMERS.inc(scanned)
    SCAN_STARTED.inc(started)
    for reason, count in skipped.items():
        SCAN_SKIPPED.labels(SCAN_SKIP_REASONS.get(reason, "other")).inc(count)
    SCAN_PAGE_AT.set_to_current_time()
    if last:
        SCAN_FINISHED_AT.set_to_current_time()


# -- exposition ---------------------------------------------------------------------------------

def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> Callable[[], None]:
    """GET /metrics on host:port, on a thread of its own; the function that stops it."""
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def of_processes() -> CollectorRegistry:
    """What every process under one PROMETHEUS_MULTIPROC_DIR counted, summed: for the supervisor
    of `keepflow serve --workers N`, whose processes count into files there."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
