"""Temporal's dev server stopped (SIGTERM) or killed (SIGKILL) and started again (same port, same
SQLite file) while runs sleep in a wait and others are in the middle of a send: the runs resume
where they were, finish, and every message goes out once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from temporalio.api.enums.v1 import EventType

from keepflow.runtime.payloads import RunStatus
from tests.faults.stack import STEPS, WAIT_PATH, Stack, history_events, key_of

RUNS = 12
HOLD = 2.0  # seconds the fake holds each accepted send's answer
# Seconds the server stays down. Killed, longer than the worker keeps retrying to report an
# activity's result (about 10 s): the sends in flight lose their outcome and are attempted again.
DOWN_FOR = {"stopped": 5.0, "killed": 15.0}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_runs_resume_after_the_temporal_server_restarts(stack: Stack, how: str):
    in_flight: set[str] = set()
    lock = threading.Lock()

    def hold(api, record):
        key = key_of(api, record)
        with lock:
            in_flight.add(key)
        time.sleep(HOLD)
        with lock:
            in_flight.discard(key)

    stack.fake.on_accept = hold
    worker = await stack.start_worker()
    handles = await stack.start_runs(RUNS, over=3.0)

    # Wait for the moment some runs sleep in the wait while others have a send at the provider.
    deadline = time.monotonic() + 60
    while True:
        asleep = [h.id for h in handles
                  if (await h.query("status", result_type=RunStatus)).current_step == WAIT_PATH]
        with lock:
            sending = set(in_flight)
        if asleep and sending:
            break
        assert time.monotonic() < deadline, "never had runs asleep and sends in flight at once"
        await asyncio.sleep(0.1)
    if how == "stopped":
        await stack.restart_server(DOWN_FOR[how])
    else:
        await stack.kill_server(DOWN_FOR[how])
    print(f"\nserver {how} with {len(asleep)} runs asleep in the wait and sends in flight for {sorted(sending)}")

    handles = [stack.client.get_workflow_handle(h.id, result_type=RunStatus) for h in handles]
    done, failed = await stack.results(handles, 150)
    assert failed == {}
    assert all(r.exit_reason == "completed" for r in done.values())
    assert [s.outcome for s in done[asleep[0]].steps_done] == ["sent", "sent", "waited", "sent", "sent"]
    assert worker.alive(), "the worker should ride out the outage, not exit"

    # Resumed where they were: each send scheduled once and each wait's timer started once.
    retried = 0
    for handle in handles:
        events = await history_events(stack.client, handle.id)
        kinds = Counter(e.event_type for e in events)
        assert kinds[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED] == len(STEPS), handle.id
        assert kinds[EventType.EVENT_TYPE_TIMER_STARTED] == 1, handle.id
        retried += sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                       and e.activity_task_started_event_attributes.attempt > 1)
    print(f"sends that needed a second attempt (their first attempt's outcome was lost in the outage): {retried}")
    if how == "killed":
        assert retried > 0, "no send lost its outcome: the outage did not test what it should"
    rows = stack.rows()
    assert set(rows) == set(stack.expected_keys(RUNS))
    assert {r.status for r in rows.values()} == {"sent"}
    assert stack.requests_per_key() == {key: 1 for key in rows}
