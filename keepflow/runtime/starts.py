"""Starting a run, the one way every starter does it: the router (an event's trigger), a
`start:` step (the `start_sequence` activity) and the inactivity scan.

A run's workflow id is `<sequence id>/<key>` (e.g. `fulfilment/1001`): the same trigger routed
twice, or a retried activity, finds the run there and starts nothing new, and an event for a run
finds it without a lookup table. Its memo names the sequence and the hash of the definitions it
runs. Each started run gets a row in `runs`, which reports and cool-downs read.

The row is written before the start, never after: the router signals only runs that have a row
(see `keepflow.runtime.routing`), so a run must not exist, even for a moment, without one. A row
whose start then fails or finds another run only makes the router signal an id that may not
exist, which costs a NOT_FOUND and loses nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from keepflow import metrics
from keepflow.runtime.payloads import RunInput
from keepflow.store import Database, Run, insert_new


def run_id(sequence_id: str, key: Any) -> str:
    return f"{sequence_id}/{key}"


async def start_run(client: Client, run: RunInput, task_queue: str, *, db: Database | None,
                    started_at: datetime | None = None, allow_rerun: bool = False,
                    trigger: str | None = None) -> str | None:
    """Start `run`; its workflow id, or None when a run under that id exists already.

    `allow_rerun`: a closed run's id may be used again (the scan: a customer can come back and
    drift away again after the cool-down); otherwise one run per sequence and key. With `db`, the
    run is noted in `runs` as started at `started_at` (default now), before the start; without,
    the caller has claimed its row with `claim_run()` and notes it with `note_run()` once started
    (the router, with the rest of its bookkeeping).
    `trigger`: the id of the event that starts it, kept in its memo (see `started_by`).
    """
    workflow_id = run_id(run.snapshot.root, run.key)
    # Every run starts here, so every new run leaves KeepflowStep alone (see RunInput.step_attribute),
    # whoever built its input: a retried `start:` activity scheduled by older code included.
    run = run.model_copy(update={"step_attribute": False})
    claimed = False
    if db is not None:
        claimed = await asyncio.to_thread(claim, db, workflow_id, run.context, started_at, run.snapshot.hash)
    try:
        await client.start_workflow(
            "sequence", run, id=workflow_id, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE if allow_rerun else WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo=_memo(run, trigger),
        )
    except WorkflowAlreadyStartedError:
        return None
    metrics.RUNS_STARTED.labels(run.snapshot.root).inc()
    if db is not None and not claimed:
        # The row was an earlier run's under the same id: this run replaces it.
        await asyncio.to_thread(record_run, db, workflow_id, run.context, started_at, run.snapshot.hash)
    return workflow_id


def claim(db: Database, workflow_id: str, context: dict[str, Any], started_at: datetime | None = None,
          definition_hash: str | None = None) -> bool:
    """`claim_run` in a transaction of its own."""
    with db.session() as session:
        return claim_run(session, workflow_id, context, started_at, definition_hash)


def _memo(run: RunInput, trigger: str | None) -> dict[str, Any]:
    memo = {"sequence": run.snapshot.root, "definition_hash": run.snapshot.hash}
    if trigger:
        # Which event started it: routing that event again after a crash finishes what it began.
        memo["trigger"] = trigger
    return memo


async def started_by(client: Client, workflow_id: str, event_id: str) -> bool:
    """Whether the run under `workflow_id` was started by the event `event_id`."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return await description.memo_value("trigger", None) == event_id


def record_run(db: Database, workflow_id: str, context: dict[str, Any], started_at: datetime | None = None,
               definition_hash: str | None = None) -> None:
    """Note a run's start for reports and cool-downs (a later run under the same id replaces it)."""
    with db.session() as session:
        note_run(session, workflow_id, context, started_at, definition_hash)


def claim_run(session: Session, workflow_id: str, context: dict[str, Any], started_at: datetime | None = None,
              definition_hash: str | None = None) -> bool:
    """Write the run's row unless the id has one (a run going, about to start, or an earlier one
    under the id); True when this wrote it. Before the start, so that no run exists without a row.
    An insert that yields to a concurrent one, not a read then a write: two starters of the same
    run claim it at once, and neither fails."""
    row = _row(workflow_id, context, started_at, definition_hash)
    return insert_new(session.connection(), Run.__table__, [row], ["id"]) == 1


def note_run(session: Session, workflow_id: str, context: dict[str, Any], started_at: datetime | None = None,
             definition_hash: str | None = None) -> None:
    session.merge(Run(**_row(workflow_id, context, started_at, definition_hash)))


def _row(workflow_id: str, context: dict[str, Any], started_at: datetime | None,
         definition_hash: str | None) -> dict[str, Any]:
    return dict(
        id=workflow_id, sequence_id=workflow_id.split("/", 1)[0], customer_id=(context.get("customer") or {}).get("id"),
        started_at=started_at or datetime.now(timezone.utc), trigger_event_id=(context.get("event") or {}).get("id"),
        converted_at=None, converted_event_id=None, definition_hash=definition_hash,
    )
