"""`start_sequence`: begin another sequence's run, as a run of its own.

The started run is not a Temporal child: it outlives the one that started it (education goes
on after fulfilment ends), is found and signalled by the same `<sequence>/<key>` id as any
other run, and never holds its starter open.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from keepflow.runtime.payloads import RunInput
from keepflow.runtime.starts import run_id, start_run
from keepflow.store import Database


class SequenceStarter:
    def __init__(self, client: Client, db: Database):
        self.client = client
        self.db = db

    @activity.defn(name="start_sequence")
    async def start_sequence(self, run: RunInput) -> str:
        # One run per sequence and key: a retried activity, or a second order event, starts nothing new.
        started = await start_run(self.client, run, activity.info().task_queue, db=self.db)
        return f"started {started}" if started else f"already started {run_id(run.snapshot.root, run.key)}"
