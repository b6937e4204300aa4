"""Logs: JSON lines in production, readable ones under `keepflow dev`, each carrying the event, run
and message it is about, and never a customer's address or phone number."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from keepflow import logs
from keepflow.settings import Settings
from tests import helpers
from tests.engine import running_worker
from tests.test_webhooks import SECRET, event, signed


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What Keepflow's loggers write at INFO, as production's JSON handler writes it."""
    stream = io.StringIO()
    handler = logs.handler("json", stream)
    keepflow = logging.getLogger("keepflow")
    level = keepflow.level
    keepflow.addHandler(handler)
    keepflow.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        keepflow.removeHandler(handler)
        keepflow.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_production_logs_json_and_dev_readable_lines():
    assert Settings().log_style() == "json" and Settings().log_style(dev=True) == "text"
    assert Settings(KEEPFLOW_LOG_FORMAT="text").log_style() == "text"  # type: ignore[call-arg]


def test_a_line_carries_what_it_is_about_and_no_address(lines):
    with logs.about(event_id="evt_1", workflow_id="fulfilment/1001"):
        logging.getLogger("keepflow.test").warning("SendGrid said: %s is not valid, nor +66 81 234 5678",
                                                   "ann@example.com")
    [line] = parsed(lines)
    assert line["level"] == "WARNING" and line["logger"] == "keepflow.test" and line["time"].endswith("+00:00")
    assert line["event_id"] == "evt_1" and line["workflow_id"] == "fulfilment/1001"
    assert "ann@example.com" not in line["message"] and "234 5678" not in line["message"]
    assert line["message"] == "SendGrid said: <email> is not valid, nor <phone>"


def test_readable_lines_name_what_they_are_about():
    stream = io.StringIO()
    logger = logging.getLogger("keepflow.test.readable")
    logger.addHandler(logs.handler("text", stream))
    try:
        with logs.about(event_id="evt_2"):
            logger.warning("stored")
    finally:
        logger.handlers.clear()
    assert stream.getvalue().rstrip().endswith("keepflow.test.readable: stored [event_id=evt_2]")


async def test_a_send_logs_its_run_and_message_key_and_no_address(env, settings, db, fake, lines):
    body = event()
    async with running_worker(env, settings, db) as tq:
        async with helpers.serving(settings.model_copy(update={"task_queue": tq}), db, client=env.client,
                                   secrets=(SECRET,)) as http:
            raw, headers = signed(body)
            assert (await http.post("/events", content=raw, headers=headers)).status_code == 202
            for _ in range(200):
                if any(" sent by " in line["message"] for line in parsed(lines)):
                    break
                await asyncio.sleep(0.05)
    workflow_id = f"fulfilment/{body['order']['id']}"
    sent = next(line for line in parsed(lines) if " sent by " in line["message"])
    assert sent["logger"] == "keepflow.send" and sent["workflow_id"] == workflow_id and sent["run_id"]
    assert sent["message_key"].startswith(f"{workflow_id}:") and sent["activity"] == "send_message"
    assert sent["message"] == f"message {sent['message_key']} sent by sendgrid"
    text = lines.getvalue()
    assert body["customer"]["email"] not in text and body["customer"]["phone"] not in text
