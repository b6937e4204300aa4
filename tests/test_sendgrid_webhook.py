"""SendGrid's Event Webhook over real HTTP: signatures as SendGrid makes them, feedback, suppressions."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select

from keepflow.insights.report import build_report
from keepflow.sending import suppressions
from keepflow.store import Customer, Delivery, Event, Message, Suppression
from tests.helpers import serving

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
ADDRESS = "ann@example.com"


def public_key(private: ec.EllipticCurvePrivateKey) -> str:
    """As SendGrid's Mail Settings page shows it: base64 DER SubjectPublicKeyInfo, no PEM armour."""
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def sign(raw: bytes, key: ec.EllipticCurvePrivateKey = PRIVATE_KEY, at: datetime | None = None) -> dict[str, str]:
    """What SendGrid does: ECDSA P-256 / SHA-256 over timestamp + raw body, base64 DER signature."""
    timestamp = str(int((at or datetime.now(timezone.utc)).timestamp()))
    signature = key.sign(timestamp.encode() + raw, ec.ECDSA(hashes.SHA256()))
    return {"content-type": "application/json", SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: timestamp}


def raw(events: list[dict]) -> bytes:
    return json.dumps(events).encode()


SENT_AT = datetime.now(timezone.utc) - timedelta(hours=1)
X_MESSAGE_ID = "14c5d75ce93dfd64b469"


def sg_event(event: str, message: Message | None = None, **fields) -> dict:
    """One event as SendGrid posts it, with our custom arg and a few fields Keepflow ignores."""
    body = {
        "email": ADDRESS, "timestamp": int(datetime.now(timezone.utc).timestamp()), "event": event,
        "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"{X_MESSAGE_ID}.filter0001.16648.5515E0B88.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "category": ["post_purchase"], "tls": 1,
    }
    if message is not None:
        body["keepflow_key"] = message.key
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def message(db) -> Message:
    with db.session() as session:
        session.add(Customer(id="cust-1", email=ADDRESS, consents={}, attributes={}))
        session.flush()
        row = Message(
            key="review_request/W1001:0", workflow_id="review_request/W1001", sequence_id="review_request", step="0",
            channel="email", category="marketing", template="review_request", customer_id="cust-1", recipient=ADDRESS,
            status="sent", provider="sendgrid", provider_message_id=X_MESSAGE_ID, created_at=SENT_AT, sent_at=SENT_AT,
        )
        session.add(row)
    return row


@pytest.fixture
async def http(settings, db) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings.model_copy(update={"sendgrid_webhook_public_key": public_key(PRIVATE_KEY)}), db) as client:
        yield client




def counts(db) -> dict[str, int]:
    with db.session() as session:
        tables = {"events": Event, "suppressions": Suppression, "deliveries": Delivery}
        result = {name: session.scalar(select(func.count()).select_from(t)) for name, t in tables.items()}
        result["statuses"] = tuple(session.scalars(select(Message.delivery_status).order_by(Message.id)))
        return result


def events_of(db, type_: str) -> list[Event]:
    with db.session() as session:
        return list(session.scalars(select(Event).where(Event.type == type_)))


def active_suppressions(db) -> set[tuple[str, str, str, str | None]]:
    with db.session() as session:
        rows = suppressions.active(session, "email", ADDRESS)
        return {(r.scope, r.reason, r.source, r.customer_id) for r in rows}


async def post(http: httpx.AsyncClient, events: list[dict]) -> httpx.Response:
    body = raw(events)
    return await http.post("/webhooks/sendgrid", content=body, headers=sign(body))


# -- feedback ----------------------------------------------------------------------------------


async def test_delivered_open_click_are_recorded_and_reported(http, db, message):
    batch = [
        sg_event("delivered", message, response="250 OK"),
        sg_event("open", message, useragent="Mozilla/5.0"),
        # No custom arg: found by the X-Message-Id part of sg_message_id instead.
        sg_event("click", None, url="https://shop.example/review"),
    ]
    response = await post(http, batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 3, "recorded": 3, "duplicates": 0, "ignored": 0}

    with db.session() as session:
        row = session.get(Message, message.id)
        # An open or click after the delivery does not hide it.
        assert (row.delivery_status, row.delivery_detail) == ("delivered", "250 OK")
    for type_, sent in (("message.delivered", batch[0]), ("message.opened", batch[1]), ("message.clicked", batch[2])):
        [stored] = events_of(db, type_)
        assert stored.id == f"sendgrid:{sent['sg_event_id']}"
        assert stored.payload["data"]["message_id"] == message.id and stored.customer_id == "cust-1"
        assert stored.occurred_at.replace(tzinfo=timezone.utc) == datetime.fromtimestamp(sent["timestamp"], timezone.utc)
    assert events_of(db, "message.clicked")[0].payload["data"]["url"] == "https://shop.example/review"

    report = build_report(db, since=SENT_AT - timedelta(days=1))
    [step] = [s for s in report.steps if s.sequence_id == "review_request" and s.step == "0"]
    assert (step.sent, step.delivered, step.opened, step.clicked) == (1, 1, 1, 1)


async def test_processed_then_deferred_then_delivered_advance_the_status(http, db, message):
    now = int(datetime.now(timezone.utc).timestamp())
    # Out of order in the batch: the later state still wins.
    batch = [sg_event("delivered", message, timestamp=now), sg_event("processed", message, timestamp=now - 20),
             sg_event("deferred", message, timestamp=now - 10, response="400 try again later")]
    assert (await post(http, batch)).status_code == 200
    assert counts(db)["statuses"] == ("delivered",)
    assert len(events_of(db, "message.deferred")) == len(events_of(db, "message.processed")) == 1


async def test_event_for_an_unknown_message_is_kept_without_one(http, db):
    event = sg_event("delivered", None, sg_message_id="unknownid.filter0001.0")
    assert (await post(http, [event])).status_code == 200
    [stored] = events_of(db, "message.delivered")
    assert stored.payload["data"]["message_id"] is None and stored.customer_id is None


async def test_keepflow_message_id_custom_arg_finds_the_message(http, db, message):
    event = sg_event("open", None, sg_message_id=None, keepflow_message_id=str(message.id))
    assert (await post(http, [event])).status_code == 200
    assert events_of(db, "message.opened")[0].payload["data"]["message_id"] == message.id


def lost(db, status: str, key: str = "review_request/W1002:0", category: str = "marketing") -> int:
    """An email whose attempt died in the SendGrid call: `unknown` (retried) or still `sending`."""
    with db.session() as session:
        row = Message(
            key=key, workflow_id=key.split(":")[0], sequence_id="review_request", step="0", channel="email",
            category=category, template="review_request", customer_id="cust-1", recipient=ADDRESS, status=status,
            attempts=1, provider="sendgrid", created_at=SENT_AT, sending_at=SENT_AT + timedelta(seconds=1),
            error="an earlier attempt stopped during the provider call; not resent (email is at-most-once)"
            if status == "unknown" else None,
        )
        session.add(row)
        session.flush()
        return row.id


@pytest.mark.parametrize("event", ["processed", "delivered", "bounce", "dropped"])
async def test_sendgrid_reporting_on_an_email_of_unknown_outcome_settles_it_as_sent(http, db, message, event):
    """SendGrid reports only on mail it accepted: the email whose answer a killed worker never
    heard went out, so its row becomes `sent`, found by the keepflow_key custom arg alone (the row
    has no X-Message-Id: the answer that carried it was lost)."""
    unknown_id = lost(db, "unknown")
    sending_id = lost(db, "sending", key="review_request/W1003:0")
    batch = [sg_event(event, None, keepflow_key=key, sg_message_id=f"{x_id}.filter0001.16648.5515E0B88.0",
                      type="blocked" if event == "bounce" else None, reason="Spam Content" if event == "dropped" else None)
             for key, x_id in (("review_request/W1002:0", "lostanswer1"), ("review_request/W1003:0", "lostanswer2"))]
    assert (await post(http, batch)).status_code == 200
    with db.session() as session:
        for row_id, x_id in ((unknown_id, "lostanswer1"), (sending_id, "lostanswer2")):
            row = session.get(Message, row_id)
            assert (row.status, row.error, row.provider_message_id) == ("sent", None, x_id)
            # It went when the attempt made the call; that is what attribution counts from.
            assert row.sent_at.replace(tzinfo=timezone.utc) == SENT_AT + timedelta(seconds=1)
            # It counts under the frequency cap again.
            assert row.counted_at is not None
    report = build_report(db, since=SENT_AT - timedelta(days=1))
    [step] = [s for s in report.steps if s.sequence_id == "review_request" and s.step == "0"]
    assert (step.sent, step.unknown, step.in_flight) == (3, 0, 0)


async def test_a_resubscribe_does_not_settle_an_email_of_unknown_outcome(http, db, message):
    """Not a report on a mail: SendGrid sends it from its preference page, mail or no mail."""
    unknown_id = lost(db, "unknown")
    event = sg_event("group_resubscribe", None, keepflow_key="review_request/W1002:0", asm_group_id=7)
    assert (await post(http, [event])).status_code == 200
    with db.session() as session:
        assert session.get(Message, unknown_id).status == "unknown"


async def test_account_events_are_acknowledged_and_ignored(http, db, message):
    account = {"event": "account_status_change", "sg_event_id": uuid.uuid4().hex, "type": "compliance_suspend",
               "timestamp": int(datetime.now(timezone.utc).timestamp())}
    response = await post(http, [account, sg_event("delivered", message)])
    assert response.status_code == 200
    assert response.json() == {"received": 2, "recorded": 1, "duplicates": 0, "ignored": 1}
    assert counts(db)["events"] == 1


# -- suppressions ------------------------------------------------------------------------------


async def test_hard_bounce_suppresses_everything(http, db, message):
    bounce = sg_event("bounce", message, type="bounce", status="5.1.1",
                      reason="550 5.1.1 The email account that you tried to reach does not exist")
    assert (await post(http, [bounce])).status_code == 200
    assert active_suppressions(db) == {("all", "hard_bounce", "sendgrid", "cust-1")}
    with db.transaction() as connection:
        # Receipts too: a hard bounce blocks transactional mail.
        assert suppressions.blocking_reason(connection, channel="email", address="Ann@Example.com",
                                            category="transactional", group="review_request") == ("hard_bounce", "sendgrid")
    with db.session() as session:
        [bounce_row] = suppressions.active(session, "email", "Ann@Example.com")
        assert "5.1.1" in bounce_row.detail
        row = session.get(Message, message.id)
        assert row.delivery_status == "bounced" and row.delivery_detail.startswith("550 5.1.1")
    assert len(events_of(db, "message.bounced")) == 1


async def test_blocked_bounce_is_recorded_but_suppresses_nothing(http, db, message):
    blocked = sg_event("bounce", message, type="blocked", status="5.7.1", reason="550 5.7.1 IP listed on a blocklist")
    assert (await post(http, [blocked])).status_code == 200
    assert active_suppressions(db) == set()
    assert len(events_of(db, "message.bounced")) == 1
    assert counts(db)["statuses"] == ("bounced",)


async def test_spam_report_suppresses_marketing_only(http, db, message):
    assert (await post(http, [sg_event("spamreport", message)])).status_code == 200
    assert active_suppressions(db) == {("marketing", "spam_report", "sendgrid", "cust-1")}
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="email", address=ADDRESS, category="marketing",
                                            group="g") is not None
        assert suppressions.blocking_reason(connection, channel="email", address=ADDRESS, category="transactional",
                                            group="g") is None
    assert counts(db)["statuses"] == ("spam_reported",)


@pytest.mark.parametrize("event", ["unsubscribe", "group_unsubscribe"])
async def test_unsubscribes_suppress_marketing(http, db, message, event):
    extra = {"asm_group_id": 42} if event == "group_unsubscribe" else {}
    assert (await post(http, [sg_event(event, message, **extra)])).status_code == 200
    assert active_suppressions(db) == {("marketing", "unsubscribe", "sendgrid", "cust-1")}
    assert len(events_of(db, "message.unsubscribed")) == 1


async def test_resubscribe_lifts_marketing_in_time_order(http, db, message):
    now = int(datetime.now(timezone.utc).timestamp())
    # The batch lists the resubscribe first, but it happened after the unsubscribe.
    batch = [sg_event("group_resubscribe", message, asm_group_id=42, timestamp=now),
             sg_event("group_unsubscribe", message, asm_group_id=42, timestamp=now - 60)]
    assert (await post(http, batch)).status_code == 200
    assert active_suppressions(db) == set()
    with db.session() as session:
        [row] = session.scalars(select(Suppression)).all()
        assert row.scope == "marketing" and row.lifted_at is not None


@pytest.mark.parametrize("reason, expected", [
    ("Bounced Address", {("all", "hard_bounce", "sendgrid", "cust-1")}),
    ("Spam Reporting Address", {("marketing", "spam_report", "sendgrid", "cust-1")}),
    ("Unsubscribed Address", {("marketing", "unsubscribe", "sendgrid", "cust-1")}),
    ("Invalid", {("all", "invalid", "sendgrid", "cust-1")}),
    ("Invalid SMTPAPI header", set()),
])
async def test_dropped_mirrors_sendgrids_suppression_lists(http, db, message, reason, expected):
    assert (await post(http, [sg_event("dropped", message, reason=reason)])).status_code == 200
    assert active_suppressions(db) == expected
    assert counts(db)["statuses"] == ("dropped",)


# -- duplicates and failures -------------------------------------------------------------------


async def test_duplicate_sg_event_id_is_ignored(http, db, message):
    delivered = sg_event("delivered", message)
    first = await post(http, [delivered, delivered])
    assert first.json() == {"received": 2, "recorded": 1, "duplicates": 1, "ignored": 0}
    before = counts(db)
    again = await post(http, [delivered])  # SendGrid re-delivering the same event
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert counts(db) == before and before["events"] == 1


async def test_twenty_concurrent_copies_have_one_effect(http, db, message):
    body = raw([sg_event("delivered", message), sg_event("bounce", message, type="bounce")])
    responses = await asyncio.gather(*(http.post("/webhooks/sendgrid", content=body, headers=sign(body))
                                       for _ in range(20)))
    # A copy that collides with another mid-transaction may fail whole (500: SendGrid retries).
    assert {r.status_code for r in responses} <= {200, 500}
    assert sum(r.json()["recorded"] for r in responses if r.status_code == 200) == 2
    assert {k: v for k, v in counts(db).items() if k != "statuses"} == {"events": 2, "suppressions": 1, "deliveries": 2}


async def test_a_failing_event_rolls_back_the_whole_batch(http, db, message):
    with db.session() as session:
        # A message whose customer the store does not have: its events row breaks a foreign key.
        session.add(Message(key="review_request/W2:0", workflow_id="review_request/W2", sequence_id="review_request",
                            step="0", channel="email", category="marketing", template="review_request",
                            customer_id="no-such-customer", recipient=ADDRESS, status="sent"))
    before = counts(db)
    batch = [sg_event("bounce", message, type="bounce"), sg_event("delivered", None, keepflow_key="review_request/W2:0")]
    response = await post(http, batch)
    assert response.status_code == 500  # SendGrid retries the batch
    assert counts(db) == before and active_suppressions(db) == set()


# -- verification ------------------------------------------------------------------------------

# A hard bounce: if a refused request got through, the suppressions count would show it.
def bounce_batch(message: Message) -> bytes:
    return raw([sg_event("bounce", message, type="bounce"), sg_event("delivered", message)])


@pytest.mark.parametrize("tamper", ["other_key", "altered_body", "stale", "future", "no_signature", "no_timestamp",
                                    "garbage_signature", "timestamp_swapped"])
async def test_unverified_requests_get_401_and_change_nothing(http, db, message, tamper):
    body = bounce_batch(message)
    headers = sign(body)
    if tamper == "other_key":
        headers = sign(body, key=OTHER_KEY)
    elif tamper == "altered_body":
        body = body.replace(b'"type": "bounce"', b'"type": "blocked"')
        assert b'"blocked"' in body
    elif tamper == "stale":
        headers = sign(body, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    elif tamper == "future":
        headers = sign(body, at=datetime.now(timezone.utc) + timedelta(minutes=6))
    elif tamper == "no_signature":
        del headers[SIGNATURE]
    elif tamper == "no_timestamp":
        del headers[TIMESTAMP]
    elif tamper == "garbage_signature":
        headers[SIGNATURE] = "not base64!"
    else:  # the signature is bound to its timestamp: a fresh timestamp on an old signature fails
        headers[TIMESTAMP] = str(int(headers[TIMESTAMP]) + 1)
    before = counts(db)
    response = await http.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert counts(db) == before and before["events"] == 0


async def test_timestamp_within_tolerance_is_accepted(http, db, message):
    body = bounce_batch(message)
    response = await http.post("/webhooks/sendgrid", content=body,
                               headers=sign(body, at=datetime.now(timezone.utc) - timedelta(minutes=4)))
    assert response.status_code == 200 and counts(db)["events"] == 2


@pytest.mark.parametrize("key", [None, "", "bm90IGEga2V5"])
async def test_no_usable_key_configured_refuses_everything(settings, db, message, key):
    async with serving(settings.model_copy(update={"sendgrid_webhook_public_key": key}), db) as client:
        body = bounce_batch(message)
        response = await client.post("/webhooks/sendgrid", content=body, headers=sign(body))
    assert response.status_code == 401
    assert counts(db)["events"] == 0


@pytest.mark.parametrize("body", [
    b'[{"event": "delivered", ',                                      # not JSON
    b'{"event": "delivered"}',                                        # not an array
    json.dumps([{"event": "delivered", "email": ADDRESS, "timestamp": 1700000000}]).encode(),  # no sg_event_id
    json.dumps([{"event": "open", "sg_event_id": "e1", "timestamp": "yesterday", "email": ADDRESS}]).encode(),
    json.dumps([{"event": "bounce", "sg_event_id": "e2", "timestamp": 1700000000}]).encode(),  # no address
])
async def test_malformed_body_is_422_and_changes_nothing(http, db, message, body):
    # A valid event first: it must not be kept either.
    if body.startswith(b"[{") and body.endswith(b"]"):
        body = raw([sg_event("bounce", message, type="bounce")] + json.loads(body))
    before = counts(db)
    response = await http.post("/webhooks/sendgrid", content=body, headers=sign(body))
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert counts(db) == before and before["events"] == 0


async def test_oversized_body_is_413(settings, db, message):
    small = settings.model_copy(update={"sendgrid_webhook_public_key": public_key(PRIVATE_KEY), "max_body_bytes": 512})
    async with serving(small, db) as client:
        body = raw([sg_event("delivered", message) for _ in range(10)])
        response = await client.post("/webhooks/sendgrid", content=body, headers=sign(body))
    assert response.status_code == 413 and counts(db)["events"] == 0
