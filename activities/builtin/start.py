"""`start_sequence`: begin another sequence's run, as a run of its own.

The started run is not a Temporal child: it outlives the one that started it (education goes
on after fulfilment ends), is found and signalled by the same `<sequence>/<key>` id as any
other run, and never holds its starter open.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from keepflow.runtime.payloads import RunInput
from keepflow.runtime.routing import record_run
from keepflow.store import Database


class SequenceStarter:
    def __init__(self, client: Client, db: Database):
        self.client = client
        self.db = db

    @activity.defn(name="start_sequence")
    async def start_sequence(self, run: RunInput) -> str:
        workflow_id = f"{run.snapshot.root}/{run.key}"
        try:
            await self.client.start_workflow(
                "sequence", run, id=workflow_id, task_queue=activity.info().task_queue,
                # One run per sequence and key: a retried activity, or a second order event, starts nothing new.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                memo={"sequence": run.snapshot.root, "definition_hash": run.snapshot.hash},
            )
        except WorkflowAlreadyStartedError:
            return f"already started {workflow_id}"
        await asyncio.to_thread(record_run, self.db, workflow_id, run.context)
        return f"started {workflow_id}"
