"""A run told about tens of thousands of events continues as new long before Temporal's history
warning (10,240 events), loses none of them, and keeps the deadline of the wait it was in.

About a minute (23,000 signals, paced), so it runs in `make faults`, not `make test`;
tests/test_replay.py replays a shorter continued run in every `make test`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from keepflow.runtime.payloads import RunStatus
from tests.engine import TEST_TEMPLATES, make_settings, running_worker, time_skipping_server
from tests.helpers import PATIENT, flood, messages, snapshot, start
from tests.helpers import event_signal as signal

TEMPORAL_HISTORY_WARNING = 10_240


async def chain_lengths(client: Client, workflow_id: str, first_run_id: str) -> list[int]:
    """History length of every run in the continue-as-new chain, oldest first."""
    lengths, run_id = [], first_run_id
    while run_id:
        events = [e async for e in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events()]
        lengths.append(len(events))
        last = events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW else None)
    return lengths


# Well past its time alone: `make faults` runs it beside three other stacks.
@pytest.mark.timeout(180)
async def test_twenty_thousand_signals_none_lost(tmp_path, fake, db):
    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    async with await time_skipping_server() as env, running_worker(env, settings, db) as tq:
        busy = await start(env.client, tq, snapshot(PATIENT), key="busy")
        quiet = await start(env.client, tq, snapshot(PATIENT), key="quiet")
        await flood(env.client, busy.id, 20_000)
        await flood(env.client, quiet.id, 3_000)

        # A redelivered event (same id) is still recognised after the run continued as new.
        await busy.signal("event", signal("order.updated", "upd-19999"))
        status = await busy.query("status", result_type=RunStatus)
        assert status.events_count == 20_000
        assert status.continued >= 30
        assert status.current_step == "0.then.0"  # still in the wait it was in

        # The run still acts on the event it waits for, after all the noise.
        await busy.signal("event", signal("order.delivered"))
        done = await env.client.get_workflow_handle(busy.id, result_type=RunStatus).result()
        assert done.exit_reason == "completed" and done.events_count == 20_001
        assert [(s.path, s.outcome) for s in done.steps_done] == [
            ("0.then.0", "received order.delivered"), ("0", "then"), ("1", "sent")]
        lengths = await chain_lengths(env.client, busy.id, busy.first_execution_run_id)
        assert len(lengths) == done.continued + 1
        assert max(lengths) < TEMPORAL_HISTORY_WARNING / 10, lengths

        # The quiet run continued as new too, but its 30-day timeout still counts from its start:
        # 29 days on it is waiting, two days later it has timed out and nudged.
        assert (await quiet.query("status", result_type=RunStatus)).continued >= 1
        await env.sleep(timedelta(days=29))
        assert (await quiet.query("status", result_type=RunStatus)).current_step == "0.then.0"
        await env.sleep(timedelta(days=2))
        done = await env.client.get_workflow_handle(quiet.id, result_type=RunStatus).result()
        assert [(s.path, s.outcome) for s in done.steps_done] == [
            ("0.then.0.on_timeout.nudge", "sent"), ("0.then.0", "timed out"), ("0", "then"), ("1", "sent")]

    sent = [(m.workflow_id, m.step, m.status) for m in messages(db)]
    assert sorted(sent) == [("patient/busy", "1", "sent"), ("patient/quiet", "0.then.0.on_timeout.nudge", "sent"),
                            ("patient/quiet", "1", "sent")]
