"""Whether a trigger may start a run under an id that has had one: `reentry: {after: 90d}`.

A sequence starts one run per key (its workflow id is `<sequence>/<key>`). With `reentry`, the
trigger starts a new run under the same id once the last has ended and `after` has passed since
it started, counted to when the trigger happened (so an event routed late by the reconciler is
judged by when the customer acted, not by when Keepflow caught up).

The last start is the later of two records: the `runs` row, which outlives Temporal's retention
(a closed run the server has forgotten still holds the window), and the server's own, which a
routing cut short before its `runs` write has already moved on. And a run this very event started
is never followed by another: routed again after a crash, it finds the run and starts nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Literal

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from keepflow.store import Database, Run, utc

# first: no run under the id is known, start as always. again: start anew under the closed id.
# wait: a run is going, or started within the window (or by this event): start nothing.
Entry = Literal["first", "again", "wait"]


async def entry(client: Client, db: Database, workflow_id: str, after: timedelta,
                event_id: str, occurred_at: datetime) -> Entry:
    noted = await asyncio.to_thread(_noted_start, db, workflow_id)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        description = None
    starts = [noted] if noted is not None else []
    if description is not None:
        if description.status == WorkflowExecutionStatus.RUNNING:
            return "wait"
        if await description.memo_value("trigger", None) == event_id:
            return "wait"
        starts.append(description.start_time)
    if not starts:
        return "first"
    return "again" if occurred_at.astimezone(timezone.utc) - max(starts) >= after else "wait"


def _noted_start(db: Database, workflow_id: str) -> datetime | None:
    with db.session() as session:
        row = session.get(Run, workflow_id)
        return utc(row.started_at) if row is not None else None
