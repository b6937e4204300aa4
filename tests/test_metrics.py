"""Prometheus metrics: a real journey and refused webhooks move Keepflow's counters by the right
amounts, as a scrape of the admin app's /metrics shows; the worker's port adds the SDK's own.

The registry is the process' own and other tests count into it too: every check is a difference
between a scrape before and one after.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from keepflow import metrics
from keepflow.runtime.telemetry import sdk_runtime
from tests.engine import CONVERTER
from tests.helpers import free_port, serving, serving_admin
from tests.test_journey import CHAIN, customer_in_offer_arm, play_journey
from tests.test_webhooks import SECRET, event, signed


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(admin) -> dict[tuple[str, frozenset], float]:
    answer = await admin.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def label_values(text: str) -> set[str]:
    return {value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("keepflow_") for value in s.labels.values()}


async def test_metrics_need_no_sign_in_and_name_no_customer(settings, db):
    async with serving_admin(settings, db, role=None) as admin:
        answer = await admin.get("/metrics")
        assert answer.status_code == 200
        assert "keepflow_events_received_total" in answer.text
        # The dashboard next to it still asks for a session.
        assert (await admin.get("/")).status_code == 303


async def test_a_journey_moves_the_counters_by_what_it_did(env, settings, db, fake):
    order_id, customer_id = f"1{uuid.uuid4().int % 10**6:06d}", customer_in_offer_arm()
    async with serving_admin(settings, db, role=None) as admin:
        before = await scrape(admin)
        await play_journey(env, settings, db, order_id, customer_id)
        after = await scrape(admin)
        text = (await admin.get("/metrics")).text

    for sequence in CHAIN:
        assert moved(before, after, "keepflow_runs_started_total", sequence=sequence) == 1, sequence
    assert moved(before, after, "keepflow_messages_total", channel="email", outcome="sent", reason="none") == 9
    assert moved(before, after, "keepflow_messages_total", channel="sms", outcome="sent", reason="none") == 1
    assert moved(before, after, "keepflow_provider_request_seconds_count", provider="sendgrid", operation="send") == 9
    assert moved(before, after, "keepflow_provider_request_seconds_count", provider="twilio", operation="send") == 1
    assert moved(before, after, "keepflow_provider_errors_total", provider="sendgrid", operation="send", status="500") == 0
    # Three events played, each stored and then routed once.
    assert moved(before, after, "keepflow_routing_lag_seconds_count") == 3
    assert not {order_id, customer_id, "nok@example.com", "+66812345678"} & label_values(text)


async def test_refused_requests_count_by_source_and_reason(settings, db):
    async with serving(settings, db) as http, serving_admin(settings, db, role=None) as admin:
        before = await scrape(admin)
        body, headers = signed(event(), secret="whsec_" + "A" * 32)  # signed with a secret the app does not hold
        assert (await http.post("/events", content=body, headers=headers)).status_code == 401
        assert (await http.post("/webhooks/shopify", content=b"{}",
                                headers={"x-shopify-hmac-sha256": "bm9wZQ=="})).status_code == 401
        after = await scrape(admin)

    assert moved(before, after, "keepflow_events_received_total", source="api") == 1
    assert moved(before, after, "keepflow_events_rejected_total", source="api", reason="signature") == 1
    assert moved(before, after, "keepflow_events_rejected_total", source="shopify", reason="signature") == 1
    assert moved(before, after, "keepflow_events_accepted_total", source="api") == 0


async def test_a_body_that_does_not_parse_counts_as_invalid(settings, db):
    secret = "whsec_" + "B" * 32
    async with serving(settings, db, secrets=(secret,)) as http, serving_admin(settings, db, role=None) as admin:
        before = await scrape(admin)
        body, headers = signed(b'{"id": "evt_1", "type": 7}', secret=secret)
        assert (await http.post("/events", content=body, headers=headers)).status_code == 422
        after = await scrape(admin)

    assert moved(before, after, "keepflow_events_rejected_total", source="api", reason="invalid") == 1
    assert moved(before, after, "keepflow_events_rejected_total", source="api", reason="signature") == 0


async def test_a_backlog_shows_while_it_builds(settings, db):
    """Temporal is unreachable: events are stored, answered 503 and wait. The reconciler's rounds
    count them from the store, so the backlog and its age show before any of them is routed."""
    dead = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with serving(dead, db, secrets=(SECRET,), reconcile_every=0.2) as http, \
            serving_admin(settings, db, role=None) as admin:
        for _ in range(3):
            body, headers = signed(event())
            assert (await http.post("/events", content=body, headers=headers)).status_code == 503
        for _ in range(100):
            after = await scrape(admin)
            if after.get(("keepflow_events_unrouted", frozenset())) == 3:
                break
            await asyncio.sleep(0.1)
    assert after[("keepflow_events_unrouted", frozenset())] == 3
    assert after[("keepflow_events_unrouted_oldest_seconds", frozenset())] > 0


def test_send_reasons_map_to_a_small_fixed_set():
    assert metrics.reason_label("suppressed: unsubscribe (unsubscribe_link)") == "suppressed"
    assert metrics.reason_label("customer has no sms address") == "no_address"
    assert metrics.reason_label("no email marketing consent") == "no_consent"
    assert metrics.reason_label("quiet hours until 2026-01-02 01:00 UTC") == "quiet_hours"
    assert metrics.reason_label("frequency cap (2 a week) until 2026-01-05 10:00 UTC") == "frequency_cap"
    assert metrics.reason_label("coupon TRIPOD-X already redeemed") == "coupon"
    assert metrics.reason_label("something new") == "other"


async def test_the_worker_port_serves_keepflow_and_the_sdk_metrics(env):
    """What `keepflow worker --metrics-port` serves: the SDK's exporter read back into the scrape."""
    runtime, relayed = sdk_runtime()
    client = await Client.connect(env.client.service_client.config.target_host, runtime=runtime,
                                  namespace=env.client.namespace, data_converter=CONVERTER)
    await client.service_client.check_health()
    registry = CollectorRegistry()
    registry.register(relayed)
    port = free_port()
    stop = metrics.serve("127.0.0.1", port, registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        stop()
    assert "temporal_request_total" in text or "temporal_request_latency" in text


def test_a_suppression_counts_once_however_often_it_is_repeated(db):
    from keepflow.sending import suppressions

    def count() -> float:
        return REGISTRY.get_sample_value("keepflow_suppressions_added_total",
                                         {"channel": "email", "source": "unsubscribe_link"}) or 0.0

    before = count()
    address = f"m-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(2):  # a second click on the same link changes nothing
        with db.session() as session:
            suppressions.suppress(session, channel="email", address=address, scope=suppressions.MARKETING,
                                  reason="unsubscribe", source="unsubscribe_link")
    assert count() - before == 1


async def test_a_scan_counts_what_it_read_started_and_passed_over(settings, db):
    from datetime import timedelta

    from tests.engine import running_worker, time_skipping_server
    from tests.test_winback import add_customer, scan

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    names = [("keepflow_scan_customers_total", {}), ("keepflow_scan_runs_started_total", {}),
             ("keepflow_scan_skipped_total", {"reason": "no_consent"}),
             ("keepflow_runs_started_total", {"sequence": "winback"})]
    # A server of its own, as tests/test_winback.py's: a scan skips months.
    async with await time_skipping_server() as env:
        now = await env.get_current_time()
        add_customer(db, now - timedelta(days=61))
        add_customer(db, now - timedelta(days=200), consents={"email": False})
        before = [value(name, **labels) for name, labels in names]
        async with running_worker(env, settings, db) as tq:
            totals = await scan(env, tq, page_size=2)
        after = [value(name, **labels) for name, labels in names]
    assert [b - a for a, b in zip(before, after)] == [totals.scanned, totals.started, 1, 1] == [2, 1, 1, 1]
    assert value("keepflow_scan_last_finished_timestamp_seconds") >= value("keepflow_scan_last_page_timestamp_seconds") > 0
