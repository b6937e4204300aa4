"""Replay safety: runs recorded with earlier code must replay, command for command, on today's.

`tests/histories/*.json` are histories of representative runs (every step kind, a quiet-hours
hold, a run that continued as new). A change to the interpreter that alters the commands a run
issues, without `workflow.patched()`, makes these replays fail. After an intended, patched
change, set RECORDED_AS to a name for it and record new ones beside the old:

    KEEPFLOW_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_replay.py -k record

The files without a suffix were recorded before runs reported their step (KeepflowStep); those
suffixed `step-attribute` by runs that set it (and the patch marker guarding it) as they settled;
those suffixed `no-step-attribute`, like today's, set neither: their input says so
(`RunInput.step_attribute`).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from keepflow.runtime.events import EventIn
from keepflow.runtime.payloads import EventSignal, RunInput, RunStatus
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from tests.engine import CATALOG, CONVERTER, TEST_TEMPLATES, make_settings, running_worker, time_skipping_server
from tests.helpers import CUSTOMER, PATIENT, flood, result_of, sends, snapshot, start, to_local_hour, until_step
from tests.test_journey import CHAIN, customer_in_offer_arm, play_journey
from tests.test_winback import add_customer, scan
from worker import SANDBOX
from workflows.sequence import SequenceWorkflow

HISTORIES = Path(__file__).resolve().parent / "histories"
# The suffix of the histories the record tests write: the latest patch they include.
RECORDED_AS = "no-step-attribute"


def replayer() -> Replayer:
    # The session's keys: today's runs are sealed with them; the stored histories, recorded before
    # payloads were sealed, pass through the codec untouched.
    return Replayer(workflows=[SequenceWorkflow], data_converter=CONVERTER, workflow_runner=SANDBOX)


async def record_runs(env, settings, db) -> list[WorkflowHistory]:
    """Run the journey, and a win-back (started by the scan) that the customer's order converts."""
    order_id = f"R{uuid.uuid4().hex[:6]}"
    await play_journey(env, settings, db, order_id, customer_in_offer_arm())
    ids = [f"{s}/{order_id}" for s in CHAIN]

    catalog = CATALOG
    await to_local_hour(env, 10)  # the win-back's text keeps quiet hours too
    async with running_worker(env, settings, db) as tq:
        customer_id = add_customer(db, await env.get_current_time() - timedelta(days=70))
        await scan(env, tq)
        await until_step(env, f"winback/{customer_id}", "3")
        await env.sleep(timedelta(days=5))
        ordered = EventIn.model_validate({
            "id": f"order-{order_id}", "type": "order.created", "occurred_at": "2026-11-06T00:00:00+00:00",
            "customer": {"id": customer_id}, "order": {"id": order_id, "total": "990", "currency": "TWD", "items": []}})
        await ingest(db, env.client, catalog, ordered, tq)
        await result_of(env, f"winback/{customer_id}")
    ids.append(f"winback/{customer_id}")
    return [await env.client.get_workflow_handle(i).fetch_history() for i in ids]


HELD = """
rules:
  quiet_hours: {start: "21:00", end: "08:00", channels: [sms]}
sequences:
  - id: held
    category: marketing
    steps:
      - send: sms
        template: order_shipped
      - send: sms
        template: order_shipped
        id: superseded
        superseded_by: [order.delivered]
"""


async def record_held_run(env, settings, db) -> WorkflowHistory:
    """A marketing text due at 22:00 Bangkok, held by quiet hours until 08:00 (a deferral timer);
    the next one dropped by a superseding event while it waits for the cap."""
    await to_local_hour(env, 22)
    async with running_worker(env, settings, db) as tq:
        context = {"order": {"id": "H1", "number": "#H1"}, "shipment": {"data": {"tracking_url": "https://t.example"}},
                   "brand": {"name": "Shop"}}
        handle = await start(env.client, tq, snapshot(HELD), context)
        await env.sleep(timedelta(hours=11))  # past 08:00: the first went out, the second waits for the cap
        await until_step(env, handle.id, "superseded")
        await handle.signal("event", EventSignal(id="delivered-1", type="order.delivered", occurred_at="2026-11-24T02:00:00Z"))
        result = await handle.result()
    assert [s.outcome for s in result.steps_done] == ["sent", "skipped: superseded by order.delivered"]
    return await handle.fetch_history()


async def record_continued_run(tmp_path, fake, db) -> list[WorkflowHistory]:
    """A run waiting in a branch that hears enough events to continue as new, then resumes in the
    same wait and takes the event it waited for: both runs of the chain."""
    async with await time_skipping_server() as env:
        settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
        async with running_worker(env, settings, db) as tq:
            handle = await start(env.client, tq, snapshot(PATIENT), key=f"c{uuid.uuid4().hex[:6]}")
            await flood(env.client, handle.id, 600)
            latest = env.client.get_workflow_handle(handle.id)
            await latest.signal("event", EventSignal(id="delivered-1", type="order.delivered",
                                                     occurred_at="2026-11-24T02:00:00Z"))
            result = await env.client.get_workflow_handle(handle.id, result_type=RunStatus).result()
        assert result.continued == 1 and result.steps_done[0].outcome == "received order.delivered"
        first = await env.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).fetch_history()
        return [first, await latest.fetch_history()]


# What a run records only to say where it waits: each a billed Action on Temporal Cloud.
WHERE_IT_WAITS = (EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES, EventType.EVENT_TYPE_MARKER_RECORDED)


def where_it_waits(history: WorkflowHistory) -> list[str]:
    return [EventType.Name(e.event_type) for e in history.events if e.event_type in WHERE_IT_WAITS]


async def test_todays_runs_replay_deterministically(env, settings, db, fake, tmp_path):
    """And record no search attribute upsert and no patch marker: the journey, a win-back the scan
    started, a held send, and a run continued as new, before and after."""
    histories = [*await record_runs(env, settings, db), await record_held_run(env, settings, db),
                 *await record_continued_run(tmp_path, fake, db)]
    for history in histories:
        await replayer().replay_workflow(history)
    assert {h.workflow_id: where_it_waits(h) for h in histories} == {h.workflow_id: [] for h in histories}


def stored() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", stored(), ids=lambda p: p.stem)
async def test_stored_history_replays(path: Path):
    await replayer().replay_workflow(WorkflowHistory.from_json(path.stem, path.read_text()))


def test_inputs_recorded_with_a_time_scale_decode_without_it():
    """Every stored history's input carries `time_scale` (the demo's compressed time, gone since):
    the runs decode, and replay above with timers of their definitions' own lengths."""
    for path in stored():
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        [payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
        assert json.loads(payload.data)["time_scale"] == 1.0
        [run] = pydantic_data_converter.payload_converter.from_payloads([payload], [RunInput])
        assert "time_scale" not in run.model_dump()


def test_runs_that_set_the_step_attribute_keep_setting_it():
    """Their inputs, recorded without `step_attribute`, decode as runs that set it: so they replay
    (test_stored_history_replays) with the marker and the upserts they recorded, and a run of
    theirs that continues as new carries the same."""
    old = [p for p in stored() if p.stem.endswith(".step-attribute")]
    assert old
    for path in old:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        [payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
        assert "step_attribute" not in json.loads(payload.data)
        [run] = pydantic_data_converter.payload_converter.from_payloads([payload], [RunInput])
        assert run.step_attribute
        if not path.stem.startswith("continued-resumed"):  # it resumed where it had set the attribute
            assert "EVENT_TYPE_MARKER_RECORDED" in where_it_waits(history), path.stem
            assert "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES" in where_it_waits(history), path.stem


def test_every_step_kind_is_covered_by_a_stored_history():
    text = "\n".join(p.read_text() for p in stored())
    for kind in ("send_message", "start_sequence", "create_coupon", "load_customer",
                 "TIMER_FIRED", "TIMER_CANCELED", "WORKFLOW_EXECUTION_SIGNALED",
                 "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES", "CONTINUED_AS_NEW"):
        assert kind in text, f"no stored history exercises {kind}"


@pytest.mark.skipif(not os.environ.get("KEEPFLOW_RECORD_HISTORIES"), reason="set KEEPFLOW_RECORD_HISTORIES=1 to re-record")
async def test_record_histories(env, settings, db, fake):
    HISTORIES.mkdir(exist_ok=True)
    for history in await record_runs(env, settings, db):
        name = history.workflow_id.split("/")[0]
        (HISTORIES / f"{name}.{RECORDED_AS}.json").write_text(history.to_json())


@pytest.mark.skipif(not os.environ.get("KEEPFLOW_RECORD_HISTORIES"), reason="set KEEPFLOW_RECORD_HISTORIES=1 to re-record")
async def test_record_held_history(env, settings, db, fake):
    (HISTORIES / f"held.{RECORDED_AS}.json").write_text((await record_held_run(env, settings, db)).to_json())


@pytest.mark.skipif(not os.environ.get("KEEPFLOW_RECORD_HISTORIES"), reason="set KEEPFLOW_RECORD_HISTORIES=1 to re-record")
async def test_record_continued_histories(tmp_path, fake, db):
    first, resumed = await record_continued_run(tmp_path, fake, db)
    (HISTORIES / f"continued-first.{RECORDED_AS}.json").write_text(first.to_json())
    (HISTORIES / f"continued-resumed.{RECORDED_AS}.json").write_text(resumed.to_json())


async def test_editing_sequences_yaml_does_not_change_runs_in_flight(env, tmp_path, fake, db):
    """A run interprets the definition it started with: an edit published mid-run reaches new runs only."""
    from keepflow.runtime.registry import load_catalog
    from tests.engine import TEST_TEMPLATES, make_settings

    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    path = tmp_path / "sequences.yaml"
    before = ("sequences:\n  - id: nudge\n    category: transactional\n    steps:\n"
              "      - wait: 2d\n      - send: email\n        template: note\n")
    path.write_text(before)
    old = load_catalog(path, TEST_TEMPLATES).snapshot("nudge")
    context = {"customer": CUSTOMER, "brand": {"name": "Shop"}}
    async with running_worker(env, settings, db) as tq:
        first = await env.client.start_workflow(
            SequenceWorkflow.run, RunInput(snapshot=old, key="first", context=context), id=f"nudge/first-{uuid.uuid4().hex[:6]}",
            task_queue=tq)
        # The marketer edits the file while the first run waits: an SMS instead, and a second message.
        path.write_text(before.replace("send: email\n        template: note", "send: sms\n        template: ping")
                        + "      - send: email\n        template: note\n        id: extra\n")
        new = load_catalog(path, TEST_TEMPLATES).snapshot("nudge")
        second = await env.client.start_workflow(
            SequenceWorkflow.run, RunInput(snapshot=new, key="second", context=context), id=f"nudge/second-{uuid.uuid4().hex[:6]}",
            task_queue=tq)
        done_first, done_second = await first.result(), await second.result()
    assert new.hash != old.hash
    assert (done_first.definition_hash, [s.path for s in done_first.steps_done]) == (old.hash, ["0", "1"])
    assert (done_second.definition_hash, [s.path for s in done_second.steps_done]) == (new.hash, ["0", "1", "extra"])
    assert [s.channel for s in await sends(env.client, first.id)] == ["email"]
    assert [s.channel for s in await sends(env.client, second.id)] == ["sms", "email"]
