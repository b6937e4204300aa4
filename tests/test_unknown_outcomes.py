"""Emails whose outcome is unknown: `keepflow messages unknown` lists them, `keepflow messages
resolve` settles each one (sent, resent once through the provider, or dismissed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.sending import suppressions
from keepflow.store import Customer, Message
from tests.engine import TEST_TEMPLATES, make_settings, running_worker
from tests.helpers import messages, snapshot, start

STARTED = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
ADDRESS = "nok.somchai@example.com"
LOST = "an earlier attempt stopped during the provider call; not resent (email is at-most-once)"
BODY = "<p>Hello Nok</p><p><a href=\"https://mail.shop.example/unsubscribe/abc\">unsubscribe</a></p>"

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
def settings(tmp_path, fake, db):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES).model_copy(update={"database_url": db.url})


@pytest.fixture
def cli(settings, monkeypatch):
    """The CLI as an operator runs it, with this test's settings (its store, the fake SendGrid)."""
    monkeypatch.setattr("keepflow.cli.get_settings", lambda: settings)

    def run(*args: str):
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})

    return run


def add(db, id: int, status: str, *, category: str = "marketing", error: str | None = LOST,
        customer: str = "c-1", created: datetime = STARTED) -> None:
    with db.session() as session:
        if session.get(Customer, customer) is None:
            session.add(Customer(id=customer, email=ADDRESS, consents={"email": True}, attributes={}))
            session.flush()
        session.add(Message(
            id=id, key=f"winback/o{id}:1", workflow_id=f"winback/o{id}", sequence_id="winback", step="1",
            channel="email", category=category, template="winback_offer", customer_id=customer, recipient=ADDRESS,
            locale="en", subject="We miss you, Nok", body=BODY, status=status, provider="sendgrid", attempts=1,
            error=error if status == "unknown" else None, created_at=created, sending_at=created + timedelta(seconds=3),
            sent_at=created if status == "sent" else None,
        ))


def row(db, id: int) -> Message:
    with db.session() as session:
        found = session.get(Message, id)
        assert found is not None
        return found


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│").split("│")]


def sendgrid_posts(fake) -> int:
    return sum(1 for r in fake.requests if r["api"] == "sendgrid" and r["method"] == "POST")


def test_the_list_shows_what_needs_a_decision_and_how_to_settle_it(db, cli):
    add(db, 1, "sent")
    add(db, 2, "unknown")
    add(db, 3, "unknown", created=STARTED + timedelta(minutes=5))
    result = cli("messages", "unknown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    listed = [line for line in lines if "winback_offer" in line]
    # Newest first, sent messages left out.
    assert [cells(line)[0] for line in listed] == ["3", "2"]
    assert all("winback" in line and "email" in line and "c-1" in line for line in listed)
    assert f"{STARTED + timedelta(minutes=5, seconds=3):%Y-%m-%d %H:%M:%S}" in listed[0]
    assert "earlier attempt stopped during the provider call" in listed[0]
    # The address as a marketer sees it on the dashboard, never whole.
    assert ADDRESS not in result.stdout and "n•••@e•••.com" in listed[0]
    assert "2 message(s) with an unknown outcome need a decision" in result.stdout
    for command in ("resolve ID --sent", "resolve ID --resend", "resolve ID --dismiss"):
        assert command in result.stdout


def test_the_list_says_when_there_is_nothing_to_decide(db, cli):
    add(db, 1, "sent")
    result = cli("messages", "unknown")
    assert result.exit_code == 0 and "nothing to decide" in result.stdout


def test_found_at_sendgrid_it_is_recorded_sent(db, cli):
    add(db, 2, "unknown")
    result = cli("messages", "resolve", "2", "--sent", "--provider-id", "14c5d75ce93dfd64b469")
    assert result.exit_code == 0, result.output
    settled = row(db, 2)
    assert (settled.status, settled.provider_message_id, settled.error) == ("sent", "14c5d75ce93dfd64b469", None)
    # It went when the attempt made the call: what attribution counts from.
    assert settled.sent_at.replace(tzinfo=timezone.utc) == STARTED + timedelta(seconds=3)
    assert "nothing to decide" in cli("messages", "unknown").stdout


def test_only_an_unknown_message_is_settled(db, cli, fake):
    add(db, 1, "sent")
    for how in ("--sent", "--resend", "--dismiss"):
        result = cli("messages", "resolve", "1", how)
        assert result.exit_code == 1 and "is sent, not unknown" in result.output
    assert cli("messages", "resolve", "99", "--sent").exit_code == 1
    assert row(db, 1).status == "sent" and sendgrid_posts(fake) == 0
    # One decision at a time.
    add(db, 2, "unknown")
    assert cli("messages", "resolve", "2").exit_code == 2
    assert cli("messages", "resolve", "2", "--sent", "--resend").exit_code == 2
    assert cli("messages", "resolve", "2", "--dismiss", "--provider-id", "x").exit_code == 2
    assert row(db, 2).status == "unknown"


def test_dismissed_it_is_recorded_failed_and_never_resent(db, cli, fake):
    add(db, 2, "unknown")
    assert cli("messages", "resolve", "2", "--dismiss").exit_code == 0
    dismissed = row(db, 2)
    assert dismissed.status == "failed" and "dismissed by an operator" in dismissed.error
    assert cli("messages", "resolve", "2", "--resend").exit_code == 1
    assert sendgrid_posts(fake) == 0


def test_resend_sends_the_stored_message_once_and_records_it(db, cli, fake):
    add(db, 2, "unknown")
    result = cli("messages", "resolve", "2", "--resend")
    assert result.exit_code == 0, result.output
    [mail] = fake.accepted("sendgrid")
    assert (mail["to"], mail["subject"], mail["html"]) == (ADDRESS, "We miss you, Nok", BODY)
    # The plain-text part and the one-click unsubscribe of a marketing email are made again.
    assert mail["text"].startswith("Hello Nok") and "/unsubscribe/" in mail["text"]
    headers = {h: v for h, v in mail["payload"]["headers"].items()}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # SendGrid's events about it come back to the same row.
    assert mail["custom_args"] == {"keepflow_key": "winback/o2:1", "keepflow_message_id": "2",
                                   "keepflow_customer_id": "c-1"}
    resent = row(db, 2)
    assert (resent.status, resent.provider_message_id, resent.attempts, resent.error) == \
        ("sent", mail["message_id"], 2, None)
    assert f"message 2: sent (provider message id {mail['message_id']})" in result.stdout
    # A second resend finds it settled and sends nothing.
    again = cli("messages", "resolve", "2", "--resend")
    assert again.exit_code == 1 and "is sent, not unknown" in again.output
    assert sendgrid_posts(fake) == 1


def test_a_resend_goes_in_its_groups_sendgrid_unsubscribe_group(db, cli, fake, settings, tmp_path):
    sequences = tmp_path / "grouped.yaml"
    sequences.write_text("brand: {name: Shop}\n"
                         "rules: {sendgrid_unsubscribe_groups: {lapsed: 4242}}\n"
                         "sequences:\n"
                         "  - {id: winback, category: marketing, group: lapsed, steps: [exit]}\n")
    settings.sequences_path = sequences
    settings.sendgrid_asm_group_id = 777
    add(db, 2, "unknown")
    assert cli("messages", "resolve", "2", "--resend").exit_code == 0
    [mail] = fake.accepted("sendgrid")
    assert mail["payload"]["asm"] == {"group_id": 4242}


def test_a_resend_reads_the_live_version_not_an_undeployed_edit(db, cli, fake, settings, tmp_path):
    from keepflow.runtime import deployments
    from keepflow.runtime.registry import load_catalog

    sequences = tmp_path / "grouped.yaml"
    live = ("brand: {name: Shop}\n"
            "rules: {sendgrid_unsubscribe_groups: {lapsed: 4242}}\n"
            "sequences:\n"
            "  - {id: winback, category: marketing, group: lapsed, steps: [exit]}\n")
    sequences.write_text(live)
    deployments.record(db, load_catalog(sequences), live, "keepflow deploy")
    sequences.write_text(live.replace("4242", "5151").replace("name: Shop", "name: Not Yet"))  # saved, not deployed
    settings.sequences_path = sequences
    add(db, 2, "unknown")
    assert cli("messages", "resolve", "2", "--resend").exit_code == 0
    [mail] = fake.accepted("sendgrid")
    assert mail["payload"]["asm"] == {"group_id": 4242}
    assert mail["payload"]["from"]["name"] == "Shop"


def test_no_resend_to_a_customer_who_opted_out_since(db, cli, fake):
    add(db, 2, "unknown")
    add(db, 3, "unknown", category="transactional", customer="c-2")
    with db.session() as session:
        suppressions.suppress(session, channel="email", address=ADDRESS, scope=suppressions.MARKETING,
                              reason="unsubscribe", source="unsubscribe_link", customer_id="c-1")
    result = cli("messages", "resolve", "2", "--resend")
    assert result.exit_code == 1 and "suppressed since: unsubscribe" in result.output
    assert row(db, 2).status == "unknown" and sendgrid_posts(fake) == 0
    # An unsubscribe from marketing does not stop a receipt.
    assert cli("messages", "resolve", "3", "--resend").exit_code == 0
    assert row(db, 3).status == "sent" and sendgrid_posts(fake) == 1


def test_no_resend_without_marketing_consent_any_more(db, cli, fake):
    add(db, 2, "unknown")
    with db.session() as session:
        session.get(Customer, "c-1").consents = {"email": False}
    result = cli("messages", "resolve", "2", "--resend")
    assert result.exit_code == 1 and "no longer consents" in result.output
    assert sendgrid_posts(fake) == 0


def test_a_resend_sendgrid_refuses_for_now_stays_unknown(db, cli, fake):
    add(db, 2, "unknown")
    fake.fail_next("sendgrid", 503)
    result = cli("messages", "resolve", "2", "--resend")
    assert result.exit_code == 1 and "not sent: try again later" in result.output
    assert row(db, 2).status == "unknown"
    assert cli("messages", "resolve", "2", "--resend").exit_code == 0
    assert row(db, 2).status == "sent" and len(fake.accepted("sendgrid")) == 1


def test_no_resend_through_another_provider_than_the_message_went_to(db, cli, fake, settings, monkeypatch):
    add(db, 2, "unknown")
    outbox = settings.model_copy(update={"email_provider": "outbox"})
    monkeypatch.setattr("keepflow.cli.get_settings", lambda: outbox)
    result = cli("messages", "resolve", "2", "--resend")
    assert result.exit_code == 1 and "went to sendgrid" in result.output
    assert row(db, 2).status == "unknown"


async def test_an_email_the_engine_lost_is_resent_as_it_was_first_sent(env, settings, db, fake, cli):
    """The row the engine leaves `unknown` holds enough to send the same email again."""
    fake.accept_then_drop("sendgrid")  # accepted, then the answer lost: the engine marks it unknown
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, EMAIL_THEN_SMS)).result()
    email = messages(db)[0]
    assert email.status == "unknown"
    listed = cli("messages", "unknown")
    [line] = [line for line in listed.stdout.splitlines() if " note " in line]
    assert cells(line)[:4] == [str(email.id), "t", "0", "email"], line

    assert cli("messages", "resolve", str(email.id), "--resend").exit_code == 0
    first, again = fake.accepted("sendgrid")
    for field in ("to", "from", "from_name", "subject", "html", "custom_args"):
        assert again[field] == first[field], field
    assert again["payload"]["categories"] == first["payload"]["categories"]
    assert set(again["payload"]["headers"]) == set(first["payload"]["headers"])
    # The text part is the same but for the unsubscribe link (a fresh token for the same address).
    assert again["text"].rsplit("/unsubscribe/", 1)[0] == first["text"].rsplit("/unsubscribe/", 1)[0]
    assert row(db, email.id).status == "sent"


def test_a_second_decision_waits_while_a_resend_is_in_its_provider_call(db, cli, fake, settings):
    """Two operators at once (or one in two terminals): the resend under way keeps the row
    `unknown`, so the list still shows it, but nothing else may touch it until its outcome is in."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from keepflow.sending import unknown_outcomes

    add(db, 2, "unknown")
    in_call, release = threading.Event(), threading.Event()

    def stall(api, record):
        in_call.set()
        release.wait(10)

    fake.on_accept = stall
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(unknown_outcomes.resend, db, settings, 2)
            assert in_call.wait(10)
            for how in ("--resend", "--sent", "--dismiss"):
                refused = cli("messages", "resolve", "2", how)
                assert refused.exit_code == 1 and "a resend is under way" in refused.output, how
            assert "resend under way since" in cli("messages", "unknown").stdout
            release.set()
            assert first.result(10).status == "sent"
    finally:
        fake.on_accept = None
        release.set()
    assert sendgrid_posts(fake) == 1 and row(db, 2).status == "sent"


def test_a_resend_whose_process_died_in_the_call_can_be_decided_again(db, cli, fake):
    """Its row stays `unknown` saying a resend was under way; once that call must have ended, the
    operator looks in SendGrid again and decides."""
    from keepflow.sending.unknown_outcomes import RESEND_BOUND

    add(db, 2, "unknown")
    died = datetime.now(timezone.utc) - RESEND_BOUND - timedelta(seconds=5)
    with db.session() as session:
        message = session.get(Message, 2)
        message.attempts, message.sending_at = 2, died
        message.error = f"resend under way since {died:%Y-%m-%d %H:%M:%S} UTC: check the provider before deciding"
    assert "resend under way since" in cli("messages", "unknown").stdout
    assert cli("messages", "resolve", "2", "--sent").exit_code == 0
    assert row(db, 2).status == "sent" and sendgrid_posts(fake) == 0


def test_a_text_the_lookup_could_not_tell_about_is_listed_and_settled_but_not_resent(db, cli, fake):
    """A text ends `unknown` when the retry's lookup at Twilio cannot tell; Twilio's logs can."""
    with db.session() as session:
        session.add(Customer(id="c-9", phone="+66812345678", consents={"sms": True}, attributes={}))
        session.flush()
        session.add(Message(id=5, key="fulfilment/o5:3", workflow_id="fulfilment/o5", sequence_id="fulfilment",
                            step="3", channel="sms", category="transactional", template="order_shipped",
                            customer_id="c-9", recipient="+66812345678", body="Your parcel is on its way.",
                            status="unknown", provider="twilio", attempts=2, created_at=STARTED,
                            sending_at=STARTED, error="an earlier attempt may have sent it and the lookup could not tell"))
    listed = cli("messages", "unknown")
    [line] = [line for line in listed.stdout.splitlines() if "order_shipped" in line]
    assert cells(line)[:4] == ["5", "fulfilment", "3", "sms"] and "+•••••••••78" in line
    assert "+66812345678" not in listed.stdout and "Twilio's message logs" in listed.stdout
    refused = cli("messages", "resolve", "5", "--resend")
    assert refused.exit_code == 1 and "only an email is resent" in refused.output
    assert cli("messages", "resolve", "5", "--sent", "--provider-id", "SM0123").exit_code == 0
    assert (row(db, 5).status, row(db, 5).provider_message_id) == ("sent", "SM0123")
    assert not [r for r in fake.requests if r["method"] == "POST"]
