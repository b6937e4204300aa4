"""LINE's webhook over real HTTP: bodies signed as LINE signs them, follow, unfollow and refollow,
redeliveries, events out of order, event types Keepflow does not use."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from keepflow.sending import suppressions
from keepflow.store import Customer, Delivery, Suppression
from keepflow.store.line_friends import LineFriend
from tests.helpers import serving

SECRET = "line-channel-secret-for-tests"
PATH = "/webhooks/line"
USER = "U" + "0123456789abcdef" * 2
OTHER_USER = "U" + "fedcba9876543210" * 2
# LINE's timestamps are unix milliseconds.
T0 = 1_765_000_000_000


@pytest.fixture
def line_settings(settings):
    return settings.model_copy(update={"line_channel_secret": SecretStr(SECRET)})


@pytest.fixture
async def http(line_settings, db) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(line_settings, db) as client:
        yield client


@pytest.fixture
def customer(db) -> str:
    with db.session() as session:
        session.add(Customer(id="c-line", line_user_id=USER, consents={"email": True}, attributes={}))
    return "c-line"


def signature(body: bytes, secret: str = SECRET) -> str:
    """LINE's scheme: base64 of the HMAC-SHA256 of the body, keyed with the channel secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def line_event(kind: str, at: int = T0, user: str = USER, event_id: str | None = None, redelivery: bool = False,
               **extra: Any) -> dict[str, Any]:
    """One event as LINE sends it. https://developers.line.biz/en/reference/messaging-api/#webhook-event-objects"""
    event: dict[str, Any] = {
        "type": kind, "mode": "active", "timestamp": at, "source": {"type": "user", "userId": user},
        "webhookEventId": event_id or "01" + uuid.uuid4().hex.upper()[:24],
        "deliveryContext": {"isRedelivery": redelivery},
    }
    if kind == "follow":
        event.update(replyToken=uuid.uuid4().hex, follow={"isUnblocked": False})
    return {**event, **extra}


def body_of(*events: dict[str, Any]) -> bytes:
    return json.dumps({"destination": "U" + "9" * 32, "events": list(events)}).encode()


async def post(http: httpx.AsyncClient, body: bytes, *, secret: str = SECRET,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.post(PATH, content=body, headers={"content-type": "application/json",
                                                        "x-line-signature": signature(body, secret), **(headers or {})})


async def send(http: httpx.AsyncClient, *events: dict[str, Any]) -> dict[str, Any]:
    response = await post(http, body_of(*events))
    assert response.status_code == 200, response.text
    return response.json()


def consent(db, customer_id: str = "c-line") -> object:
    with db.session() as session:
        found = session.get(Customer, customer_id)
        assert found is not None
        return (found.consents or {}).get("line")


def active(db, user: str = USER) -> set[tuple[str, str, str, str | None]]:
    with db.session() as session:
        return {(r.scope, r.reason, r.source, r.customer_id) for r in suppressions.active(session, "line", user)}


def blocked(db, user: str = USER, category: str = "marketing") -> bool:
    with db.transaction() as connection:
        return suppressions.blocking_reason(connection, channel="line", address=user, category=category,
                                            group="t") is not None


def friend(db, user: str = USER) -> tuple[datetime | None, datetime | None] | None:
    with db.session() as session:
        row = session.get(LineFriend, user)
        return None if row is None else (row.followed_at, row.unfollowed_at)


def counts(db) -> dict[str, object]:
    with db.session() as session:
        tables = {"line_friends": LineFriend, "suppressions": Suppression, "deliveries": Delivery}
        result: dict[str, object] = {name: session.scalar(select(func.count()).select_from(t)) for name, t in tables.items()}
        result["consents"] = tuple(tuple(sorted((c.consents or {}).items()))
                                   for c in session.scalars(select(Customer).order_by(Customer.id)))
        result["lifted"] = tuple(session.scalars(select(Suppression.lifted_at).order_by(Suppression.id)))
        return result


def millis(at: int) -> datetime:
    return datetime.fromtimestamp(at / 1000, timezone.utc)


# -- follow, unfollow, refollow ----------------------------------------------------------------


async def test_a_follow_records_the_friend_and_grants_line_consent(http, db, customer):
    answer = await send(http, line_event("follow"))
    assert answer == {"received": 1, "recorded": 1, "duplicates": 0, "outdated": 0, "ignored": 0}
    followed_at, unfollowed_at = friend(db) or (None, None)
    assert followed_at is not None and followed_at.replace(tzinfo=timezone.utc) == millis(T0)
    assert unfollowed_at is None
    assert consent(db) is True
    assert not blocked(db)


async def test_an_unfollow_suppresses_every_line_message_and_a_refollow_lifts_it(http, db, customer):
    await send(http, line_event("follow", T0))
    await send(http, line_event("unfollow", T0 + 1000))
    assert active(db) == {("all", "line_unfollow", "line_unfollow", customer)}
    assert blocked(db, category="marketing") and blocked(db, category="transactional")

    await send(http, line_event("follow", T0 + 2000))
    assert active(db) == set() and not blocked(db)
    assert consent(db) is True
    followed_at, unfollowed_at = friend(db) or (None, None)
    assert followed_at is not None and unfollowed_at is not None and followed_at > unfollowed_at


async def test_a_follow_never_overrides_the_shops_no(http, db):
    with db.session() as session:
        session.add(Customer(id="c-no", line_user_id=USER, consents={"line": False}, attributes={}))
    await send(http, line_event("follow"))
    assert consent(db, "c-no") is False


async def test_a_follow_grants_every_customer_with_that_line_user_id_and_no_other(http, db, customer):
    with db.session() as session:
        session.add(Customer(id="c-twin", line_user_id=USER, consents={}, attributes={}))
        session.add(Customer(id="c-other", line_user_id=OTHER_USER, consents={}, attributes={}))
    await send(http, line_event("follow"))
    assert (consent(db), consent(db, "c-twin"), consent(db, "c-other")) == (True, True, None)


async def test_an_unfollow_of_someone_never_known_is_still_suppressed(http, db):
    # The LINE id may reach Keepflow later (a customer linked afterwards): the address is refused then.
    await send(http, line_event("unfollow"))
    assert active(db) == {("all", "line_unfollow", "line_unfollow", None)}


# -- redeliveries and order ----------------------------------------------------------------------


async def test_a_redelivered_event_changes_nothing_twice(http, db, customer):
    unfollow = line_event("unfollow", T0 + 1000)
    await send(http, line_event("follow", T0), unfollow)
    before = counts(db)
    again = await send(http, {**unfollow, "deliveryContext": {"isRedelivery": True}})
    assert again["duplicates"] == 1 and again["recorded"] == 0
    assert counts(db) == before


async def test_a_redelivered_follow_after_a_refollow_and_unfollow_does_not_lift_the_block(http, db, customer):
    follow = line_event("follow", T0)
    await send(http, follow, line_event("unfollow", T0 + 1000))
    await send(http, {**follow, "deliveryContext": {"isRedelivery": True}})
    assert blocked(db)


async def test_an_older_follow_arriving_after_a_newer_unfollow_is_outdated(http, db, customer):
    await send(http, line_event("unfollow", T0 + 5000))
    answer = await send(http, line_event("follow", T0))
    assert answer["outdated"] == 1 and answer["recorded"] == 0
    assert blocked(db)
    assert consent(db) is None
    followed_at, unfollowed_at = friend(db) or (None, None)
    assert followed_at is None and unfollowed_at is not None


async def test_a_follow_and_an_unfollow_at_the_same_millisecond_end_unfollowed(http, db, customer):
    await send(http, line_event("follow", T0))
    await send(http, line_event("unfollow", T0))
    assert (await send(http, line_event("follow", T0)))["outdated"] == 1
    assert blocked(db)


async def test_standby_events_count_too(http, db, customer):
    # Standby: another channel (a chat module) holds the conversation; the friendship is still ours to know.
    await send(http, line_event("unfollow", mode="standby"))
    assert blocked(db)


async def test_one_body_is_applied_in_time_order(http, db, customer):
    answer = await send(http, line_event("follow", T0 + 2000), line_event("unfollow", T0 + 1000))
    assert answer["recorded"] == 2
    assert not blocked(db) and consent(db) is True


async def test_concurrent_copies_have_one_effect(http, db, customer):
    body = body_of(line_event("follow", T0), line_event("unfollow", T0 + 1000))
    responses = await asyncio.gather(*(post(http, body) for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["recorded"] for r in responses) == 2
    assert counts(db)["deliveries"] == 2 and active(db) == {("all", "line_unfollow", "line_unfollow", customer)}


# -- what Keepflow does not use --------------------------------------------------------------------


async def test_other_event_types_are_acknowledged_and_change_nothing(http, db, customer):
    before = counts(db)
    message = line_event("message", replyToken="r", message={"id": "1", "type": "text", "text": "STOP",
                                                              "quoteToken": "q"})
    postback = line_event("postback", replyToken="r", postback={"data": "a=1"})
    unknown = line_event("somethingNew")
    answer = await send(http, message, postback, unknown)
    assert answer == {"received": 3, "recorded": 0, "duplicates": 0, "outdated": 0, "ignored": 3}
    assert counts(db) == before


async def test_the_consoles_verify_request_is_answered_200(http, db):
    # LINE Developers console "Verify": a signed body with no events.
    before = counts(db)
    response = await post(http, json.dumps({"destination": "U" + "9" * 32, "events": []}).encode())
    assert response.status_code == 200 and response.json()["received"] == 0
    assert counts(db) == before


# -- verification ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["other_secret", "altered_body", "no_signature", "garbage_signature"])
async def test_unverified_requests_get_401_and_change_nothing(http, db, customer, tamper):
    body = body_of(line_event("unfollow"))
    headers = {"content-type": "application/json", "x-line-signature": signature(body)}
    if tamper == "other_secret":
        headers["x-line-signature"] = signature(body, "another-secret")
    elif tamper == "altered_body":
        body = body.replace(b'"unfollow"', b'"follow"  ')
    elif tamper == "no_signature":
        del headers["x-line-signature"]
    else:
        headers["x-line-signature"] = "not base64!"
    before = counts(db)
    response = await http.post(PATH, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert counts(db) == before


@pytest.mark.parametrize("secret", [None, ""])
async def test_without_a_channel_secret_everything_is_refused(settings, db, customer, secret):
    unset = settings.model_copy(update={"line_channel_secret": SecretStr(secret) if secret is not None else None})
    async with serving(unset, db) as client:
        body = body_of(line_event("unfollow"))
        response = await post(client, body)
    assert response.status_code == 401
    assert "LINE_CHANNEL_SECRET" in response.json()["detail"]
    assert active(db) == set()


@pytest.mark.parametrize("body", [
    b'{"events": [',                                                  # not JSON
    b'[]',                                                            # not an object
    b'{"destination": "U1"}',                                         # no events
    b'{"events": [{"type": "follow"}]}',                              # none of an event's fields
    json.dumps({"events": [line_event("unfollow", source={"type": "user", "userId": "not-a-line-id"})]}).encode(),
    json.dumps({"events": [line_event("follow", source={"type": "group", "groupId": "C" + "0" * 32})]}).encode(),
    # Read by the SDK as an unknown event: a follow without its replyToken and follow detail.
    json.dumps({"events": [{k: v for k, v in line_event("follow").items() if k not in ("replyToken", "follow")}]}).encode(),
])
async def test_a_body_not_shaped_as_lines_is_422_and_changes_nothing(http, db, customer, body):
    before = counts(db)
    response = await post(http, body)
    assert response.status_code == 422, response.text
    assert counts(db) == before


async def test_a_bad_event_after_a_good_one_keeps_neither(http, db, customer):
    body = json.dumps({"events": [line_event("unfollow"), line_event("follow", user="nobody")]}).encode()
    before = counts(db)
    assert (await post(http, body)).status_code == 422
    assert counts(db) == before


async def test_deliveries_are_counted_under_the_source_line(http, db, customer):
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"source": "line", **labels}) or 0.0

    def suppressed() -> float:
        return REGISTRY.get_sample_value("keepflow_suppressions_added_total",
                                         {"channel": "line", "source": "line_unfollow"}) or 0.0

    before = (value("keepflow_events_received_total"), value("keepflow_events_accepted_total"),
              value("keepflow_events_rejected_total", reason="signature"), suppressed())
    await send(http, line_event("follow", T0))
    await post(http, body_of(line_event("unfollow", T0 + 1000)), secret="another-secret")
    await send(http, line_event("unfollow", T0 + 2000))
    after = (value("keepflow_events_received_total"), value("keepflow_events_accepted_total"),
             value("keepflow_events_rejected_total", reason="signature"), suppressed())
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 2, 1, 1]


# -- a customer linked to their LINE id after the follow -------------------------------------------


def link(db, customer_id: str, user: str = USER, **fields: Any) -> None:
    from keepflow.runtime.events import EventIn
    from keepflow.runtime.routing import store

    store(db, EventIn.model_validate({"id": uuid.uuid4().hex, "type": "customer.updated",
                                      "occurred_at": "2026-12-07T10:00:00+07:00",
                                      "customer": {"id": customer_id, "line_user_id": user, **fields}}))


async def test_a_customer_linked_later_to_a_friend_gets_line_consent(http, db):
    await send(http, line_event("follow"))
    link(db, "c-later", f"  {USER} ")
    assert consent(db, "c-later") is True


async def test_a_customer_linked_later_keeps_the_shops_no(http, db):
    await send(http, line_event("follow"))
    link(db, "c-later", consents={"line": False})
    assert consent(db, "c-later") is False


async def test_a_customer_linked_to_someone_who_is_not_a_friend_gets_no_consent(http, db):
    await send(http, line_event("follow", T0, user=OTHER_USER))
    await send(http, line_event("follow", T0), line_event("unfollow", T0 + 1000))
    link(db, "c-blocked")
    link(db, "c-stranger", "U" + "1" * 32)
    assert (consent(db, "c-blocked"), consent(db, "c-stranger")) == (None, None)
    assert blocked(db)  # the unfollow's suppression holds for the address, whoever it is linked to
