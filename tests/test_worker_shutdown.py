"""Stopping a worker while sends are in flight (SIGTERM sets the stop event `run_worker` watches):
every send already in the provider call finishes and is recorded, so no row is left `sending`
(nor `unknown` once retried), and no run sends a message again when another worker picks it up."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from keepflow.runtime.registry import load_catalog
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.engine import make_settings
from tests.helpers import messages, snapshot, start
from worker import build_worker, run_worker

RUNS = 4
# The fake holds each accepted send's answer this long: the sends are in the provider call when the
# stop comes, and still there for a while after it.
HOLD = 3.0

SEQUENCES = """
sequences:
  - id: drain
    category: transactional
    trigger: order.created
    steps:
      - send: email
        template: drain
      - send: email
        template: drain
"""
TEMPLATE = "{% block subject %}Hello {{ customer.first_name }}{% endblock %}<p>Your order is on its way.</p>\n"


@pytest.mark.timeout(150)
async def test_stopping_the_worker_lets_every_send_in_flight_finish(tmp_path, fake, db):
    (tmp_path / "sequences.yaml").write_text(SEQUENCES, encoding="utf-8")
    (tmp_path / "templates" / "email").mkdir(parents=True)
    (tmp_path / "templates" / "email" / "drain.en.html").write_text(TEMPLATE, encoding="utf-8")
    settings = make_settings(tmp_path, fake, templates=tmp_path / "templates").model_copy(update={
        "sequences_path": tmp_path / "sequences.yaml", "database_url": db.url,
        "task_queue": f"test-{uuid.uuid4()}", "provider_timeout": 10.0})
    run = snapshot(SEQUENCES)

    def hold(api, record):
        time.sleep(HOLD)  # in the fake's request thread: this send stays in its provider call

    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=None)
    server.start()
    fake.on_accept = hold
    try:
        client = await server.wait_ready(settings)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, address=server.address, stop=stop))
        handles = [await start(client, settings.task_queue, run, key=f"k{n}") for n in range(RUNS)]
        for _ in range(600):  # every run's first email accepted, its answer held back
            if len(fake.accepted("sendgrid")) == RUNS or worker.done():
                break
            await asyncio.sleep(0.05)
        assert len(fake.accepted("sendgrid")) == RUNS, "the sends never reached the provider"
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(worker, 60)
        took = time.monotonic() - stopped

        rows = messages(db)
        accepted = {m["keepflow_key"]: m["message_id"] for m in fake.accepted("sendgrid")}
        # Each send in flight was seen through and recorded: none is left `sending`.
        assert {r.key: (r.status, r.provider_message_id) for r in rows} == {
            key: ("sent", message_id) for key, message_id in accepted.items()}
        assert took >= HOLD - 1.0, f"the worker stopped after {took:.1f} s, before its sends were answered"

        # Another worker takes the runs over: the first emails are not sent again.
        fake.on_accept = None
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        async with build_worker(client, settings, db, task_queue=settings.task_queue, catalog=catalog):
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
        assert [[s.outcome for s in r.steps_done] for r in results] == [["sent", "sent"]] * RUNS
        assert sorted(r.status for r in messages(db)) == ["sent"] * RUNS * 2
        assert sum(1 for r in fake.requests if r["api"] == "sendgrid" and r["method"] == "POST") == RUNS * 2
    finally:
        fake.on_accept = None
        server.stop()
