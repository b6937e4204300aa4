"""Provider failures: retried when they may pass, recorded when they cannot, never sent twice."""

from __future__ import annotations

import pytest

from tests.engine import TEST_TEMPLATES, make_settings, running_worker
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


@pytest.fixture
def settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES)


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


async def test_sms_accepted_but_answer_lost_is_found_not_resent(env, settings, db, fake):
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

    sender = MessageSender(SendDeps(settings, db, Renderer(TEST_TEMPLATES), email_provider(settings), sms_provider(settings)))
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
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.exceptions import ApplicationError

    from activities.builtin.send import MessageSender, SendDeps
    from keepflow.language.rendering import Renderer
    from keepflow.runtime.payloads import SendRequest
    from keepflow.sending.providers import email_provider, sms_provider

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
