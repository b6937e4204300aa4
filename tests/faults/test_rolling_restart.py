"""A rolling restart (SIGTERM one worker, start a replacement, SIGTERM the other) while sends are
in flight: graceful shutdown lets every started send finish, so no activity fails, times out or
is retried, and every message goes out once."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState

from tests.faults.stack import Stack, WorkerProcess, history_events

RUNS = 12
HOLD = 3.0  # seconds the fake holds each accepted send's answer: sends are in flight for that long


async def started_by(stack: Stack, run_ids: list[str], worker: WorkerProcess, timeout: float = 60.0) -> str:
    """Wait until some run has a send_message attempt running on `worker`; that run's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_id in run_ids:
            description = await stack.client.get_workflow_handle(run_id).describe()
            for pending in description.raw_description.pending_activities:
                if (pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                        and pending.last_worker_identity == worker.identity):
                    return run_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"no send started on worker {worker.identity} within {timeout:.0f} s")


@pytest.mark.timeout(240)
async def test_a_rolling_restart_finishes_every_send_in_flight(stack: Stack):
    def hold(api, record):
        time.sleep(HOLD)  # in the fake's request thread: this send stays in flight

    stack.fake.on_accept = hold
    first, second = await stack.start_worker(), await stack.start_worker()
    handles = await stack.start_runs(RUNS, over=4.0)
    run_ids = [h.id for h in handles]

    # Stop the first while it runs a send; its replacement comes up while it finishes.
    await started_by(stack, run_ids, first)
    first.terminate()
    stopped = {first.identity: time.time()}
    third = await stack.start_worker()
    assert await first.exited(60) == 0
    # Then the second, the same way; the third finishes the runs.
    await started_by(stack, run_ids, second)
    second.terminate()
    stopped[second.identity] = time.time()
    assert await second.exited(60) == 0
    done, failed = await stack.results(handles, 120)
    assert failed == {}
    assert all(r.exit_reason == "completed" for r in done.values())
    assert third.alive()

    finished_after_stop = {identity: 0 for identity in stopped}
    for run_id in run_ids:
        events = await history_events(stack.client, run_id)
        kinds = {e.event_type for e in events}
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED not in kinds, run_id
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT not in kinds, run_id
        started = {e.event_id: e.activity_task_started_event_attributes for e in events
                   if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED}
        # A retried activity records only its last attempt: attempt 1 everywhere means no retry.
        assert {s.attempt for s in started.values()} == {1}, run_id
        for e in events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                who = started[e.activity_task_completed_event_attributes.started_event_id].identity
                if who in stopped and e.event_time.ToMicroseconds() / 1e6 > stopped[who]:
                    finished_after_stop[who] += 1
    # Each stopped worker had sends in flight and finished them after it was asked to stop.
    print(f"\nsends finished by a worker after its SIGTERM: {finished_after_stop}")
    assert all(n >= 1 for n in finished_after_stop.values()), finished_after_stop

    rows = stack.rows()
    assert set(rows) == set(stack.expected_keys(RUNS))
    assert {r.status for r in rows.values()} == {"sent"}
    assert stack.requests_per_key() == {key: 1 for key in rows}
