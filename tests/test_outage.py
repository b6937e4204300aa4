"""A provider down for hours of definition time: messages wait, then go out in order, once each."""

from __future__ import annotations

from datetime import timezone

import pytest

from tests.engine import TEST_TEMPLATES, make_settings, running_worker, time_skipping_server
from tests.helpers import messages, sends, snapshot, start

THREE_NOTES = """
sequences:
  - id: outage
    category: transactional
    steps:
      - send: email
        template: note
        id: first
      - wait: 1h
      - send: email
        template: note
        id: second
      - wait: 1h
      - send: email
        template: note
        id: third
"""


@pytest.fixture
async def own_env():
    async with await time_skipping_server() as env:
        yield env


async def test_a_long_sendgrid_outage_delays_messages_but_loses_and_doubles_none(own_env, tmp_path, fake, db):
    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    # 40 answers of 503: with backoff (1 s doubling to 10 min) that is about five hours of outage.
    fake.fail_next("sendgrid", 503, times=40)
    async with running_worker(own_env, settings, db) as tq:
        handle = await start(own_env.client, tq, snapshot(THREE_NOTES))
        result = await handle.result()
    assert [s.outcome for s in result.steps_done if s.kind == "send"] == ["sent", "sent", "sent"]
    posts = [r for r in fake.requests if r["api"] == "sendgrid" and r["method"] == "POST"]
    assert len(posts) == 43  # 40 refused, then one each
    accepted = fake.accepted("sendgrid")
    assert [m["keepflow_key"].rsplit(":", 1)[1] for m in accepted] == ["first", "second", "third"]
    first, *_ = await sends(own_env.client, handle.id)
    rows = messages(db)
    assert [(m.step, m.status, m.attempts) for m in rows] == [("first", "sent", 41), ("second", "sent", 1), ("third", "sent", 1)]
    # The outage held the first message for hours of the run's time; the later ones kept their spacing after it.
    history = [e async for e in handle.fetch_history_events()]
    completed = [e.event_time.ToDatetime(timezone.utc) for e in history if e.HasField("activity_task_completed_event_attributes")]
    assert (completed[0] - first.at).total_seconds() > 4 * 3600


async def test_a_briefly_locked_database_delays_a_send_and_records_it_once(env, tmp_path, fake, db):
    import sqlite3
    import threading
    import time

    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        # Another process's long write transaction: every writer must wait for it.
        conn = sqlite3.connect(db.engine.url.database, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    locked.wait(5)
    one = snapshot(THREE_NOTES.split("      - wait: 1h")[0])
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, one)
        started = time.monotonic()
        threading.Timer(2.0, release.set).start()
        result = await handle.result()
    holder.join()
    assert time.monotonic() - started >= 1.5  # it did wait for the lock
    assert [s.outcome for s in result.steps_done] == ["sent"]
    assert [(m.step, m.status) for m in messages(db)] == [("first", "sent")]
    assert len([r for r in fake.requests if r["api"] == "sendgrid" and r["method"] == "POST"]) == 1
