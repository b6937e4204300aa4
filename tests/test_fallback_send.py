"""`fallback:` on a send step, on the real worker and the real provider SDKs against the fake APIs:
a customer who cannot get the step's channel gets the fallback's, as one message whose row says
which channel it went on; a retry never sends it on both."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.builtin.send import MessageSender, SendDeps
from keepflow.insights.report import build_report
from keepflow.language.rendering import Renderer
from keepflow.runtime.payloads import SendRequest
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.store import Customer
from tests.engine import TEST_TEMPLATES, running_worker, temporal_clock, time_skipping_server
from tests.helpers import messages, sends, serving_admin, snapshot, start, to_local_hour
from tests.test_line_send import NOK, line_settings

TIP = snapshot("""
sequences:
  - id: t
    category: marketing
    steps:
      - send: line
        template: tip
        fallback: sms
""")
PHONE = "+66812345678"
BANGKOK = ZoneInfo("Asia/Bangkok")
# Nok without a LINE account linked: she has a phone and agreed to texts.
NOK_WITHOUT_LINE = {**{k: v for k, v in NOK.items() if k != "line_user_id"}, "phone": PHONE,
                    "consents": {"line": True, "sms": True}}


@pytest.fixture
async def own_env():
    """A server of the test's own, for tests that move its clock."""
    async with await time_skipping_server() as env:
        yield env


async def test_a_customer_without_a_line_account_gets_the_step_by_sms(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        result = await (await start(env.client, tq, TIP, {"customer": NOK_WITHOUT_LINE})).result()
    [row] = messages(db)
    assert (row.channel, row.status, row.recipient, row.template) == ("sms", "sent", PHONE, "tip")
    assert row.body.startswith("Lumen Camera Co.: hello Nok, a tip by text for you.")
    assert fake.accepted("line") == [] and len(fake.accepted("twilio")) == 1
    assert result.steps_done[0].outcome == "sent: on sms (fallback: no LINE account)"


async def test_a_customer_on_line_with_consent_gets_it_on_line_and_no_text(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        customer = {**NOK, "phone": PHONE, "consents": {"line": True, "sms": True}}
        result = await (await start(env.client, tq, TIP, {"customer": customer})).result()
    [row] = messages(db)
    assert (row.channel, row.status, row.recipient) == ("line", "sent", NOK["line_user_id"])
    assert len(fake.accepted("line")) == 1 and fake.accepted("twilio") == []
    assert result.steps_done[0].outcome == "sent"


async def test_without_line_consent_it_goes_by_sms(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        customer = {**NOK, "phone": PHONE, "consents": {"sms": True}}
        await (await start(env.client, tq, TIP, {"customer": customer})).result()
    [row] = messages(db)
    assert (row.channel, row.status) == ("sms", "sent") and fake.accepted("line") == []


async def test_reachable_on_neither_it_is_skipped_once_with_both_reasons(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        customer = {**NOK_WITHOUT_LINE, "consents": {"line": True}}
        await (await start(env.client, tq, TIP, {"customer": customer})).result()
    [row] = messages(db)
    assert (row.channel, row.status) == ("line", "skipped")
    assert row.error == "customer has no line address; fallback sms: no sms marketing consent"
    assert fake.accepted("line") == [] and fake.accepted("twilio") == []


async def test_the_report_and_the_dashboard_show_a_fallen_back_message_under_sms(env, tmp_path, db, fake):
    settings = line_settings(tmp_path, fake)
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, TIP, {"customer": NOK_WITHOUT_LINE})).result()
    report = build_report(db, since=datetime.now(timezone.utc) - timedelta(days=1))
    [step] = report.steps
    assert (step.step, step.channel, step.template, step.sent) == ("0", "sms", "tip", 1)
    [row] = messages(db)
    async with serving_admin(settings, db) as http:
        listed = (await http.get("/messages")).text
        page = (await http.get(f"/messages/{row.id}")).text
    [cells] = re.findall(rf'<tr data-id="{row.id}".*?</tr>', listed, re.S)
    assert "<td>sms</td>" in cells and "<td>line</td>" not in cells
    assert f"Message {row.id}: sms tip" in page and 'class="sms" id="sms">Lumen Camera Co.: hello Nok' in page


def _attempt(number: int, started: datetime) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="send_message", attempt=number, started_time=started,
                                   current_attempt_scheduled_time=started, heartbeat_timeout=timedelta(seconds=10))
    return env


def test_a_retry_finishes_the_text_an_earlier_attempt_started_and_never_sends_it_on_line(tmp_path, db, fake):
    """Attempt 1 fell back to SMS and Twilio took the text, but its answer was lost. Before the
    retry the customer linked LINE: the retry still finishes the text (found in Twilio's list), and
    pushes nothing to LINE."""
    settings = line_settings(tmp_path, fake)
    deps = SendDeps(settings, db, Renderer(TEST_TEMPLATES), email_provider(settings), sms_provider(settings))
    request = SendRequest(workflow_id="t/retry", sequence_id="t", step="0", channel="line", fallback="sms",
                          template="tip", category="marketing",
                          context={"customer": NOK_WITHOUT_LINE, "brand": {"name": "Lumen Camera Co."}})
    started = datetime.now(timezone.utc)
    fake.accept_then_drop("twilio")
    with pytest.raises(ApplicationError):
        _attempt(1, started).run(MessageSender(deps).send_message, request)
    linked = request.model_copy(update={"context": {**request.context, "customer": {
        **NOK, "phone": PHONE, "consents": {"line": True, "sms": True}}}})
    second = _attempt(2, started + timedelta(minutes=5)).run(MessageSender(deps).send_message, linked)
    assert (second.status, second.channel) == ("sent", "sms")
    assert fake.accepted("line") == [] and len(fake.accepted("twilio")) == 1
    [row] = messages(db)
    assert (row.channel, row.status, row.provider_message_id) == ("sms", "sent", fake.accepted("twilio")[0]["sid"])


async def test_a_line_consent_withdrawn_after_the_run_started_sends_the_text(env, tmp_path, db, fake):
    """The run's context says LINE consent; the stored profile, read at send time, no longer does."""
    customer = {**NOK, "phone": PHONE, "consents": {"line": True, "sms": True}}
    with db.session() as session:
        session.add(Customer(id=customer["id"], phone=PHONE, line_user_id=NOK["line_user_id"], first_name="Nok",
                             timezone="Asia/Bangkok", consents={"line": False, "sms": True}, attributes={}))
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        result = await (await start(env.client, tq, TIP, {"customer": customer})).result()
    [row] = messages(db)
    assert (row.channel, row.status) == ("sms", "sent") and fake.accepted("line") == []
    assert result.steps_done[0].outcome == "sent: on sms (fallback: no LINE marketing consent)"


async def test_the_fallback_text_keeps_the_quiet_hours_of_sms(own_env, tmp_path, db, fake):
    held_tip = snapshot("""
rules:
  quiet_hours: {start: "21:00", end: "08:00", channels: [sms]}
  fallback_timezones: [Asia/Bangkok]
sequences:
  - id: t
    category: marketing
    steps:
      - send: line
        template: tip
        fallback: sms
""")
    await to_local_hour(own_env, 23)
    async with running_worker(own_env, line_settings(tmp_path, fake), db) as tq:
        handle = await start(own_env.client, tq, held_tip, {"customer": NOK_WITHOUT_LINE})
        result = await handle.result()
    [row] = messages(db)
    assert (row.channel, row.status) == ("sms", "sent")
    [held, sent] = await sends(own_env.client, handle.id)
    assert held.at.astimezone(BANGKOK).hour == 23 and sent.at.astimezone(BANGKOK).hour == 8
    assert result.steps_done[0].outcome == "sent: on sms (fallback: no LINE account)"


async def test_a_lost_answer_for_the_fallback_text_is_found_not_resent_on_either_channel(env, tmp_path, db, fake):
    fake.clock = temporal_clock(env)  # Twilio's list catches up on the server's skipped clock
    fake.accept_then_drop("twilio")
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        result = await (await start(env.client, tq, TIP, {"customer": NOK_WITHOUT_LINE})).result()
    twilio_posts = [r for r in fake.requests if r["api"] == "twilio" and r["method"] == "POST"]
    assert len(twilio_posts) == 1 and fake.accepted("line") == []
    [row] = messages(db)
    assert (row.channel, row.status, row.attempts) == ("sms", "sent", 1)
    assert row.provider_message_id == fake.accepted("twilio")[0]["sid"]
    assert result.steps_done[0].outcome == "sent: on sms"
