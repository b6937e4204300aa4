"""Small helpers for tests that run sequences on the time-skipping server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle

from keepflow.contracts import RunInput, RunStatus, SendRequest
from keepflow.dsl import SequencesFile, Snapshot
from keepflow.store import Database, Message
from workflows.sequence import SequenceWorkflow

CUSTOMER = {"id": "c-1", "email": "nok@example.com", "phone": "+66812345678", "first_name": "Nok",
            "locale": "en", "timezone": "Asia/Bangkok", "consents": {"email": True, "sms": True}}


def snapshot(yaml_text: str, root: str | None = None) -> Snapshot:
    file = SequencesFile.model_validate(YAML(typ="safe").load(yaml_text))
    return Snapshot.of(root or file.sequences[0].id, file.by_id())


async def start(client: Client, task_queue: str, snap: Snapshot, context: dict[str, Any] | None = None,
                key: str | None = None, time_scale: float = 1.0) -> WorkflowHandle:
    key = key or uuid.uuid4().hex[:8]
    context = {"customer": CUSTOMER, "brand": {"name": "Test Shop"}, **(context or {})}
    return await client.start_workflow(
        SequenceWorkflow.run, RunInput(snapshot=snap, key=key, context=context, time_scale=time_scale),
        id=f"{snap.root}/{key}", task_queue=task_queue,
    )


def messages(db: Database) -> list[Message]:
    with db.session() as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


@dataclass(frozen=True)
class Scheduled:
    at: datetime
    workflow_id: str
    step: str
    channel: str
    template: str


async def sends(client: Client, *workflow_ids: str) -> list[Scheduled]:
    """Every send_message the given runs scheduled, with the (skipped) server time it happened."""
    found: list[Scheduled] = []
    for workflow_id in workflow_ids:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            if not event.HasField("activity_task_scheduled_event_attributes"):
                continue
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name != "send_message":
                continue
            [request] = await client.data_converter.decode(attrs.input.payloads, [SendRequest])
            found.append(Scheduled(event.event_time.ToDatetime(timezone.utc), workflow_id, request.step, request.channel, request.template))
    return sorted(found, key=lambda s: s.at)


def days(start: datetime, at: datetime) -> float:
    return round((at - start) / timedelta(days=1), 2)


async def result_of(env, workflow_id: str) -> RunStatus:
    """Await a run we did not start ourselves (a child, or one the router started), skipping time.

    The test environment skips time by itself only for handles its own start_workflow returned.
    """
    handle = env.client.get_workflow_handle(workflow_id, result_type=RunStatus)
    async with env.time_skipping_unlocked():
        return await handle.result()


async def until_step(env, workflow_id: str, path: str, attempts: int = 200) -> None:
    """Wait (in real time) until the run is at step `path`: its earlier activities are done."""
    import asyncio

    handle = env.client.get_workflow_handle(workflow_id)
    for _ in range(attempts):
        if (await handle.query("status", result_type=RunStatus)).current_step == path:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{workflow_id} never reached step {path}")
