"""The whole post-purchase journey from sequences.yaml, events played like a store would."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from keepflow.language.expressions import bucket
from keepflow.runtime.events import EventIn
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from tests.engine import CATALOG, running_worker
from tests.helpers import days, messages, result_of, sends, to_local_hour

CHAIN = ["fulfilment", "education", "cross_sell", "review_request"]


def customer_in_offer_arm() -> str:
    # cross_sell's split sits at step path 1.then.0; pick a customer the stable hash puts in "offer".
    return next(f"cust-{n}" for n in range(1000) if bucket("cross_sell", "1.then.0", f"cust-{n}") >= 0.5)


def order_event(event_type: str, order_id: str, customer_id: str, locale: str = "th-TH", **data) -> EventIn:
    return EventIn.model_validate({
        "id": f"{event_type}-{order_id}-{uuid.uuid4().hex[:6]}", "type": event_type,
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "customer": {"id": customer_id, "email": "nok@example.com", "phone": "+66812345678", "first_name": "นก",
                     "locale": locale, "timezone": "Asia/Bangkok", "consents": {"email": True, "sms": True}},
        "order": {"id": order_id, "number": f"#{order_id}", "total": "25900.00", "currency": "THB", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR", "quantity": 1, "price": "24900.00"},
            {"sku": "SD-64", "title": "64 GB SD card", "quantity": 1, "price": "1000.00"}]},
        "data": data,
    })


async def play_journey(env, settings, db, order_id: str, customer_id: str) -> None:
    catalog = CATALOG
    await to_local_hour(env, 10)  # the shipping text keeps quiet hours: play the journey by day
    async with running_worker(env, settings, db) as tq:
        routed = await ingest(db, env.client, catalog, order_event("order.created", order_id, customer_id), tq)
        assert routed.started == [f"fulfilment/{order_id}"]
        await env.sleep(timedelta(days=1))
        await ingest(db, env.client, catalog, order_event(
            "order.shipped", order_id, customer_id, carrier="Kerry Express", tracking_number="KEX123",
            tracking_url="https://track.example.com/KEX123"), tq)
        await env.sleep(timedelta(days=2))
        await ingest(db, env.client, catalog, order_event("order.delivered", order_id, customer_id), tq)
        for sequence in CHAIN:
            await result_of(env, f"{sequence}/{order_id}")


async def test_post_purchase_journey_sends_the_right_messages_on_the_right_days(env, settings, db, fake):
    order_id = f"1{uuid.uuid4().int % 10**6:06d}"
    await play_journey(env, settings, db, order_id, customer_in_offer_arm())

    scheduled = await sends(env.client, *(f"{s}/{order_id}" for s in CHAIN))
    start = (await env.client.get_workflow_handle(f"fulfilment/{order_id}").describe()).start_time
    got = [(round(days(start, s.at)), s.workflow_id.split("/")[0], s.channel, s.template) for s in scheduled]
    assert got == [
        (0, "fulfilment", "email", "order_confirmed"),
        (1, "fulfilment", "email", "order_shipped"),
        (1, "fulfilment", "sms", "order_shipped"),
        (3, "fulfilment", "email", "order_delivered"),
        (4, "education", "email", "education_basics"),
        (7, "education", "email", "education_manual"),
        (10, "education", "email", "education_lighting"),
        (10, "cross_sell", "email", "cross_sell_tripod_offer"),
        (13, "review_request", "email", "review_request"),
        (17, "review_request", "email", "review_reminder"),
    ]
    rows = messages(db)
    assert all(m.status == "sent" and m.locale == "th" for m in rows)
    assert len(fake.accepted("sendgrid")) == 9 and len(fake.accepted("twilio")) == 1
    offer = next(m for m in rows if m.template == "cross_sell_tripod_offer")
    assert "TRIPOD-" in offer.body


async def test_history_stays_lean(env, settings, db, fake):
    """Temporal bills, and the dev server slows down, per history event: count them for one journey.

    The least a run can record: per activity, scheduled/started/completed plus the workflow task
    (3 events) that acts on its result = 6; per timer or timed wait, started and fired (or
    cancelled) plus a workflow task = 5; per run, started, completed and its first workflow
    task = 5; per signal, 1. The journey runs 15 activities (10 sends, 2 `do`, 3 `start`),
    7 timers, 4 runs and 2 signals. Rendering, consent and bookkeeping live inside the send
    activity, so anything that adds an activity or a timer per message fails this test.
    Where a run waits costs no event: the dashboard reads it from the store (runs that set the
    KeepflowStep search attribute recorded one upsert per timed wait and a patch marker per run).
    """
    order_id = f"2{uuid.uuid4().int % 10**6:06d}"
    await play_journey(env, settings, db, order_id, customer_in_offer_arm())
    total = 0
    for sequence in CHAIN:
        async for _ in env.client.get_workflow_handle(f"{sequence}/{order_id}").fetch_history_events():
            total += 1
    assert total <= 15 * 6 + 7 * 5 + 4 * 5 + 2, total
