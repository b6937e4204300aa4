"""Twilio's webhooks over real HTTP: requests signed as Twilio signs them, keywords, status callbacks."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from keepflow.sending import suppressions
from keepflow.sending.providers.twilio import status_callback_url
from keepflow.store import Customer, Delivery, Event, Message, Suppression
from tests.helpers import serving

TOKEN = "test-token"  # the settings fixture's twilio_auth_token
INBOUND = "/webhooks/twilio/inbound"
STATUS = "/webhooks/twilio/status"
OUR_NUMBER = "+15005550006"
# Stored the way a shop might have written it; Twilio always posts E.164.
CUSTOMER_PHONE = "+66 81-234-5678"
FROM = "+66812345678"
HELP_TEXT = "Lens & Co: order texts. Reply STOP to opt out."




@pytest.fixture
def twilio_settings(settings):
    return settings.model_copy(update={"sms_help_text": HELP_TEXT})


@pytest.fixture
async def http(twilio_settings, db) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(twilio_settings, db) as client:
        yield client


@pytest.fixture
def customer(db) -> str:
    with db.session() as session:
        session.add(Customer(id="cust-1", phone=CUSTOMER_PHONE, consents={}, attributes={}))
    return "cust-1"


SENT_AT = datetime.now(timezone.utc) - timedelta(minutes=5)


@pytest.fixture
def message(db, customer) -> Message:
    with db.session() as session:
        row = Message(
            key="fulfilment/W1001:2", workflow_id="fulfilment/W1001", sequence_id="fulfilment", step="2",
            channel="sms", category="transactional", template="shipped", customer_id=customer, recipient=FROM,
            status="sent", provider="twilio", provider_message_id="SM" + uuid.uuid4().hex, created_at=SENT_AT,
            sent_at=SENT_AT,
        )
        session.add(row)
    return row


def inbound(body: str, sid: str | None = None, **extra: str) -> dict[str, str]:
    """An incoming-message webhook as Twilio posts it, with fields Keepflow ignores but Twilio signs."""
    sid = sid or "SM" + uuid.uuid4().hex
    return {"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "", "FromState": "",
            "SmsSid": sid, "SmsStatus": "received", "FromCity": "", "Body": body, "FromCountry": "TH",
            "To": OUR_NUMBER, "MessagingServiceSid": "", "NumSegments": "1", "MessageSid": sid,
            "AccountSid": "AC" + "0" * 32, "From": FROM, "ApiVersion": "2010-04-01", **extra}


def status(message_sid: str, message_status: str, **extra: str) -> dict[str, str]:
    return {"SmsSid": message_sid, "SmsStatus": message_status, "MessageStatus": message_status, "To": FROM,
            "MessageSid": message_sid, "AccountSid": "AC" + "0" * 32, "From": OUR_NUMBER, "ApiVersion": "2010-04-01",
            **extra}


async def post(http: httpx.AsyncClient, path: str, params: dict[str, str], *, url: str | None = None,
               token: str = TOKEN, headers: dict[str, str] | None = None) -> httpx.Response:
    """Sign as Twilio does, for `url` (by default the one the test client requests)."""
    signed_for = url or str(http.base_url).rstrip("/") + path
    signature = RequestValidator(token).compute_signature(signed_for, params)
    return await http.post(path, data=params, headers={"X-Twilio-Signature": signature, **(headers or {})})


def counts(db) -> dict[str, object]:
    with db.session() as session:
        tables = {"events": Event, "suppressions": Suppression, "deliveries": Delivery}
        result: dict[str, object] = {name: session.scalar(select(func.count()).select_from(t)) for name, t in tables.items()}
        result["statuses"] = tuple(session.scalars(select(Message.delivery_status).order_by(Message.id)))
        result["lifted"] = tuple(session.scalars(select(Suppression.lifted_at).order_by(Suppression.id)))
        return result


def active(db, address: str = FROM) -> set[tuple[str, str, str, str | None]]:
    with db.session() as session:
        return {(r.scope, r.reason, r.source, r.customer_id) for r in suppressions.active(session, "sms", address)}


def blocked(db, category: str) -> bool:
    with db.transaction() as connection:
        return suppressions.blocking_reason(connection, channel="sms", address=FROM, category=category, group="fulfilment") is not None


def twiml_messages(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "Response"
    return [m.text or "" for m in root.iter("Message")]


# -- keywords ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [" Stop ", "STOPALL", "opt out", "unsubscribe", "OptOut", "cancel\n", "Revoke"])
async def test_opt_out_keywords_suppress_every_text(http, db, customer, body):
    response = await post(http, INBOUND, inbound(body))
    assert twiml_messages(response) == []  # Twilio sends the STOP confirmation itself
    assert active(db) == {("all", "sms_stop", "twilio", customer)}
    assert blocked(db, "transactional") and blocked(db, "marketing")


@pytest.mark.parametrize("body", ["Stop please", "opt-out", "STOP STOP", "stopp", "Where is my order?"])
async def test_other_texts_change_and_keep_nothing(http, db, customer, body):
    before = counts(db)
    response = await post(http, INBOUND, inbound(body))
    assert twiml_messages(response) == []
    assert counts(db) == before


async def test_opt_out_type_from_advanced_opt_out_counts_as_stop(http, db, customer):
    # A custom (here French) keyword Twilio matched on a Messaging Service with Advanced Opt-Out.
    assert (await post(http, INBOUND, inbound("ARRET", OptOutType="STOP"))).status_code == 200
    assert active(db) == {("all", "sms_stop", "twilio", customer)}


@pytest.mark.parametrize("body", ["START", " unstop", "Yes"])
async def test_opt_in_keywords_lift_the_opt_out(http, db, customer, body):
    assert (await post(http, INBOUND, inbound("STOP"))).status_code == 200
    with db.session() as session:
        suppressions.suppress(session, channel="sms", address=FROM, scope="marketing", reason="unsubscribe",
                              source="unsubscribe_link")
    assert blocked(db, "transactional")

    response = await post(http, INBOUND, inbound(body))
    assert twiml_messages(response) == []
    assert active(db) == set()
    assert not blocked(db, "transactional") and not blocked(db, "marketing")


async def test_a_retried_stop_after_start_changes_nothing(http, db, customer):
    stop = inbound("STOP")
    assert (await post(http, INBOUND, stop)).status_code == 200
    assert (await post(http, INBOUND, inbound("START"))).status_code == 200
    before = counts(db)
    assert (await post(http, INBOUND, stop)).status_code == 200
    assert counts(db) == before
    assert active(db) == set()


async def test_stop_from_a_number_no_customer_has_still_suppresses(http, db):
    assert (await post(http, INBOUND, inbound("STOP"))).status_code == 200
    assert active(db) == {("all", "sms_stop", "twilio", None)}


@pytest.mark.parametrize("body", ["HELP", " info "])
async def test_help_is_answered_with_the_help_text(http, db, customer, body):
    before = counts(db)
    response = await post(http, INBOUND, inbound(body))
    assert twiml_messages(response) == [HELP_TEXT]
    assert counts(db) == before


async def test_help_names_the_brand_of_sequences_yaml_when_no_help_text_is_set(settings, db):
    async with serving(settings.model_copy(update={"sms_help_text": None}), db) as client:
        response = await post(client, INBOUND, inbound("HELP"))
    [reply] = twiml_messages(response)
    assert reply.startswith("Lumen Camera Co.: ") and "STOP" in reply  # brand.name of the shop's sequences.yaml
    assert "Keepflow" not in reply


# -- signatures --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["inbound", "status"])
@pytest.mark.parametrize("tamper", ["param", "token", "missing", "url", "added_param"])
async def test_bad_signatures_get_403_and_change_nothing(http, db, message, endpoint, tamper):
    path, params = (INBOUND, inbound("STOP")) if endpoint == "inbound" else \
        (STATUS, status(message.provider_message_id, "failed", ErrorCode="21610"))
    signed_for = str(http.base_url).rstrip("/") + path
    signature = RequestValidator(TOKEN).compute_signature(signed_for, params)
    sent = dict(params)
    if tamper == "param":
        sent["From"] = "+66899999999"
        sent["To"] = "+66899999999"
    elif tamper == "token":
        signature = RequestValidator("another-token").compute_signature(signed_for, params)
    elif tamper == "url":
        signature = RequestValidator(TOKEN).compute_signature(f"https://elsewhere.example{path}", params)
    elif tamper == "added_param":
        sent["OptOutType"] = "STOP"
    headers = {} if tamper == "missing" else {"X-Twilio-Signature": signature}
    before = counts(db)
    response = await http.post(path, data=sent, headers=headers)
    assert response.status_code == 403, response.text
    assert counts(db) == before
    assert active(db) == active(db, "+66899999999") == set()


async def test_without_an_auth_token_everything_is_refused(settings, db, message):
    async with serving(settings.model_copy(update={"twilio_auth_token": None}), db) as http:
        before = counts(db)
        # Signed with the empty key an unconfigured validator would use.
        assert (await post(http, INBOUND, inbound("STOP"), token="")).status_code == 403
        assert (await post(http, STATUS, status(message.provider_message_id, "delivered"), token="")).status_code == 403
        assert counts(db) == before


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_https_url_validates_only_when_forwarded_headers_are_trusted(settings, db, customer, trusted):
    forwarded = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "sms.shop.example, proxy.internal"}
    async with serving(settings.model_copy(update={"trust_forwarded_headers": trusted}), db) as http:
        response = await post(http, INBOUND, inbound("STOP"), url=f"https://sms.shop.example{INBOUND}", headers=forwarded)
        assert response.status_code == (200 if trusted else 403), response.text
        assert active(db) == ({("all", "sms_stop", "twilio", customer)} if trusted else set())
        # Trusted, the forwarded URL is the only one accepted when the headers are there.
        internal = await post(http, INBOUND, inbound("START"), headers=forwarded)
        assert internal.status_code == (403 if trusted else 200)


async def test_forwarded_port_is_part_of_the_url_unless_it_is_the_default(settings, db, customer):
    async with serving(settings.model_copy(update={"trust_forwarded_headers": True}), db) as http:
        no_port = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sms.shop.example"}
        odd = {**no_port, "X-Forwarded-Port": "8443"}
        signed_with_port = f"https://sms.shop.example:8443{INBOUND}"
        # Without the port header the URL cannot be rebuilt with 8443 in it.
        assert (await post(http, INBOUND, inbound("STOP"), url=signed_with_port, headers=no_port)).status_code == 403
        assert (await post(http, INBOUND, inbound("STOP"), url=signed_with_port, headers=odd)).status_code == 200
        default = {**no_port, "X-Forwarded-Port": "443"}
        # Twilio may sign either form of a default port; the validator accepts both.
        for url in (f"https://sms.shop.example{INBOUND}", f"https://sms.shop.example:443{INBOUND}"):
            assert (await post(http, INBOUND, inbound("START"), url=url, headers=default)).status_code == 200


async def test_public_url_is_what_twilio_signed_query_included(settings, db, message):
    public = settings.model_copy(update={"public_url": "https://mail.shop.example/"})
    async with serving(public, db) as http:
        params = status(message.provider_message_id, "delivered")
        path = f"{STATUS}?attempt=1&tag=a%20b"
        assert (await post(http, path, params, url=f"https://mail.shop.example{path}")).status_code == 200
        assert counts(db)["statuses"] == ("delivered",)
        assert (await post(http, STATUS, status(message.provider_message_id, "sent"))).status_code == 403


async def test_not_a_form_is_415_and_a_form_missing_fields_is_422(http, db, message):
    before = counts(db)
    response = await http.post(INBOUND, json=inbound("STOP"), headers={"X-Twilio-Signature": "x"})
    assert response.status_code == 415
    params = status(message.provider_message_id, "delivered")
    del params["MessageSid"]
    response = await post(http, STATUS, params)
    assert response.status_code == 422
    assert any(e["loc"] == ["body", "MessageSid"] for e in response.json()["detail"])
    assert counts(db) == before


async def test_an_oversized_body_is_413_and_changes_nothing(settings, db, customer):
    async with serving(settings.model_copy(update={"max_body_bytes": 512}), db) as http:
        before = counts(db)
        response = await post(http, INBOUND, inbound("STOP", Padding="x" * 600))
        assert response.status_code == 413
        assert counts(db) == before


# -- status callbacks --------------------------------------------------------------------------


def events_of(db, type_: str) -> list[Event]:
    with db.session() as session:
        return list(session.scalars(select(Event).where(Event.type == type_)))


async def test_delivered_callback_sets_the_status_and_writes_the_event(http, db, message):
    sid = message.provider_message_id
    for step in ("sent", "delivered"):
        response = await post(http, STATUS, status(sid, step))
        assert response.status_code == 200 and response.content == b""
    with db.session() as session:
        row = session.get(Message, message.id)
        assert (row.delivery_status, row.delivery_detail) == ("delivered", None)
    [delivered] = events_of(db, "message.delivered")
    assert delivered.id == f"twilio:{sid}:delivered"
    assert delivered.payload["data"]["message_id"] == message.id and delivered.customer_id == message.customer_id
    assert len(events_of(db, "message.sent")) == 1


async def test_a_repeated_callback_is_ignored(http, db, message):
    params = status(message.provider_message_id, "delivered")
    assert (await post(http, STATUS, params)).status_code == 200
    before = counts(db)
    responses = await asyncio.gather(*(post(http, STATUS, params) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert counts(db) == before
    assert len(events_of(db, "message.delivered")) == 1


async def test_a_late_sent_callback_does_not_undo_delivered(http, db, message):
    sid = message.provider_message_id
    assert (await post(http, STATUS, status(sid, "delivered"))).status_code == 200
    assert (await post(http, STATUS, status(sid, "sent"))).status_code == 200
    assert counts(db)["statuses"] == ("delivered",)


async def test_failed_with_21610_suppresses_the_number(http, db, message):
    response = await post(http, STATUS, status(message.provider_message_id, "failed", ErrorCode="21610"))
    assert response.status_code == 200
    assert active(db) == {("all", "sms_stop", "twilio", message.customer_id)}
    with db.session() as session:
        row = session.get(Message, message.id)
        assert row.delivery_status == "failed" and "21610" in row.delivery_detail
    [failed] = events_of(db, "message.failed")
    assert failed.payload["data"]["error_code"] == "21610"


@pytest.mark.parametrize("code", ["21211", "21614", "30006"])
async def test_numbers_that_cannot_take_texts_are_suppressed_as_invalid(http, db, message, code):
    assert (await post(http, STATUS, status(message.provider_message_id, "undelivered", ErrorCode=code))).status_code == 200
    assert active(db) == {("all", "invalid", "twilio", message.customer_id)}


async def test_other_errors_are_recorded_and_suppress_nothing(http, db, message):
    # 30003: the handset is off or out of reach; it may well take the next text.
    assert (await post(http, STATUS, status(message.provider_message_id, "undelivered", ErrorCode="30003"))).status_code == 200
    assert counts(db)["statuses"] == ("undelivered",)
    assert active(db) == set()


async def test_unknown_message_gets_200_and_only_a_dedupe_row(http, db, message):
    before = counts(db)
    response = await post(http, STATUS, status("SM" + uuid.uuid4().hex, "failed", ErrorCode="21610"))
    assert response.status_code == 200 and response.content == b""
    after = counts(db)
    assert after == {**before, "deliveries": before["deliveries"] + 1}


async def test_statuses_keepflow_does_not_track_are_acknowledged(http, db, message):
    before = counts(db)
    assert (await post(http, STATUS, status(message.provider_message_id, "canceled"))).status_code == 200
    assert counts(db) == before


def test_status_callback_url_needs_a_public_url(settings):
    assert status_callback_url(settings.public_url) is None
    public = settings.model_copy(update={"public_url": "https://mail.shop.example/"})
    assert status_callback_url(public.public_url) == "https://mail.shop.example/webhooks/twilio/status"
