"""Every send obeys the rules: consent, suppression, quiet hours, the frequency cap, staleness.

Runs go through the real interpreter and send activity on a time-skipping server, with the real
SendGrid and Twilio SDKs aimed at the fake providers. Quiet-hour tests pin the server's clock to a
local hour, so they mean the same whenever the suite runs.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from activities.builtin.send import MessageSender, SendDeps
from keepflow.language.dsl import Cap
from keepflow.language.rendering import Renderer
from keepflow.runtime.payloads import EventSignal, SendPolicy, SendRequest
from keepflow.sending import frequency_cap, suppressions
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.store import Coupon, Customer, Event, Message, Suppression
from tests.engine import TEST_TEMPLATES, make_settings, running_worker, time_skipping_server
from tests.helpers import CUSTOMER, messages, sends, snapshot, start

BANGKOK, NEW_YORK = ZoneInfo("Asia/Bangkok"), ZoneInfo("America/New_York")


@pytest.fixture
def settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES)


@pytest.fixture
async def own_env():
    """A server of the test's own, for tests that move its clock to a chosen date."""
    async with await time_skipping_server() as env:
        yield env


def sequences(*bodies: str, rules: str = "") -> str:
    return (f"rules:\n{rules}\n" if rules else "") + "sequences:\n" + "".join(bodies)


def sequence(id: str, steps: str, category: str = "marketing", **fields: str) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    body = "".join(f"      {line}\n" for line in steps.strip("\n").splitlines())
    return f"  - id: {id}\n    category: {category}\n{extra}    steps:\n{body}"


def store_customer(db, **fields) -> dict:
    """The profile as the router stores it, and the same as the run's context."""
    customer = {**CUSTOMER, "id": f"c-{uuid.uuid4().hex[:6]}", **fields}
    with db.session() as session:
        session.add(Customer(id=customer["id"], email=customer["email"], phone=customer["phone"],
                             first_name=customer["first_name"], locale=customer["locale"],
                             timezone=customer.get("timezone"), consents=customer["consents"], attributes={}))
    return customer


async def clock_to(env, local: datetime) -> None:
    now = await env.get_current_time()
    assert local > now, f"the server is already past {local}"
    await env.sleep(local - now)


def outcomes(result) -> list[str]:
    return [s.outcome for s in result.steps_done]


# -- consent and suppression ---------------------------------------------------------------------

async def test_unsubscribed_customer_gets_no_marketing_but_still_the_shipping_notice(env, settings, db, fake):
    customer = store_customer(db)
    with db.session() as session:
        suppressions.suppress(session, channel="email", address=customer["email"].upper(), scope="marketing",
                              reason="unsubscribe", source="unsubscribe_link", customer_id=customer["id"])
    offer = snapshot(sequences(sequence("offer", "- send: email\n  template: note")))
    shipping = snapshot(sequences(sequence("shipping", "- send: email\n  template: note", category="transactional")))
    async with running_worker(env, settings, db) as tq:
        marketing = await (await start(env.client, tq, offer, {"customer": customer})).result()
        transactional = await (await start(env.client, tq, shipping, {"customer": customer})).result()
    assert outcomes(marketing) == ["skipped: suppressed: unsubscribe (unsubscribe_link)"]
    assert outcomes(transactional) == ["sent"]
    assert [m["to"] for m in fake.accepted("sendgrid")] == [customer["email"]]


async def test_hard_bounce_stops_transactional_mail_too(env, settings, db, fake):
    customer = store_customer(db)
    with db.session() as session:
        suppressions.suppress(session, channel="email", address=customer["email"], scope="all",
                              reason="hard_bounce", source="sendgrid")
    shipping = snapshot(sequences(sequence("shipping", "- send: email\n  template: note", category="transactional")))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, shipping, {"customer": customer})).result()
    assert outcomes(result) == ["skipped: suppressed: hard_bounce (sendgrid)"] and fake.accepted("sendgrid") == []


async def test_consent_withdrawn_after_the_run_started_is_honoured(env, settings, db, fake):
    customer = store_customer(db)  # the run's context still says consents: email true
    with db.session() as session:
        session.get(Customer, customer["id"]).consents = {"email": False, "sms": True}
    offer = snapshot(sequences(sequence("offer", "- send: email\n  template: note")))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, offer, {"customer": customer})).result()
    assert outcomes(result) == ["skipped: no email marketing consent"] and fake.accepted("sendgrid") == []


async def test_a_group_unsubscribe_stops_that_group_only(env, settings, db, fake):
    customer = store_customer(db)
    with db.session() as session:
        suppressions.suppress(session, channel="email", address=customer["email"], scope="group:newsletter",
                              reason="unsubscribe", source="unsubscribe_link")
    yaml = sequences(sequence("news", "- send: email\n  template: note", group="newsletter"),
                     sequence("offer", "- send: email\n  template: note"))
    async with running_worker(env, settings, db) as tq:
        news = await (await start(env.client, tq, snapshot(yaml, "news"), {"customer": customer})).result()
        offer = await (await start(env.client, tq, snapshot(yaml, "offer"), {"customer": customer})).result()
    assert outcomes(news) == ["skipped: suppressed: unsubscribe (unsubscribe_link)"]
    assert outcomes(offer) == ["sent"]


async def test_twilio_21610_suppresses_the_number_for_every_later_text(env, settings, db, fake):
    customer = store_customer(db)
    fake.fail_next("twilio", 400, twilio_code=21610)
    texts = snapshot(sequences(sequence("texts", "- send: sms\n  template: ping\n- send: sms\n  template: ping\n  id: again",
                                        category="transactional")))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, texts, {"customer": customer})).result()
    assert outcomes(result)[0].startswith("failed") and "21610" in outcomes(result)[0]
    assert outcomes(result)[1] == "skipped: suppressed: sms_stop (twilio)"
    assert sum(1 for r in fake.requests if r["api"] == "twilio" and r["method"] == "POST") == 1
    with db.session() as session:
        [row] = session.scalars(select(Suppression)).all()
        assert (row.channel, row.address, row.scope, row.reason) == ("sms", customer["phone"], "all", "sms_stop")


async def test_an_invalid_stored_contact_point_is_never_used(env, settings, db, fake):
    customer = store_customer(db)
    with db.session() as session:
        session.get(Customer, customer["id"]).phone_problem = "not a valid phone number"
    texts = snapshot(sequences(sequence("texts", "- send: sms\n  template: ping", category="transactional")))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, texts, {"customer": customer})).result()
    assert outcomes(result) == ["skipped: invalid sms address: not a valid phone number"]
    assert fake.accepted("twilio") == []


# -- quiet hours -----------------------------------------------------------------------------------

QUIET = '  quiet_hours: {start: "21:00", end: "08:00", channels: [sms]}\n  fallback_timezones: [Asia/Bangkok, America/New_York]'
ONE_SMS = sequence("late", "- send: sms\n  template: ping")


async def sms_sent_at(env, settings, db, customer: dict) -> datetime:
    snap = snapshot(sequences(ONE_SMS, rules=QUIET))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap, {"customer": customer})
        result = await handle.result()
    assert outcomes(result) == ["sent"]
    return (await sends(env.client, handle.id))[-1].at  # the attempt that went out


async def test_an_sms_due_at_23_local_goes_out_at_08_local(own_env, settings, db, fake):
    customer = store_customer(db, timezone="Asia/Bangkok")
    today = (await own_env.get_current_time()).astimezone(BANGKOK).date()
    await clock_to(own_env, datetime.combine(today + timedelta(days=1), datetime.min.time(), BANGKOK).replace(hour=23))
    sent = await sms_sent_at(own_env, settings, db, customer)
    assert sent.astimezone(BANGKOK).replace(second=0, microsecond=0) == \
        datetime.combine(today + timedelta(days=2), datetime.min.time(), BANGKOK).replace(hour=8)
    [row] = messages(db)
    assert row.status == "sent" and len(fake.accepted("twilio")) == 1


async def test_quiet_hours_follow_local_time_across_a_dst_change(own_env, settings, db, fake):
    # New York moves to daylight time at 02:00 on 14 March 2027: 23:00 EST on the 13th to
    # 08:00 EDT on the 14th is 8 hours, not 9.
    customer = store_customer(db, timezone="America/New_York")
    await clock_to(own_env, datetime(2027, 3, 13, 23, 0, tzinfo=NEW_YORK))
    sent = await sms_sent_at(own_env, settings, db, customer)
    assert sent.astimezone(timezone.utc).replace(second=0, microsecond=0) == datetime(2027, 3, 14, 12, 0, tzinfo=timezone.utc)
    assert sent.astimezone(NEW_YORK).hour == 8


async def test_no_known_time_zone_gets_the_most_restrictive_window(own_env, settings, db, fake):
    # Fallback zones Bangkok (quiet 14:00-01:00 UTC) and New York (quiet 02:00-13:00 UTC in
    # winter): at 16:00 UTC it is quiet in Bangkok; 01:00 UTC is the first moment quiet in neither.
    customer = store_customer(db, timezone=None)
    day = (await own_env.get_current_time()).astimezone(timezone.utc).date() + timedelta(days=1)
    await clock_to(own_env, datetime.combine(day, datetime.min.time(), timezone.utc).replace(hour=16))
    sent = await sms_sent_at(own_env, settings, db, customer)
    assert sent.replace(second=0, microsecond=0) == datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc).replace(hour=1)


async def test_a_superseding_event_drops_the_held_message_at_once(own_env, settings, db, fake):
    customer = store_customer(db, timezone="Asia/Bangkok")
    today = (await own_env.get_current_time()).astimezone(BANGKOK).date()
    await clock_to(own_env, datetime.combine(today + timedelta(days=1), datetime.min.time(), BANGKOK).replace(hour=22))
    snap = snapshot(sequences(sequence(
        "shipping", "- send: sms\n  template: ping\n  superseded_by: [order.delivered]", category="transactional",
        quiet_hours="{channels: [sms]}"), rules=QUIET))
    async with running_worker(own_env, settings, db) as tq:
        handle = await start(own_env.client, tq, snap, {"customer": customer})
        await own_env.sleep(timedelta(hours=2))  # midnight: still held
        assert messages(db)[0].status == "deferred"
        await handle.signal("event", EventSignal(id="d1", type="order.delivered", occurred_at="2027-01-01T00:00:00Z"))
        result = await handle.result()
    assert outcomes(result) == ["skipped: superseded by order.delivered"]
    assert fake.accepted("twilio") == []


async def test_a_message_held_past_its_expiry_is_dropped(own_env, settings, db, fake):
    customer = store_customer(db, timezone="Asia/Bangkok")
    today = (await own_env.get_current_time()).astimezone(BANGKOK).date()
    await clock_to(own_env, datetime.combine(today + timedelta(days=1), datetime.min.time(), BANGKOK).replace(hour=22))
    snap = snapshot(sequences(sequence("late", "- send: sms\n  template: ping\n  expires_after: 4h"), rules=QUIET))
    async with running_worker(own_env, settings, db) as tq:
        result = await (await start(own_env.client, tq, snap, {"customer": customer})).result()
    assert outcomes(result)[0].startswith("skipped: expired")
    assert fake.accepted("twilio") == []


# -- the frequency cap -----------------------------------------------------------------------------

CAP = "  quiet_hours: {channels: []}\n  frequency_cap:\n    sms: {max: 1, per: 24h}"


async def test_two_sequences_racing_for_the_cap_send_one_message(own_env, settings, db, fake):
    env = own_env
    customer = store_customer(db)
    yaml = sequences(*(sequence(f"s{i}", "- send: sms\n  template: ping", on_cap="skip") for i in range(4)), rules=CAP)
    async with running_worker(env, settings, db) as tq:
        handles = [await start(env.client, tq, snapshot(yaml, f"s{i}"), {"customer": customer}) for i in range(4)]
        # The four sends run at once on the worker; the results are read one by one, because several
        # result() calls at once can make the test server skip its clock past a task's timeout.
        results = [await h.result() for h in handles]
    got = sorted(outcomes(r)[0] for r in results)
    assert got == ["sent"] + ["skipped: frequency cap (1 sms per 1d)"] * 3
    assert len(fake.accepted("twilio")) == 1


async def test_a_capped_message_waits_for_the_next_free_slot(own_env, settings, db, fake):
    env = own_env  # its clock moves only for this test's timers
    customer = store_customer(db)
    yaml = sequences(sequence("first", "- send: sms\n  template: ping"),
                     sequence("second", "- send: sms\n  template: ping"), rules=CAP)
    async with running_worker(env, settings, db) as tq:
        # Started together: awaiting one alone lets the test server skip to its pending timeouts.
        handles = [await start(env.client, tq, snapshot(yaml, s), {"customer": customer}) for s in ("first", "second")]
        results = [await h.result() for h in handles]
    assert [outcomes(r) for r in results] == [["sent"], ["sent"]]
    attempts = sorted([await sends(env.client, h.id) for h in handles], key=len)
    assert [len(a) for a in attempts] == [1, 2]  # one went at once; the other was held, then asked again
    # The slot frees 24 h after the first was counted (a few milliseconds before its activity was scheduled).
    assert abs(attempts[1][-1].at - attempts[0][0].at - timedelta(hours=24)) < timedelta(seconds=1)
    assert len(fake.accepted("twilio")) == 2


async def test_transactional_messages_neither_count_nor_are_capped(env, settings, db, fake):
    customer = store_customer(db)
    yaml = sequences(sequence("ship", "- send: sms\n  template: ping\n- send: sms\n  template: ping\n  id: two",
                              category="transactional"),
                     sequence("offer", "- send: sms\n  template: ping", on_cap="skip"), rules=CAP)
    async with running_worker(env, settings, db) as tq:
        ship = await (await start(env.client, tq, snapshot(yaml, "ship"), {"customer": customer})).result()
        offer = await (await start(env.client, tq, snapshot(yaml, "offer"), {"customer": customer})).result()
    assert outcomes(ship) == ["sent", "sent"] and outcomes(offer) == ["sent"]


def test_taking_a_cap_slot_is_atomic_under_concurrent_writers(db):
    """Twenty threads, one customer, a cap of one: exactly one slot is taken."""
    with db.session() as session:
        for i in range(20):
            session.add(Message(key=f"race:{i}", workflow_id=f"race/{i}", sequence_id="s", step="0", channel="sms",
                                category="marketing", template="ping", customer_id="c-race", status="pending"))
    with db.session() as session:
        ids = list(session.scalars(select(Message.id)))
    now, barrier, taken = datetime.now(timezone.utc), threading.Barrier(len(ids)), []

    def race(message_id: int) -> None:
        barrier.wait()
        if frequency_cap.take_slot(db, message_id=message_id, customer_id="c-race", channel="sms",
                                   cap=Cap(max=1, per=timedelta(hours=24)), now=now) is None:
            taken.append(message_id)

    threads = [threading.Thread(target=race, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 1
    with db.session() as session:
        assert session.scalar(select(Message.id).where(Message.counted_at.is_not(None))) == taken[0]


# -- coupons ---------------------------------------------------------------------------------------

COUPON_STEPS = """
- do: create_coupon
  with: {percent: 20, valid_for: 7d, prefix: BACK}
  as: coupon
- send: email
  template: coupon
  coupon: coupon
- wait: 4d
- send: email
  template: coupon
  coupon: coupon
  id: reminder
"""


async def test_an_offer_held_by_quiet_hours_starts_its_coupon_days_when_it_goes_out(own_env, settings, db, fake):
    customer = store_customer(db, timezone="Asia/Bangkok")
    today = (await own_env.get_current_time()).astimezone(BANGKOK).date()
    evening = datetime.combine(today + timedelta(days=1), datetime.min.time(), BANGKOK).replace(hour=22)
    await clock_to(own_env, evening)
    rules = '  quiet_hours: {start: "21:00", end: "08:00", channels: [email]}\n  fallback_timezones: [Asia/Bangkok]'
    snap = snapshot(sequences(sequence("winback", COUPON_STEPS), rules=rules))
    async with running_worker(own_env, settings, db) as tq:
        result = await (await start(own_env.client, tq, snap, {"customer": customer})).result()
    assert outcomes(result) == ["done", "sent", "waited", "sent"]
    with db.session() as session:
        [coupon] = session.scalars(select(Coupon)).all()
    morning = evening + timedelta(hours=10)
    assert coupon.activated_at.replace(tzinfo=timezone.utc).replace(second=0, microsecond=0) == morning
    assert coupon.expires_at.replace(tzinfo=timezone.utc).replace(second=0, microsecond=0) == morning + timedelta(days=7)


async def test_reminders_are_dropped_once_the_coupon_is_redeemed(own_env, settings, db, fake):
    env = own_env
    customer = store_customer(db)
    snap = snapshot(sequences(sequence("winback", COUPON_STEPS)))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap, {"customer": customer})
        for _ in range(200):  # until the offer went out
            if any(m.status == "sent" for m in messages(db)):
                break
            await asyncio.sleep(0.05)
        with db.session() as session:
            session.scalars(select(Coupon)).one().redeemed_at = datetime.now(timezone.utc)
        result = await handle.result()
    assert outcomes(result)[-1].startswith("skipped: coupon BACK-") and outcomes(result)[-1].endswith("already redeemed")
    assert len(fake.accepted("sendgrid")) == 1


async def test_reminders_are_dropped_once_the_coupon_expired(own_env, settings, db, fake):
    env = own_env
    customer = store_customer(db)
    steps = COUPON_STEPS.replace("valid_for: 7d", "valid_for: 3d")  # the reminder comes on day 4
    snap = snapshot(sequences(sequence("winback", steps)))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, snap, {"customer": customer})).result()
    assert outcomes(result)[1] == "sent" and outcomes(result)[-1].endswith("expired")
    assert len(fake.accepted("sendgrid")) == 1


# -- templates -------------------------------------------------------------------------------------

def test_script_in_a_customer_name_comes_out_escaped(settings, db, fake):
    sender = MessageSender(SendDeps(settings, db, Renderer(TEST_TEMPLATES), email_provider(settings), sms_provider(settings)))
    customer = {**CUSTOMER, "first_name": "<script>alert(1)</script>"}
    request = SendRequest(workflow_id="t/xss", sequence_id="t", step="0", channel="email", template="note",
                          category="transactional", context={"customer": customer, "note": "<b>hi</b>"})
    assert sender.send_message(request).status == "sent"
    [mail] = fake.accepted("sendgrid")
    html = mail["html"]
    assert "<script>" not in html and "&lt;b&gt;hi&lt;/b&gt;" in html


@pytest.mark.parametrize(("email_from", "sender"), [
    ("shop@example.com", ("shop@example.com", "Lumen Camera Co.")),  # no name set: the brand's
    ("Lens Desk <desk@example.com>", ("desk@example.com", "Lens Desk")),  # a name set wins
])
def test_the_from_name_is_the_brand_unless_the_sender_names_itself(settings, db, fake, email_from, sender):
    configured = settings.model_copy(update={"email_from": email_from})
    deps = SendDeps(configured, db, Renderer(TEST_TEMPLATES), email_provider(configured), sms_provider(configured))
    request = SendRequest(workflow_id=f"t/{uuid.uuid4().hex[:6]}", sequence_id="t", step="0", channel="email",
                          template="note", category="transactional",
                          context={"customer": CUSTOMER, "note": "hi", "brand": {"name": "Lumen Camera Co."}})
    assert MessageSender(deps).send_message(request).status == "sent"
    [mail] = fake.accepted("sendgrid")
    assert (mail["from"], mail["from_name"]) == sender


@pytest.mark.parametrize(("locale", "line"), [("en", "Reply STOP to opt out"), ("th", "STOP"),
                                               ("zh-Hant", "STOP")])
def test_the_first_marketing_text_to_a_number_says_how_to_opt_out(settings, db, fake, locale, line):
    from tests.engine import SHOP_TEMPLATES

    shop = settings.model_copy(update={"templates_dir": SHOP_TEMPLATES})
    sender = MessageSender(SendDeps(shop, db, Renderer(SHOP_TEMPLATES), email_provider(shop), sms_provider(shop)))
    customer = store_customer(db, locale=locale)
    context = {"customer": customer, "brand": {"name": "Shop", "url": "https://shop.example"},
               "coupon": {"percent": 10, "code": "BACK10", "expires_at": "2026-12-31T00:00:00+00:00"},
               "order": {"id": "1", "number": "#1"}, "shipment": {"data": {}}}

    def text(step: str, template: str, category: str = "marketing") -> str:
        request = SendRequest(workflow_id=f"winback/{customer['id']}", sequence_id="winback", step=step,
                              channel="sms", template=template, category=category, context=context,
                              policy=None if category == "transactional" else SendPolicy(group="winback"))
        assert sender.send_message(request).status == "sent"
        return fake.accepted("twilio")[-1]["body"]

    assert "STOP" not in text("0", "order_shipped", "transactional")  # transactional: no opt-out line
    first = text("1", "winback_offer")
    assert first.splitlines()[-1].startswith(line) if locale == "en" else line in first.splitlines()[-1]
    assert "STOP" not in text("2", "winback_offer")  # the number has had it once
    bodies = {m.step: m.body for m in messages(db)}
    assert bodies["1"] == first  # the row keeps what went out


def test_only_marketing_email_carries_the_sendgrid_unsubscribe_group(settings, db, fake):
    from tests.engine import SHOP_TEMPLATES

    shop = settings.model_copy(update={"templates_dir": SHOP_TEMPLATES, "sendgrid_asm_group_id": 777})
    sender = MessageSender(SendDeps(shop, db, Renderer(SHOP_TEMPLATES), email_provider(shop), sms_provider(shop)))
    customer = store_customer(db)
    context = {"customer": customer, "order": {"id": "1", "items": []},
               "brand": {"name": "Shop", "url": "https://shop.example", "postal_address": "99 Sukhumvit Road",
                         "support_email": "help@shop.example"}}
    for step, category in (("0", "marketing"), ("1", "transactional")):
        request = SendRequest(workflow_id="news/asm", sequence_id="news", step=step, channel="email",
                              template="review_request", category=category, context=context,
                              policy=None if category == "transactional" else SendPolicy(group="news"))
        assert sender.send_message(request).status == "sent"
    marketing, transactional = (mail["payload"] for mail in fake.accepted("sendgrid"))
    # A spam report on a marketing mail then unsubscribes from that group, not from order mail.
    assert marketing["asm"] == {"group_id": 777}
    assert "asm" not in transactional


def test_no_opt_out_line_of_ours_where_the_messaging_service_adds_its_own(settings, db, fake):
    from tests.engine import SHOP_TEMPLATES

    shop = settings.model_copy(update={"templates_dir": SHOP_TEMPLATES, "sms_opt_out_line": False})
    sender = MessageSender(SendDeps(shop, db, Renderer(SHOP_TEMPLATES), email_provider(shop), sms_provider(shop)))
    customer = store_customer(db)
    context = {"customer": customer, "brand": {"name": "Shop", "url": "https://shop.example"},
               "coupon": {"percent": 10, "code": "BACK10", "expires_at": "2026-12-31T00:00:00+00:00"}}
    request = SendRequest(workflow_id=f"winback/{customer['id']}", sequence_id="winback", step="1", channel="sms",
                          template="winback_offer", category="marketing", context=context,
                          policy=SendPolicy(group="winback"))
    assert sender.send_message(request).status == "sent"
    assert "STOP" not in fake.accepted("twilio")[0]["body"]


# -- contact points ---------------------------------------------------------------------------------

def test_stored_profiles_get_e164_phones_and_checked_emails(db):
    from keepflow.runtime.events import EventIn
    from keepflow.runtime.routing import store

    def event(customer: dict) -> EventIn:
        return EventIn.model_validate({"id": uuid.uuid4().hex, "type": "customer.updated",
                                       "occurred_at": "2026-11-23T10:00:00+07:00", "customer": customer})

    store(db, event({"id": "good", "email": "Nok@Example.COM", "phone": "+66 81-234-5678"}))
    store(db, event({"id": "local", "phone": "081 234 5678", "locale": "th-TH"}))
    store(db, event({"id": "bad", "email": "nok@", "phone": "12345"}))
    with db.session() as session:
        good, local, bad = (session.get(Customer, i) for i in ("good", "local", "bad"))
        assert (good.email, good.phone, good.email_problem, good.phone_problem) == \
            ("nok@example.com", "+66812345678", None, None)
        assert local.phone == "+66812345678"  # no country code: the region of the customer's locale
        assert bad.email == "nok@" and bad.email_problem and bad.phone == "12345" and bad.phone_problem


async def test_marketing_mail_carries_one_click_unsubscribe_and_the_link_works(env, settings, db, fake):
    """The whole loop: the header and footer link go out, a one-click POST suppresses, the next
    marketing mail is skipped and a transactional one still goes."""
    import httpx

    from keepflow.http.app import create_app
    from keepflow.runtime.registry import load_catalog
    from tests.engine import CATALOG, SHOP_TEMPLATES

    real = settings.model_copy(update={"templates_dir": SHOP_TEMPLATES, "public_url": "https://mail.shop.example",
                                       "webhook_secret": SecretStr("whsec_" + "A" * 32)})
    customer = store_customer(db)
    sender = MessageSender(SendDeps(real, db, Renderer(SHOP_TEMPLATES), email_provider(real), sms_provider(real)))
    context = {"customer": customer, "brand": {"name": "Shop", "url": "https://shop.example",
                                               "postal_address": "99 Sukhumvit Road, Bangkok",
                                               "support_email": "help@shop.example"}}

    def offer(step: str, category: str = "marketing") -> SendRequest:
        return SendRequest(workflow_id="news/1", sequence_id="news", step=step, channel="email", template="review_request",
                           category=category, context={**context, "order": {"id": "1", "items": []}},
                           policy=None if category == "transactional" else SendPolicy(group="news"))

    assert sender.send_message(offer("0")).status == "sent"
    [mail] = fake.accepted("sendgrid")
    headers = mail["payload"]["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://mail.shop.example/unsubscribe/") and url in mail["html"] and url in mail["text"]
    assert mail["custom_args"]["keepflow_message_id"] == str(messages(db)[0].id)

    app = create_app(real, catalog=CATALOG, db=db, client=env.client)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://mail.shop.example") as http:
            answer = await http.post(url.removeprefix("https://mail.shop.example"),
                                     data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    # Counted against the message it came from, as `keepflow report` reads it.
    with db.session() as session:
        [notice] = session.scalars(select(Event).where(Event.type == "message.unsubscribed")).all()
        assert notice.payload["data"]["message_id"] == messages(db)[0].id
    assert sender.send_message(offer("1")).reason == "suppressed: unsubscribe (unsubscribe_link)"
    assert sender.send_message(offer("2", "transactional")).status == "sent"
