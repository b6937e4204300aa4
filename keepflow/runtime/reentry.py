"""Whether a trigger may start a run under an id that has had one: `reentry: {after: 90d}`.

A sequence starts one run per key (its workflow id is `<sequence>/<key>`). With `reentry`, the
trigger starts a new run under the same id once the last has ended and `after` has passed since
the customer last entered: from the moment of the event that started their last run to the
moment of this one. Both are the events' own times, so an event routed late by the reconciler is
judged by when the customer acted, not by when Keepflow caught up, and a replayed import of old
orders lets no one in twice.

The last run is the server's latest under the id, named by its memo's `trigger`, or, when the
server has forgotten it (retention is shorter than many windows), the `runs` row, which outlives
it. A run this very event started is never followed by another: routed again after a crash, the
event finds its run and starts nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from keepflow.store import Database, Event, Run, utc

# first: no run under the id is known, start as always. again: start anew under the closed id.
# wait: a run is going, or the last entry is within the window (or was this event): start nothing.
Entry = Literal["first", "again", "wait"]


async def entry(client: Client, db: Database, workflow_id: str, after: timedelta,
                event_id: str, occurred_at: datetime) -> Entry:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        description = None
    trigger: str | None = None
    started: datetime | None = None
    if description is not None:
        if description.status == WorkflowExecutionStatus.RUNNING:
            return "wait"
        trigger = await description.memo_value("trigger", None)
        if trigger == event_id:
            return "wait"
        started = description.start_time
    last = await asyncio.to_thread(_last_entry, db, workflow_id, trigger, started)
    if last is None:
        return "first"
    return "again" if occurred_at.astimezone(timezone.utc) - last >= after else "wait"


def _last_entry(db: Database, workflow_id: str, trigger: str | None, started: datetime | None) -> datetime | None:
    """When the customer last entered under the id: the time of the event that started the latest
    run (`trigger`, the server's; else the `runs` row's), or, without it, when that run started."""
    with db.session() as session:
        row = session.get(Run, workflow_id)
        trigger = trigger or (row.trigger_event_id if row is not None else None)
        if trigger is not None:
            happened = session.scalar(select(Event.occurred_at).where(Event.id == trigger))
            if happened is not None:
                return utc(happened)
        # No stored trigger (erased with the customer, or a run the scan or a start: step began).
        starts = [utc(row.started_at)] if row is not None else []
        if started is not None:
            starts.append(started)
        return max(starts, default=None)
