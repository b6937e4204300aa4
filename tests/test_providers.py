"""Providers against a local fake of SendGrid and Twilio, using the real SDKs."""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from keepflow.sending.providers import (
    Accepted,
    EmailProvider,
    OutgoingEmail,
    OutgoingSms,
    PermanentError,
    RetryableError,
    SmsProvider,
    email_provider,
    parse_retry_after,
    sms_provider,
)
from keepflow.sending.providers.outbox import OutboxEmail, OutboxSms
from keepflow.sending.providers.sendgrid import SendGridEmail
from keepflow.sending.providers.twilio import TwilioSms
from keepflow.settings import Settings
from tests.fakes.provider_server import FakeProviders, unused_url

TIMEOUT = 2.0
FROM_EMAIL = "Keepflow Tests <shop@example.com>"
FROM_NUMBER = "+15005550006"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # TWILIO_EDGE/REGION would make the SDK rewrite hosts; a proxy would swallow 127.0.0.1.
    for var in ("TWILIO_EDGE", "TWILIO_REGION", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def fake():
    with FakeProviders() as f:
        yield f


def make_sendgrid(url: str, timeout: float = TIMEOUT, api_key: str | None = None) -> SendGridEmail:
    return SendGridEmail(api_key or FakeProviders().sendgrid_api_key, url, FROM_EMAIL, timeout)


@pytest.fixture
def sendgrid(fake: FakeProviders) -> SendGridEmail:
    return SendGridEmail(fake.sendgrid_api_key, fake.url, FROM_EMAIL, TIMEOUT)


def make_twilio(fake: FakeProviders, url: str | None = None, timeout: float = TIMEOUT, **kw) -> TwilioSms:
    args = {"from_": FROM_NUMBER, "messaging_service_sid": None} | kw
    return TwilioSms(fake.twilio_account_sid, fake.twilio_auth_token, base_url=url or fake.url, timeout=timeout, **args)


@pytest.fixture
def twilio(fake: FakeProviders):
    sms = make_twilio(fake)
    yield sms
    sms.close()


def email(**kw) -> OutgoingEmail:
    fields = {
        "to": "ada@example.org",
        "subject": "Your order shipped",
        "html": "<p>It is <b>on its way</b>.</p>",
        "text": "It is on its way.",
        "from_": "",
        "key": "wf-123/step-2",
    } | kw
    return OutgoingEmail(**fields)


def sms(**kw) -> OutgoingSms:
    fields = {"to": "+15558675310", "body": "Your order shipped. Reply STOP to opt out.", "key": "wf-123/step-3"} | kw
    return OutgoingSms(**fields)


# -- SendGrid ---------------------------------------------------------------------------------


def test_sendgrid_accepted(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    result = sendgrid.send_email(email())

    [rec] = fake.accepted("sendgrid")
    assert result == Accepted("sendgrid", rec["message_id"])
    assert len(rec["message_id"]) == 22
    assert rec["to"] == "ada@example.org"
    assert (rec["from"], rec["from_name"]) == ("shop@example.com", "Keepflow Tests")
    assert rec["subject"] == "Your order shipped"
    assert rec["html"] == "<p>It is <b>on its way</b>.</p>"
    assert rec["text"] == "It is on its way."
    assert rec["keepflow_key"] == "wf-123/step-2"
    [req] = fake.requests
    assert (req["method"], req["path"]) == ("POST", "/v3/mail/send")
    assert req["headers"]["Authorization"] == f"Bearer {fake.sendgrid_api_key}"
    # text/plain must come before text/html in SendGrid's content array
    assert [c["type"] for c in req["body"]["content"]] == ["text/plain", "text/html"]


def test_sendgrid_categories_unique_and_custom_args_per_personalization(fake: FakeProviders,
                                                                        sendgrid: SendGridEmail) -> None:
    # SendGrid's spec wants unique categories, and types a top-level custom_args as a string: a
    # sequence and a template of the same name must not repeat, and the args go in personalizations.
    sendgrid.send_email(email(categories=("review_request", "review_request", "step-2"),
                              custom_args={"keepflow_message_id": "7"}))
    [rec] = fake.accepted("sendgrid")
    body = rec["payload"]
    assert body["categories"] == ["review_request", "step-2"]
    assert "custom_args" not in body
    assert body["personalizations"][0]["custom_args"] == {"keepflow_key": "wf-123/step-2", "keepflow_message_id": "7"}
    assert rec["keepflow_key"] == "wf-123/step-2"


def test_sendgrid_unsubscribe_group_goes_as_asm_group_id(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    sendgrid.send_email(email(asm_group_id=4242))
    sendgrid.send_email(email(key="wf-123/step-3"))
    with_group, without = (rec["payload"] for rec in fake.accepted("sendgrid"))
    assert with_group["asm"] == {"group_id": 4242}
    assert "asm" not in without


@pytest.mark.parametrize(("change", "field"), [
    ({"categories": ["review_request", "review_request"]}, "categories"),
    ({"custom_args": {"keepflow_key": "k"}}, "custom_args"),  # an object: the spec says string
    ({"asm": {"group_id": "42"}}, "asm.group_id"),
    ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
])
def test_the_fake_sendgrid_refuses_a_body_its_published_spec_refuses(fake: FakeProviders, change: dict,
                                                                     field: str) -> None:
    import httpx

    valid = {"personalizations": [{"to": [{"email": "ada@example.org"}], "custom_args": {"keepflow_key": "k"}}],
             "from": {"email": "shop@example.com"}, "subject": "Hi",
             "content": [{"type": "text/plain", "value": "Hi"}], "categories": ["a", "b"], "asm": {"group_id": 42}}
    auth = {"Authorization": f"Bearer {fake.sendgrid_api_key}"}
    assert httpx.post(f"{fake.url}/v3/mail/send", json=valid, headers=auth).status_code == 202
    answer = httpx.post(f"{fake.url}/v3/mail/send", json=valid | change, headers=auth)
    assert answer.status_code == 400
    assert field in [e["field"] for e in answer.json()["errors"]]
    assert len(fake.accepted("sendgrid")) == 1


def test_a_request_whose_body_never_arrived_whole_is_not_a_request_at_the_fake(fake: FakeProviders) -> None:
    """A worker killed while its request is on its way leaves the fake half a body: no provider
    would act on that, so tests/faults must not count it as a send (it once did, as key '?')."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(fake.url)
    body = json.dumps({"personalizations": [{"to": [{"email": "ada@example.org"}]}]}).encode()
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(b"POST /v3/mail/send HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20])
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1024) == b""  # no answer: the connection just ends
    assert fake.requests == []


def test_sendgrid_message_from_overrides_default(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    sendgrid.send_email(email(from_="Other <other@example.net>", text=""))
    [rec] = fake.accepted("sendgrid")
    assert (rec["from"], rec["from_name"]) == ("other@example.net", "Other")
    assert rec["text"] is None and rec["html"] == "<p>It is <b>on its way</b>.</p>"


def test_sendgrid_429_retry_after_seconds(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    fake.fail_next("sendgrid", 429, retry_after="7")
    with pytest.raises(RetryableError) as info:
        sendgrid.send_email(email())
    err = info.value
    assert (err.provider, err.status, err.retry_after, err.sent) == ("sendgrid", 429, 7.0, False)
    assert fake.accepted("sendgrid") == []
    # only one failure was scripted: the retry goes through
    assert sendgrid.send_email(email()).provider_message_id == fake.accepted("sendgrid")[0]["message_id"]


def test_sendgrid_retry_after_http_date(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    fake.fail_next("sendgrid", 503, retry_after=format_datetime(when, usegmt=True))
    with pytest.raises(RetryableError) as info:
        sendgrid.send_email(email())
    assert info.value.status == 503
    assert info.value.sent is False
    assert 25 <= info.value.retry_after <= 30


def test_sendgrid_500_is_retryable_not_sent(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    fake.fail_next("sendgrid", 500)
    with pytest.raises(RetryableError) as info:
        sendgrid.send_email(email())
    assert (info.value.status, info.value.sent, info.value.retry_after) == (500, False, None)
    assert info.value.detail == "internal server error"


def test_sendgrid_invalid_address_is_permanent(fake: FakeProviders, sendgrid: SendGridEmail) -> None:
    with pytest.raises(PermanentError) as info:
        sendgrid.send_email(email(to="not-an-address"))
    err = info.value
    assert not isinstance(err, RetryableError)
    assert err.status == 400
    assert err.detail == "personalizations.0.to.0.email: Does not contain a valid address."
    assert fake.accepted("sendgrid") == []


def test_sendgrid_bad_key_is_retryable(fake: FakeProviders) -> None:
    # 401/403: fixing the key should let the message go out, so it is retried, not dropped.
    provider = SendGridEmail("SG.wrong", fake.url, FROM_EMAIL, TIMEOUT)
    with pytest.raises(RetryableError) as info:
        provider.send_email(email())
    assert (info.value.status, info.value.sent) == (401, False)
    assert "authorization grant is invalid" in info.value.detail


# -- Twilio -----------------------------------------------------------------------------------


def test_twilio_accepted(fake: FakeProviders, twilio: TwilioSms) -> None:
    result = twilio.send_sms(sms())

    [rec] = fake.accepted("twilio")
    assert result == Accepted("twilio", rec["sid"])
    assert re.fullmatch(r"SM[0-9a-f]{32}", rec["sid"])
    assert (rec["to"], rec["from"], rec["body"]) == ("+15558675310", FROM_NUMBER, "Your order shipped. Reply STOP to opt out.")
    [req] = fake.requests
    assert (req["method"], req["path"]) == ("POST", f"/2010-04-01/Accounts/{fake.twilio_account_sid}/Messages.json")
    assert req["body"] == {"To": "+15558675310", "From": FROM_NUMBER, "Body": "Your order shipped. Reply STOP to opt out."}


def test_twilio_messaging_service(fake: FakeProviders) -> None:
    provider = make_twilio(fake, from_=None, messaging_service_sid="MG" + "a" * 32)
    try:
        result = provider.send_sms(sms())
    finally:
        provider.close()
    [rec] = fake.accepted("twilio")
    assert result.provider_message_id == rec["sid"]
    assert fake.requests[0]["body"] == {"To": "+15558675310", "MessagingServiceSid": "MG" + "a" * 32, "Body": sms().body}


@pytest.mark.parametrize(("change", "field"), [
    ({"SmartEncoded": "yes"}, "SmartEncoded"),  # a boolean: true or false
    ({"ValidityPeriod": "1h"}, "ValidityPeriod"),  # an integer (seconds)
    ({"StatusCallback": "http://keep_flow.example/webhooks/twilio/status"}, "StatusCallback"),
    ({"MessagingServiceSid": "MG123"}, "MessagingServiceSid"),
    ({"StatusCallBack": "https://keepflow.example/webhooks/twilio/status"}, "request"),  # misspelt
])
def test_the_fake_twilio_refuses_a_create_its_published_spec_refuses(fake: FakeProviders, change: dict,
                                                                      field: str) -> None:
    import httpx

    url = f"{fake.url}/2010-04-01/Accounts/{fake.twilio_account_sid}/Messages.json"
    auth = (fake.twilio_account_sid, fake.twilio_auth_token)
    valid = {"To": "+15558675310", "From": FROM_NUMBER, "Body": "Hi", "SmartEncoded": "false",
             "StatusCallback": "https://keepflow.example/webhooks/twilio/status"}
    assert httpx.post(url, data=valid, auth=auth).status_code == 201
    answer = httpx.post(url, data=valid | change, auth=auth)
    assert answer.status_code == 400
    assert answer.json()["message"].split("Invalid parameters: ", 1)[1].startswith(f"{field}: ")
    assert len(fake.accepted("twilio")) == 1


@pytest.mark.parametrize("change", [{"PageSize": "0"}, {"Page": "first"}, {"DateSnet>": "2026-01-01"},
                                    {"To": "5558675310"}])
def test_the_fake_twilio_refuses_a_list_its_published_spec_refuses(fake: FakeProviders, change: dict) -> None:
    import httpx

    url = f"{fake.url}/2010-04-01/Accounts/{fake.twilio_account_sid}/Messages.json"
    auth = (fake.twilio_account_sid, fake.twilio_auth_token)
    valid = {"To": "+15558675310", "From": FROM_NUMBER, "DateSent>": "2026-01-01T00:00:00Z", "PageSize": "100"}
    assert httpx.get(url, params=valid, auth=auth).status_code == 200
    answer = httpx.get(url, params=valid | change, auth=auth)
    assert (answer.status_code, answer.json()["code"]) == (400, 20001)


def test_a_send_that_breaks_twilios_spec_fails_through_the_sdk(fake: FakeProviders, twilio: TwilioSms) -> None:
    with pytest.raises(PermanentError) as info:
        twilio.send_sms(sms(status_callback="https://keep_flow.example/webhooks/twilio/status"))
    assert (info.value.status, info.value.code) == (400, "20001")
    assert fake.accepted("twilio") == []
    twilio.send_sms(sms(status_callback="https://keepflow.example/webhooks/twilio/status"))
    assert len(fake.accepted("twilio")) == 1


def test_twilio_unsubscribed_is_permanent(fake: FakeProviders, twilio: TwilioSms) -> None:
    fake.fail_next("twilio", 400, twilio_code=21610)
    with pytest.raises(PermanentError) as info:
        twilio.send_sms(sms())
    assert (info.value.provider, info.value.status, info.value.code) == ("twilio", 400, "21610")
    assert fake.accepted("twilio") == []


def test_twilio_invalid_number_is_permanent(fake: FakeProviders, twilio: TwilioSms) -> None:
    with pytest.raises(PermanentError) as info:
        twilio.send_sms(sms(to="5558675310"))
    assert (info.value.status, info.value.code) == (400, "21211")
    assert "is not a valid phone number" in info.value.detail


def test_twilio_429_is_retryable(fake: FakeProviders, twilio: TwilioSms) -> None:
    fake.fail_next("twilio", 429, retry_after="3")
    with pytest.raises(RetryableError) as info:
        twilio.send_sms(sms())
    err = info.value
    assert (err.status, err.code, err.retry_after, err.sent) == (429, "20429", 3.0, False)


def test_twilio_5xx_is_retryable(fake: FakeProviders, twilio: TwilioSms) -> None:
    fake.fail_next("twilio", 503, times=2)
    for _ in range(2):
        with pytest.raises(RetryableError) as info:
            twilio.send_sms(sms())
        assert (info.value.status, info.value.sent, info.value.retry_after) == (503, False, None)
    assert twilio.send_sms(sms()).provider_message_id == fake.accepted("twilio")[0]["sid"]


def test_twilio_bad_token_is_retryable(fake: FakeProviders) -> None:
    provider = TwilioSms(fake.twilio_account_sid, "wrong", FROM_NUMBER, None, fake.url, TIMEOUT)
    try:
        with pytest.raises(RetryableError) as info:
            provider.send_sms(sms())
    finally:
        provider.close()
    assert (info.value.status, info.value.code, info.value.sent) == (401, "20003", False)


# -- transport failures -----------------------------------------------------------------------


def test_connection_refused_is_not_sent(fake: FakeProviders) -> None:
    url = unused_url()
    with pytest.raises(RetryableError) as info:
        make_sendgrid(url).send_email(email())
    assert (info.value.provider, info.value.sent, info.value.status) == ("sendgrid", False, None)

    provider = make_twilio(fake, url=url)
    try:
        with pytest.raises(RetryableError) as info:
            provider.send_sms(sms())
    finally:
        provider.close()
    assert (info.value.provider, info.value.sent, info.value.status) == ("twilio", False, None)


def test_accept_then_drop_is_unknown(fake: FakeProviders, sendgrid: SendGridEmail, twilio: TwilioSms) -> None:
    fake.accept_then_drop("sendgrid")
    fake.accept_then_drop("twilio")
    with pytest.raises(RetryableError) as info:
        sendgrid.send_email(email())
    assert (info.value.provider, info.value.sent) == ("sendgrid", None)
    with pytest.raises(RetryableError) as info:
        twilio.send_sms(sms())
    assert (info.value.provider, info.value.sent) == ("twilio", None)
    # the fake did accept both
    assert len(fake.accepted("sendgrid")) == 1
    assert len(fake.accepted("twilio")) == 1


def test_read_timeout_is_unknown(fake: FakeProviders) -> None:
    fake.accept_then_stall("sendgrid", seconds=10)
    fake.accept_then_stall("twilio", seconds=10)
    provider = make_twilio(fake, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(RetryableError) as info:
            make_sendgrid(fake.url, timeout=0.3).send_email(email())
        assert info.value.sent is None
        with pytest.raises(RetryableError) as info:
            provider.send_sms(sms())
        assert info.value.sent is None
    finally:
        provider.close()
    assert time.monotonic() - started < 3  # the timeouts were applied


# -- Twilio find_sent -------------------------------------------------------------------------


def test_find_sent_after_lost_response(fake: FakeProviders, twilio: TwilioSms) -> None:
    since = datetime.now(timezone.utc)
    fake.accept_then_drop("twilio")
    with pytest.raises(RetryableError):
        twilio.send_sms(sms())
    [rec] = fake.accepted("twilio")

    assert twilio.find_sent(sms(), since) == Accepted("twilio", rec["sid"])
    lookup = [r for r in fake.requests if r["method"] == "GET"]
    assert lookup[0]["query"]["To"] == "+15558675310"
    assert "DateSent>" in lookup[0]["query"]

    assert twilio.find_sent(sms(body="Something else"), since) is None
    assert twilio.find_sent(sms(body="Your order shipped."), since) is None  # a prefix is not a match
    assert twilio.find_sent(sms(to="+15550001111"), since) is None
    # created before the window (since - 60 s skew allowance): not ours
    assert twilio.find_sent(sms(), since + timedelta(minutes=5)) is None


def test_find_sent_finds_queued_message() -> None:
    # Still queued at Twilio: date_sent is null, so the DateSent filter misses it; the second
    # lookup (To only) must find it.
    with FakeProviders(twilio_sent_on_accept=False) as fake:
        provider = make_twilio(fake)
        try:
            since = datetime.now(timezone.utc)
            sid = provider.send_sms(sms()).provider_message_id
            assert provider.find_sent(sms(), since) == Accepted("twilio", sid)
        finally:
            provider.close()
        gets = [r["query"] for r in fake.requests if r["method"] == "GET"]
        assert len(gets) == 2
        assert "DateSent>" in gets[0] and "DateSent>" not in gets[1]


def test_fake_list_pages_through_base_url(fake: FakeProviders, twilio: TwilioSms) -> None:
    # next_page_uri is resolved against api.base_url, so pagination stays on the fake.
    sids = [twilio.send_sms(sms(body=f"message {i}")).provider_message_id for i in range(5)]
    listed = twilio._client.messages.list(to="+15558675310", page_size=2)
    assert [m.sid for m in listed] == sids[::-1]
    assert len([r for r in fake.requests if r["method"] == "GET"]) == 3


def test_find_sent_pages_past_the_newest_50(fake: FakeProviders, twilio: TwilioSms) -> None:
    # A busy number: 60 texts to it after ours. Ours is still in the window, so it must be found.
    since = datetime.now(timezone.utc)
    ours = twilio.send_sms(sms()).provider_message_id
    for i in range(60):
        twilio.send_sms(sms(body=f"Flash sale {i}"))
    assert twilio.find_sent(sms(), since) == Accepted("twilio", ours)


def test_find_sent_pages_past_50_queued_messages() -> None:
    # Not sent yet (DateSent null): only the second lookup, without a DateSent filter, sees them.
    with FakeProviders(twilio_sent_on_accept=False) as fake:
        provider = make_twilio(fake)
        try:
            since = datetime.now(timezone.utc)
            ours = provider.send_sms(sms()).provider_message_id
            for i in range(60):
                provider.send_sms(sms(body=f"Flash sale {i}"))
            assert provider.find_sent(sms(), since) == Accepted("twilio", ours)
        finally:
            provider.close()


def test_find_sent_gives_up_past_its_page_budget(fake: FakeProviders, twilio: TwilioSms,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Cannot read everything: say so, rather than answer "not there" and have the caller resend.
    monkeypatch.setattr("keepflow.sending.providers.twilio.LOOKUP_PAGE_SIZE", 10)
    monkeypatch.setattr("keepflow.sending.providers.twilio.LOOKUP_PAGES", 2)
    since = datetime.now(timezone.utc)
    for i in range(25):
        twilio.send_sms(sms(body=f"Flash sale {i}"))
    with pytest.raises(PermanentError, match="more than 20 messages"):
        twilio.find_sent(sms(), since)


def test_find_sent_counts_only_our_sender(fake: FakeProviders, twilio: TwilioSms) -> None:
    # The same text to the same number from another of the account's senders is not ours.
    since = datetime.now(timezone.utc)
    other = make_twilio(fake, from_="+15005550007")
    service = "MG" + "a" * 32
    by_service = make_twilio(fake, from_=None, messaging_service_sid=service)
    other_service = make_twilio(fake, from_=None, messaging_service_sid="MG" + "b" * 32)
    try:
        other.send_sms(sms())
        other_service.send_sms(sms())
        assert twilio.find_sent(sms(), since) is None
        assert by_service.find_sent(sms(), since) is None
        sid = by_service.send_sms(sms()).provider_message_id
        assert by_service.find_sent(sms(), since) == Accepted("twilio", sid)
    finally:
        for provider in (other, by_service, other_service):
            provider.close()
    first_lookup = next(r for r in fake.requests if r["method"] == "GET")
    assert first_lookup["query"]["From"] == FROM_NUMBER


def test_find_sent_matches_a_body_twilio_rewrote(fake: FakeProviders, twilio: TwilioSms) -> None:
    # Smart Encoding swaps Unicode punctuation for GSM-7, and a Messaging Service may append an
    # opt-out line: the stored body is no longer the one sent, yet it is ours.
    fake.twilio_rewrites(smart_encoding=True, footer="\n\nReply STOP to unsubscribe.")
    since = datetime.now(timezone.utc)
    body = "\u201cNok\u201d, your order\u2019s on its way \u2014 see you soon\u2026"
    sid = twilio.send_sms(sms(body=body)).provider_message_id
    assert fake.accepted("twilio")[0]["body"] == "\"Nok\", your order's on its way - see you soon...\n\nReply STOP to unsubscribe."
    assert twilio.find_sent(sms(body=body), since) == Accepted("twilio", sid)


def test_find_sent_does_not_take_a_longer_message_for_ours(fake: FakeProviders, twilio: TwilioSms) -> None:
    # Our text followed by more that is not an opt-out line is another message (another step's):
    # counting it as ours would drop this one.
    since = datetime.now(timezone.utc)
    twilio.send_sms(sms(body="Your order shipped.\nTrack it at https://shop.example/t/1"))
    twilio.send_sms(sms(body="Your order shipped.\n\nReply YES for 20% off your next order."))
    twilio.send_sms(sms(body="Your order shipped. Reply STOP to opt out."))  # not on a line of its own
    assert twilio.find_sent(sms(body="Your order shipped."), since) is None


def test_find_sent_lookup_failure_is_unknown(fake: FakeProviders, twilio: TwilioSms) -> None:
    fake.fail_next("twilio", 500)
    with pytest.raises(RetryableError) as info:
        twilio.find_sent(sms(), datetime.now(timezone.utc))
    assert (info.value.status, info.value.sent) == (500, None)


# -- outbox -----------------------------------------------------------------------------------


def test_outbox_writes_json_lines_and_finds_by_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "var" / "dev"
    mail, text = OutboxEmail(directory), OutboxSms(directory)
    assert isinstance(mail, EmailProvider) and isinstance(text, SmsProvider)
    with caplog.at_level(logging.INFO, logger="keepflow.outbox"):
        a = mail.send_email(email())
        b = text.send_sms(sms())
    assert a.provider == b.provider == "outbox"
    assert re.fullmatch(r"outbox-[0-9a-f]{32}", a.provider_message_id)
    assert a.provider_message_id != b.provider_message_id

    lines = (directory / "outbox.jsonl").read_text(encoding="utf-8").splitlines()
    first, second = (json.loads(line) for line in lines)
    assert (first["channel"], first["to"], first["subject"], first["key"]) == ("email", "ada@example.org", "Your order shipped", "wf-123/step-2")
    assert first["provider_message_id"] == a.provider_message_id
    assert (second["channel"], second["to"], second["body"], second["key"]) == ("sms", "+15558675310", sms().body, "wf-123/step-3")
    assert [r.name for r in caplog.records] == ["keepflow.outbox", "keepflow.outbox"]

    assert text.find_sent(sms(), datetime.now(timezone.utc)) == b
    assert OutboxSms(directory).find_sent(sms(), datetime.now(timezone.utc)) == b  # from the file, not memory
    assert text.find_sent(sms(key="wf-999/step-1"), datetime.now(timezone.utc)) is None


# -- selection --------------------------------------------------------------------------------


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(_env_file=None, KEEPFLOW_DATA_DIR=str(tmp_path), **env)


@pytest.fixture
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "KEEPFLOW_EMAIL_PROVIDER", "KEEPFLOW_SMS_PROVIDER", "SENDGRID_API_KEY", "SENDGRID_HOST", "KEEPFLOW_EMAIL_FROM",
        "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "TWILIO_MESSAGING_SERVICE_SID", "TWILIO_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)


def test_selection_sendgrid_without_key_raises(tmp_path: Path, no_provider_env: None) -> None:
    with pytest.raises(ValueError, match="SENDGRID_API_KEY"):
        email_provider(settings(tmp_path, KEEPFLOW_EMAIL_PROVIDER="sendgrid"))


def test_selection_twilio_without_sender_raises(tmp_path: Path, no_provider_env: None) -> None:
    s = settings(tmp_path, TWILIO_ACCOUNT_SID="AC" + "1" * 32, TWILIO_AUTH_TOKEN="token")
    with pytest.raises(ValueError, match="TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"):
        sms_provider(s)
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN"):
        sms_provider(settings(tmp_path, KEEPFLOW_SMS_PROVIDER="twilio", TWILIO_FROM_NUMBER=FROM_NUMBER))


def test_selection_defaults_to_outbox(tmp_path: Path, no_provider_env: None) -> None:
    s = settings(tmp_path)
    mail, text = email_provider(s), sms_provider(s)
    assert type(mail) is OutboxEmail and type(text) is OutboxSms
    assert mail.path == text.path == tmp_path / "outbox.jsonl"


def test_selection_real_providers_send(fake: FakeProviders, tmp_path: Path, no_provider_env: None) -> None:
    s = settings(
        tmp_path,
        SENDGRID_API_KEY=fake.sendgrid_api_key,
        SENDGRID_HOST=fake.url,
        TWILIO_ACCOUNT_SID=fake.twilio_account_sid,
        TWILIO_AUTH_TOKEN=fake.twilio_auth_token,
        TWILIO_FROM_NUMBER=FROM_NUMBER,
        TWILIO_BASE_URL=fake.url + "/",
        KEEPFLOW_PROVIDER_TIMEOUT="2",
    )
    mail, text = email_provider(s), sms_provider(s)
    assert isinstance(mail, SendGridEmail) and isinstance(text, TwilioSms)
    try:
        assert mail.send_email(email()).provider_message_id == fake.accepted("sendgrid")[0]["message_id"]
        assert text.send_sms(sms()).provider_message_id == fake.accepted("twilio")[0]["sid"]
    finally:
        text.close()
    assert fake.accepted("sendgrid")[0]["from"] == "shop@example.com"  # settings.email_from default


# -- errors -----------------------------------------------------------------------------------

NOW = datetime(2025, 11, 23, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Sun, 23 Nov 2025 12:00:30 GMT", 30.0),
        ("Sunday, 23-Nov-25 12:01:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Sun, 23 Nov 2025 11:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_errors_pickle() -> None:
    err = RetryableError("twilio", "busy", status=429, code="20429", retry_after=3.0, sent=None)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RetryableError
    assert (copy.provider, copy.detail, copy.status, copy.code, copy.retry_after, copy.sent) == ("twilio", "busy", 429, "20429", 3.0, None)
    assert str(copy) == "twilio: busy status=429 code=20429"


# -- personal data in logs and files ------------------------------------------------------------


def test_provider_sdks_log_no_recipient_even_at_debug(fake: FakeProviders, sendgrid: SendGridEmail, twilio: TwilioSms,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    twilio.send_sms(sms(to="+15558675310"))
    twilio.find_sent(sms(to="+15558675310"), datetime.now(timezone.utc) - timedelta(minutes=5))
    sendgrid.send_email(email(to="ada@example.org", subject="Ada's parcel"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "5558675310" not in logged and "%2B1555" not in logged
    assert "ada@example.org" not in logged and "Ada's parcel" not in logged


def test_the_outbox_file_is_for_this_user_only(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    OutboxSms(folder).send_sms(sms())
    assert (folder / "outbox.jsonl").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
