"""Provider failures: retried when they may pass, recorded when they cannot, never sent twice."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.builtin.send import MessageSender, SendDeps
from keepflow.language.rendering import Renderer
from keepflow.runtime.payloads import SendRequest
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.sending.providers.twilio import TwilioSms
from tests.engine import TEST_TEMPLATES, make_settings, running_worker, temporal_clock
from tests.helpers import messages, snapshot, start

EMAIL_THEN_SMS = snapshot("""
sequences:
  - id: t
    category: marketing
    steps:
      - send: email
        template: note
      - send: sms
        template: ping
""")

TEXT = snapshot("""
sequences:
  - id: t
    category: marketing
    steps:
      - send: sms
        template: ping
""")
# Unicode punctuation, which Twilio's Smart Encoding rewrites.
TEXT_WITH_QUOTES = snapshot("""
sequences:
  - id: t
    category: marketing
    steps:
      - send: sms
        template: shipped
""")


@pytest.fixture
def settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES)


@pytest.fixture
async def twilio_clock(env, fake):
    """The fake Twilio reads the time-skipping server's clock, so the wait for its list, which the
    server skips, has passed for Twilio too."""
    fake.clock = temporal_clock(env)


def sendgrid_posts(fake) -> int:
    return sum(1 for r in fake.requests if r["api"] == "sendgrid" and r["method"] == "POST")


def twilio_posts(fake) -> int:
    return sum(1 for r in fake.requests if r["api"] == "twilio" and r["method"] == "POST")


@pytest.mark.parametrize("status,retry_after", [(429, "1"), (500, None), (503, "1")])
async def test_transient_errors_are_retried_and_the_message_goes_out_once(env, settings, db, fake, status, retry_after):
    fake.fail_next("sendgrid", status, times=2, retry_after=retry_after)
    fake.fail_next("twilio", status, times=1, retry_after=retry_after)
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    assert [s.outcome for s in result.steps_done] == ["sent", "sent"]
    assert sendgrid_posts(fake) == 3 and len(fake.accepted("sendgrid")) == 1
    assert twilio_posts(fake) == 2 and len(fake.accepted("twilio")) == 1
    email, sms = messages(db)
    assert (email.status, email.attempts, sms.status, sms.attempts) == ("sent", 3, "sent", 2)


async def test_invalid_address_is_recorded_never_sent_and_the_run_goes_on(env, settings, db, fake):
    customer = {"id": "c-2", "email": "not-an-address", "phone": "+66812345678", "consents": {"email": True, "sms": True}}
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, EMAIL_THEN_SMS, {"customer": customer})).result()
    assert sendgrid_posts(fake) == 0
    email, sms = messages(db)
    assert email.status == "skipped" and email.error.startswith("invalid email address")
    assert sms.status == "sent"
    assert result.steps_done[0].outcome.startswith("skipped: invalid email address")


async def test_a_provider_rejection_is_recorded_not_retried_and_the_run_goes_on(env, settings, db, fake):
    fake.fail_next("sendgrid", 400)
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    assert sendgrid_posts(fake) == 1
    email, sms = messages(db)
    assert email.status == "failed" and "400" in email.error
    assert sms.status == "sent"
    assert result.steps_done[0].outcome.startswith("failed")


async def test_twilio_unsubscribed_recipient_is_permanent(env, settings, db, fake):
    fake.fail_next("twilio", 400, twilio_code=21610)
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    assert twilio_posts(fake) == 1
    sms = messages(db)[1]
    assert sms.status == "failed" and "21610" in sms.error


async def test_sms_accepted_but_answer_lost_is_found_not_resent(env, settings, db, fake, twilio_clock):
    fake.accept_then_drop("twilio")
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    assert twilio_posts(fake) == 1 and len(fake.accepted("twilio")) == 1
    sms = messages(db)[1]
    assert sms.status == "sent" and sms.provider_message_id == fake.accepted("twilio")[0]["sid"]
    assert result.steps_done[1].outcome == "sent"


async def test_email_accepted_but_answer_lost_is_not_resent(env, settings, db, fake):
    fake.accept_then_drop("sendgrid")
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    assert sendgrid_posts(fake) == 1 and len(fake.accepted("sendgrid")) == 1
    email = messages(db)[0]
    assert email.status == "unknown" and "at-most-once" in email.error
    assert result.steps_done[0].outcome.startswith("unknown")
    assert result.steps_done[1].outcome == "sent"


def test_a_retry_after_the_provider_accepted_sends_nothing_more(settings, db, fake):
    """Run the same step twice (as a retry would after a crash before completion): one message."""
    from activities.builtin.send import MessageSender, SendDeps
    from keepflow.language.rendering import Renderer
    from keepflow.runtime.payloads import SendRequest
    from keepflow.sending.providers import email_provider, sms_provider

    sender = MessageSender(sender_deps(settings, db))
    request = SendRequest(workflow_id="t/retry", sequence_id="t", step="0", channel="email", template="note",
                          category="marketing", context={"customer": {"id": "c", "email": "x@example.com",
                                                                 "consents": {"email": True}}})
    first = sender.send_message(request)
    second = sender.send_message(request)
    assert first.status == second.status == "sent"
    assert first.message_id == second.message_id
    assert sendgrid_posts(fake) == 1


async def test_customer_without_a_phone_is_skipped_with_a_reason(env, settings, db, fake):
    customer = {"id": "c-3", "email": "a@example.com"}
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, EMAIL_THEN_SMS, {"customer": customer})).result()
    sms = messages(db)[1]
    assert sms.status == "skipped" and sms.error == "customer has no sms address"
    assert twilio_posts(fake) == 0


def test_an_attempt_that_outlived_its_timeout_does_not_send(settings, db, fake):
    """Attempt 1 stalls after reading the row (a frozen worker); Temporal times it out and attempt 2
    sends. When attempt 1 wakes, the row has moved on: it must not call the provider again."""
    paused, resume = threading.Event(), threading.Event()

    class Stalling(Renderer):
        def render(self, *args, **kwargs):
            paused.set()
            assert resume.wait(10)
            return super().render(*args, **kwargs)

    def sender(renderer: Renderer) -> MessageSender:
        return MessageSender(SendDeps(settings, db, renderer, email_provider(settings), sms_provider(settings)))

    request = SendRequest(workflow_id="t/zombie", sequence_id="t", step="0", channel="email", template="note",
                          category="marketing", context={"customer": {"id": "c", "email": "x@example.com",
                                                                 "consents": {"email": True}}})
    with ThreadPoolExecutor(1) as pool:
        stalled = pool.submit(sender(Stalling(TEST_TEMPLATES)).send_message, request)
        assert paused.wait(10)
        second = sender(Renderer(TEST_TEMPLATES)).send_message(request)
        resume.set()
        with pytest.raises(ApplicationError, match="another attempt has taken over"):
            stalled.result(10)
    assert second.status == "sent"
    assert sendgrid_posts(fake) == 1
    [row] = messages(db)
    assert (row.status, row.attempts) == ("sent", 1)


# -- a text at most once: Twilio's list lags, rewrites bodies, and attempts can overlap -------------


async def test_a_text_accepted_slower_than_the_client_timeout_is_found_not_resent(env, settings, db, fake,
                                                                                  twilio_clock):
    """Twilio answers after the client gave up (KEEPFLOW_PROVIDER_TIMEOUT, 2 s here) and lists the
    text 10 s after taking it: the retry must look after that, not 1 s after the timeout."""
    fake.accept_then_stall("twilio", seconds=3)
    fake.twilio_list_lag = 10
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, TEXT)).result()
    assert twilio_posts(fake) == 1 and len(fake.accepted("twilio")) == 1
    [sms] = messages(db)
    assert (sms.status, sms.provider_message_id) == ("sent", fake.accepted("twilio")[0]["sid"])
    assert result.steps_done[0].outcome == "sent"


async def test_a_text_the_list_shows_late_is_found_not_resent(env, settings, db, fake, twilio_clock):
    """The answer is lost and Twilio's list shows the text only 30 s later."""
    fake.accept_then_drop("twilio")
    fake.twilio_list_lag = 30
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, TEXT)).result()
    assert twilio_posts(fake) == 1 and len(fake.accepted("twilio")) == 1
    [sms] = messages(db)
    assert (sms.status, sms.provider_message_id) == ("sent", fake.accepted("twilio")[0]["sid"])


async def test_a_text_twilio_rewrote_is_found_not_resent(env, settings, db, fake, twilio_clock):
    """Smart Encoding and a Messaging Service's opt-out line change the body Twilio lists."""
    fake.twilio_rewrites(smart_encoding=True, footer="\n\nReply STOP to unsubscribe.")
    fake.accept_then_drop("twilio")
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, TEXT_WITH_QUOTES)).result()
    assert twilio_posts(fake) == 1 and len(fake.accepted("twilio")) == 1
    assert fake.accepted("twilio")[0]["body"].startswith('"Nok", your order\'s on its way - see you soon...')
    [sms] = messages(db)
    assert (sms.status, sms.provider_message_id) == ("sent", fake.accepted("twilio")[0]["sid"])


async def test_the_send_has_a_short_heartbeat_timeout(env, settings, db, fake):
    """A frozen or killed worker stops heartbeating, so Temporal retries its send within seconds
    (the retry still waits for the frozen attempt's lease)."""
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, TEXT)
        await handle.result()
    scheduled = [event.activity_task_scheduled_event_attributes async for event in handle.fetch_history_events()
                 if event.HasField("activity_task_scheduled_event_attributes")]
    assert timedelta(0) < scheduled[0].heartbeat_timeout.ToTimedelta() <= timedelta(seconds=10)


def text_request(workflow_id: str) -> SendRequest:
    return SendRequest(workflow_id=workflow_id, sequence_id="t", step="0", channel="sms", template="ping",
                       category="marketing", context={"customer": {"id": "c", "phone": "+66812345678",
                                                                    "consents": {"sms": True}}})


def attempt(number: int, started: datetime) -> ActivityEnvironment:
    """One attempt of send_message as Temporal runs it: its number and when the server started it."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="send_message", attempt=number, started_time=started,
                                   current_attempt_scheduled_time=started, heartbeat_timeout=timedelta(seconds=10))
    return env


def stalling_after_the_mark(paused: threading.Event, resume: threading.Event) -> type[MessageSender]:
    class Stalling(MessageSender):
        """An attempt that stalls (a frozen worker) right after marking its row `sending`."""

        def _mark_sending(self, *args, **kwargs):
            marked = super()._mark_sending(*args, **kwargs)
            paused.set()
            assert resume.wait(10)
            return marked
    return Stalling


def sender_deps(settings, db) -> SendDeps:
    return SendDeps(settings, db, Renderer(TEST_TEMPLATES), email_provider(settings), sms_provider(settings))


@contextmanager
def first_attempt_stalled(settings, db, request: SendRequest, started: datetime) -> Iterator[Future]:
    """Attempt 1 of `request`, frozen right after marking its row `sending`, for as long as the
    block runs; it goes on when the block ends. Yields its future."""
    paused, resume = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(attempt(1, started).run,
                            stalling_after_the_mark(paused, resume)(sender_deps(settings, db)).send_message, request)
        assert paused.wait(10)
        try:
            yield first
        finally:
            resume.set()


def test_a_retry_waits_while_a_stalled_attempt_holds_the_text(settings, db, fake):
    """Attempt 1 marked the row and froze before its request; Temporal, hearing no heartbeat, runs
    attempt 2. Twilio has nothing yet, but attempt 1 may still send: attempt 2 must wait for its
    lease (and Twilio's list) instead of sending."""
    request = text_request("t/stalled")
    started = datetime.now(timezone.utc)
    with first_attempt_stalled(settings, db, request, started) as first:
        with pytest.raises(ApplicationError) as waiting:
            attempt(2, started + timedelta(seconds=5)).run(MessageSender(sender_deps(settings, db)).send_message, request)
    assert first.result(10).status == "sent"
    assert waiting.value.type == "SendInFlight" and waiting.value.next_retry_delay > timedelta(0)
    assert twilio_posts(fake) == 1
    [row] = messages(db)
    assert (row.status, row.attempts) == ("sent", 1)


def test_an_attempt_stalled_past_its_lease_sends_nothing_once_another_took_over(settings, db, fake):
    """Attempt 1 froze after its mark for longer than its lease and Twilio's catch-up time; attempt 2
    looked, found nothing and sent. When attempt 1 wakes, the row is no longer its own."""
    request = text_request("t/zombie-text")
    started = datetime.now(timezone.utc)
    with first_attempt_stalled(settings, db, request, started) as first:
        second = attempt(2, started + timedelta(minutes=5)).run(MessageSender(sender_deps(settings, db)).send_message,
                                                                request)
    with pytest.raises(ApplicationError, match="another attempt has taken over"):
        first.result(10)
    assert second.status == "sent"
    assert twilio_posts(fake) == 1
    [row] = messages(db)
    assert (row.status, row.attempts, row.provider_message_id) == ("sent", 2, fake.accepted("twilio")[0]["sid"])


def test_a_send_heartbeats_while_the_provider_call_blocks(settings, db, fake):
    """Twilio takes 1.5 s to answer: Temporal hears from the attempt meanwhile."""
    beats: list[float] = []
    fake.on_accept = lambda api, record: time.sleep(1.5)
    try:
        env = attempt(1, datetime.now(timezone.utc))
        env.on_heartbeat = lambda *details: beats.append(time.monotonic())
        result = env.run(MessageSender(sender_deps(settings, db)).send_message, text_request("t/slow"))
    finally:
        fake.on_accept = None
    assert result.status == "sent"
    assert beats
    # One thread beats for every send of the process; none goes out for an attempt that returned.
    after = len(beats)
    time.sleep(1.5)
    assert len(beats) == after


def test_one_heartbeat_thread_beats_for_every_running_send():
    """Sends running at once share one thread, which beats each of them every interval."""
    from temporalio.testing import ActivityEnvironment

    from activities.builtin.heartbeats import Heartbeats

    heartbeats = Heartbeats(0.2)
    beats: dict[str, list[float]] = {"a": [], "b": []}
    beaters: set[int] = set()

    def attempt_named(name: str) -> None:
        with heartbeats.kept():
            time.sleep(1.0)

    envs = {}
    for name in beats:
        envs[name] = ActivityEnvironment()
        envs[name].on_heartbeat = lambda *details, name=name: (beats[name].append(time.monotonic()),
                                                               beaters.add(threading.get_ident()))
    threads = [threading.Thread(target=envs[name].run, args=(attempt_named, name)) for name in beats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(2 <= len(times) <= 6 for times in beats.values()), beats
    assert len(beaters) == 1 and threading.get_ident() not in beaters


def test_a_lookup_that_cannot_finish_marks_the_text_unknown(settings, db, fake, monkeypatch):
    """More messages to the number than the lookup may read: it cannot tell, so it does not resend."""
    monkeypatch.setattr("keepflow.sending.providers.twilio.LOOKUP_PAGE_SIZE", 10)
    monkeypatch.setattr("keepflow.sending.providers.twilio.LOOKUP_PAGES", 2)
    request = text_request("t/busy")
    started = datetime.now(timezone.utc)
    fake.accept_then_drop("twilio")
    with pytest.raises(ApplicationError):
        attempt(1, started).run(MessageSender(sender_deps(settings, db)).send_message, request)
    busy = TwilioSms(settings.twilio_account_sid, "test-token", settings.twilio_from, None, fake.url, 2.0)
    try:
        for i in range(25):
            busy.send_sms(dataclasses.replace(_outgoing(request), body=f"Flash sale {i}"))
    finally:
        busy.close()
    result = attempt(2, started + timedelta(minutes=5)).run(MessageSender(sender_deps(settings, db)).send_message,
                                                            request)
    assert result.status == "unknown" and "cannot tell" in result.reason
    assert twilio_posts(fake) == 26


def _outgoing(request: SendRequest):
    from keepflow.sending.providers import OutgoingSms
    return OutgoingSms(to=request.context["customer"]["phone"], body="", key="other")


def test_a_lost_answer_does_not_overwrite_what_the_event_webhook_settled(settings, db, fake):
    """SendGrid's `processed` event settles the row as `sent` while the attempt still waits for its
    answer; when that answer is then lost, the attempt must not write its "outcome unknown" over it."""
    from sqlalchemy import update
    from temporalio.exceptions import ApplicationError

    from activities.builtin.send import MessageSender, SendDeps
    from keepflow.language.rendering import Renderer
    from keepflow.runtime.payloads import SendRequest
    from keepflow.sending.providers import email_provider, sms_provider
    from keepflow.store import Message

    def settled_by_the_webhook(api, record):
        with db.session() as session:
            session.execute(update(Message).where(Message.key == record["keepflow_key"])
                            .values(status="sent", error=None, provider_message_id="sg-processed"))

    sender = MessageSender(sender_deps(settings, db))
    request = SendRequest(workflow_id="t/settled", sequence_id="t", step="0", channel="email", template="note",
                          category="marketing", context={"customer": {"id": "c", "email": "x@example.com",
                                                                 "consents": {"email": True}}})
    fake.accept_then_drop("sendgrid")
    fake.on_accept = settled_by_the_webhook
    try:
        with pytest.raises(ApplicationError):
            sender.send_message(request)
    finally:
        fake.on_accept = None
    [row] = messages(db)
    assert (row.status, row.error, row.provider_message_id) == ("sent", None, "sg-processed")
