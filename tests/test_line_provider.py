"""The LINE provider with the real SDK (line-bot-sdk v3) against the fake LINE Messaging API, which
checks every push against LINE's published OpenAPI document (tests/contracts/)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keepflow.sending.providers.base import Accepted, PermanentError, RetryableError
from keepflow.sending.providers.line import LineFlex, LineProvider, LineText, OutgoingLine, retry_key
from keepflow.settings import Settings
from tests.fakes.provider_server import FAKE_LINE_CHANNEL_ACCESS_TOKEN, LINE_PUSH, FakeProviders, unused_url

TIMEOUT = 2.0
USER = "U" + "4af4980629" * 3 + "12"
BUBBLE = {
    "type": "bubble",
    "body": {"type": "box", "layout": "vertical", "contents": [
        {"type": "text", "text": "Your order has shipped", "weight": "bold"},
        {"type": "button", "action": {"type": "uri", "label": "Track it", "uri": "https://shop.example/track/1"}},
    ]},
}


def provider(url: str, timeout: float = TIMEOUT) -> LineProvider:
    return LineProvider(FAKE_LINE_CHANNEL_ACCESS_TOKEN, url, timeout)


@pytest.fixture
def line(fake: FakeProviders) -> Iterator[LineProvider]:
    sender = provider(fake.url)
    yield sender
    sender.close()


def text(key: str = "run-1/step-2", body: str = "Hello from the shop") -> OutgoingLine:
    return OutgoingLine(to=USER, message=LineText(body), key=key)


def test_a_text_push_is_accepted_and_its_request_id_kept(fake: FakeProviders, line: LineProvider) -> None:
    accepted = line.send_line(text())
    [pushed] = fake.accepted("line")
    assert accepted == Accepted("line", pushed["request_id"])
    assert pushed["to"] == USER and pushed["messages"] == [{"type": "text", "text": "Hello from the shop"}]
    assert pushed["retry_key"] == retry_key("run-1/step-2")
    assert "quoteToken" in pushed["sent_messages"][0]


def test_a_flex_push_passes_the_contract(fake: FakeProviders, line: LineProvider) -> None:
    line.send_line(OutgoingLine(to=USER, message=LineFlex("Your order has shipped", BUBBLE), key="run-1/step-3"))
    [pushed] = fake.accepted("line")
    assert pushed["messages"] == [{"type": "flex", "altText": "Your order has shipped", "contents": BUBBLE}]


def test_the_retry_key_is_a_uuid_fixed_by_the_message_key() -> None:
    key = retry_key("run-1/step-2")
    assert uuid.UUID(key).version == 5 and str(uuid.UUID(key)) == key
    assert retry_key("run-1/step-2") == key
    assert retry_key("run-1/step-3") != key and retry_key("run-2/step-2") != key


def test_a_lost_answer_then_a_retry_delivers_once(fake: FakeProviders, line: LineProvider) -> None:
    fake.accept_then_stall("line", seconds=TIMEOUT * 3)
    with pytest.raises(RetryableError) as lost:
        line.send_line(text())
    assert lost.value.sent is None
    [first] = fake.accepted("line")

    again = line.send_line(text())  # the next attempt of the same step

    assert again == Accepted("line", first["request_id"])  # the 409's x-line-accepted-request-id
    assert fake.line_deliveries() == {retry_key("run-1/step-2"): 1}
    assert [r["path"] for r in fake.requests] == [LINE_PUSH, LINE_PUSH]


def test_a_dropped_connection_is_an_unknown_outcome(fake: FakeProviders, line: LineProvider) -> None:
    fake.accept_then_drop("line")
    with pytest.raises(RetryableError) as lost:
        line.send_line(text())
    assert lost.value.sent is None
    assert line.send_line(text()).provider_message_id == fake.accepted("line")[0]["request_id"]
    assert sum(fake.line_deliveries().values()) == 1


def test_two_steps_are_two_pushes(fake: FakeProviders, line: LineProvider) -> None:
    line.send_line(text("run-1/step-2"))
    line.send_line(text("run-1/step-3"))
    assert fake.line_deliveries() == {retry_key("run-1/step-2"): 1, retry_key("run-1/step-3"): 1}


def test_429_is_retryable_with_its_retry_after(fake: FakeProviders, line: LineProvider) -> None:
    fake.fail_next("line", 429, retry_after="30")
    with pytest.raises(RetryableError) as limited:
        line.send_line(text())
    assert (limited.value.status, limited.value.retry_after, limited.value.sent) == (429, 30.0, False)
    assert fake.accepted("line") == []


def test_5xx_is_retryable_and_not_sent(fake: FakeProviders, line: LineProvider) -> None:
    fake.fail_next("line", 500)
    with pytest.raises(RetryableError) as failed:
        line.send_line(text())
    assert (failed.value.status, failed.value.sent) == (500, False)


def test_400_is_permanent_with_lines_message(fake: FakeProviders, line: LineProvider) -> None:
    fake.fail_next("line", 400, body={"message": "Failed to send messages",
                                      "details": [{"message": f"invalid user {USER}", "property": "to"}]})
    with pytest.raises(PermanentError) as refused:
        line.send_line(text())
    assert refused.value.status == 400
    assert str(refused.value) == "line: Failed to send messages; to: invalid user <user id> status=400"


def test_a_bubble_the_sdk_refuses_is_permanent_and_never_sent(fake: FakeProviders, line: LineProvider) -> None:
    # The SDK's models are generated from the same document; they refuse what it refuses before
    # anything is written. The fake's own check is shown live below, with bodies sent by hand.
    bubble = {**BUBBLE, "body": {**BUBBLE["body"], "layout": "diagonal"}}
    with pytest.raises(PermanentError, match="invalid Flex bubble"):
        line.send_line(OutgoingLine(to=USER, message=LineFlex("Shipped", bubble), key="run-1/step-3"))
    assert fake.requests == []


def post(fake: FakeProviders, body: Any, retry: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {FAKE_LINE_CHANNEL_ACCESS_TOKEN}", "Content-Type": "application/json",
               **({"X-Line-Retry-Key": retry} if retry else {})}
    request = urllib.request.Request(fake.url + LINE_PUSH, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.load(refused)


@pytest.mark.parametrize(("body", "property"), [
    ({"to": USER, "messages": [{"type": "text"}]}, "messages[0]"),  # no text
    ({"to": USER, "messages": [{"type": "txt", "text": "Hi"}]}, "messages[0].type"),
    ({"to": USER, "messages": [{"type": "text", "text": "Hi", "alttext": "Hi"}]}, "messages[0]"),
    ({"to": USER, "messages": [{"type": "flex", "altText": "Hi", "contents": {"type": "bubble", "body": {}}}]},
     "messages[0].contents.body"),
    ({"to": USER, "messages": [{"type": "text", "text": str(n)} for n in range(6)]}, "messages"),
    ({"messages": [{"type": "text", "text": "Hi"}]}, ""),
])
def test_the_fakes_contract_check_is_live(fake: FakeProviders, body: dict[str, Any], property: str) -> None:
    status, answer = post(fake, body)
    assert status == 400 and answer["message"].startswith("The request body has")
    assert property in [d["property"] for d in answer["details"]]
    assert fake.accepted("line") == []


def test_the_fake_refuses_a_retry_key_that_is_not_a_uuid(fake: FakeProviders) -> None:
    status, _ = post(fake, {"to": USER, "messages": [{"type": "text", "text": "Hi"}]}, retry="run-1/step-2")
    assert status == 400


def test_a_refused_connection_is_not_sent() -> None:
    sender = provider(unused_url())
    with pytest.raises(RetryableError) as refused:
        sender.send_line(text())
    assert refused.value.sent is False


def test_a_wrong_token_is_retryable(fake: FakeProviders) -> None:
    # 401: an operator problem (a revoked or rotated token), as for SendGrid and Twilio.
    with pytest.raises(RetryableError) as refused:
        LineProvider("revoked", fake.url, TIMEOUT).send_line(text())
    assert (refused.value.status, refused.value.sent) == (401, False)


def test_from_settings(tmp_path: Path, fake: FakeProviders) -> None:
    settings = Settings(_env_file=None, KEEPFLOW_DATA_DIR=str(tmp_path), LINE_API_BASE=fake.url + "/",
                        LINE_CHANNEL_ACCESS_TOKEN=FAKE_LINE_CHANNEL_ACCESS_TOKEN)
    assert LineProvider.from_settings(settings).send_line(text()).provider == "line"
    with pytest.raises(ValueError, match="LINE_CHANNEL_ACCESS_TOKEN"):
        LineProvider.from_settings(Settings(_env_file=None, KEEPFLOW_DATA_DIR=str(tmp_path)))
