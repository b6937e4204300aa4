"""Twilio as it misbehaves in production, against a real worker process: accepts that answer after
the worker's HTTP timeout, a message list that lags behind the accepts, and bodies stored
rewritten (Smart Encoding, a Messaging Service's opt-out line). Every text goes out once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.stack import STEPS, Stack, key_of

RUNS = 6
SLOW_TEXTS = 4  # texts whose accept answers after the worker has given up waiting
PROVIDER_TIMEOUT = 2.0
ANSWER_AFTER = 3.0  # seconds the fake holds a slow accept's answer: past PROVIDER_TIMEOUT
LIST_LAG = 20.0  # seconds before Twilio's list shows an accepted text
FOOTER = "\n\nReply STOP to unsubscribe."


@pytest.mark.timeout(300)
async def test_a_slow_lagging_rewriting_twilio_gets_one_request_per_text(tmp_path: Path):
    async with Stack(tmp_path / "stack", provider_timeout=PROVIDER_TIMEOUT) as stack:
        stack.fake.twilio_rewrites(smart_encoding=True, footer=FOOTER)
        stack.fake.twilio_list_lag = LIST_LAG
        slow: set[str] = set()
        lock = threading.Lock()

        def answer_late(api, record):
            key = key_of(api, record)
            with lock:
                late = api == "twilio" and key is not None and key not in slow and len(slow) < SLOW_TEXTS
                if late:
                    slow.add(key)
            if late:
                time.sleep(ANSWER_AFTER)

        stack.fake.on_accept = answer_late
        worker = await stack.start_worker()
        handles = await stack.start_runs(RUNS, over=2.0)
        # A lost answer is looked up only after the attempt's lease and a minute for Twilio's list.
        done, failed = await stack.results(handles, 240)
        requests, rows = stack.requests_per_key(), stack.rows()
        stored = [r["body"] for r in stack.fake.accepted("twilio")]
        assert worker.alive(), "the worker should ride the slow provider out, not exit"

    assert failed == {}
    assert len(slow) == SLOW_TEXTS, "the fake should have answered some texts late"
    assert all(body.endswith(FOOTER) and "\u2019" not in body for body in stored), "Twilio rewrote nothing"
    expected = stack.expected_keys(RUNS)
    assert all(r.exit_reason == "completed" for r in done.values())
    assert {k: requests.get(k, 0) for k in expected} == {k: 1 for k in expected}
    assert {k: rows[k].status for k in expected} == {k: "sent" for k in expected}
    print(f"\n{len(expected)} messages ({len(STEPS)} per run), {SLOW_TEXTS} texts answered after the "
          f"{PROVIDER_TIMEOUT:g} s timeout, list {LIST_LAG:g} s behind, bodies rewritten: one request each")
