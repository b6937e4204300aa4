"""Every run starts one way (`keepflow.runtime.starts`): the router, a `start:` step and the inactivity
scan give it the same id, memo and `runs` row, and treat a run that exists already alike."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select
from temporalio import client as temporal

from keepflow.runtime.events import EventIn
from keepflow.runtime.payloads import RunInput
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from keepflow.runtime.starts import start_run
from keepflow.store import Run
from tests.engine import running_worker
from tests.helpers import CUSTOMER, result_of, snapshot
from tests.test_winback import add_customer, scan
from worker import build_worker

ONE_DAY = """
sequences:
  - id: one_day
    category: transactional
    steps:
      - wait: 1d
"""

THREE_WAYS = """
sequences:
  - id: parent
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - start: child
  - id: child
    category: transactional
    key: order.id
    steps:
      - wait: 1d
  - id: lapsed
    category: transactional
    trigger: {inactive_for: 60d}
    steps:
      - wait: 1d
"""


class RowAtStart(temporal.Interceptor):
    """For each workflow a client starts, whether its `runs` row was there as the start left."""

    def __init__(self, db) -> None:
        self.db, self.seen = db, {}

    def intercept_client(self, next: temporal.OutboundInterceptor) -> temporal.OutboundInterceptor:
        watch = self

        class Watching(temporal.OutboundInterceptor):
            async def start_workflow(self, input: temporal.StartWorkflowInput):
                watch.seen[input.id] = row(watch.db, input.id) is not None
                return await super().start_workflow(input)

        return Watching(next)


def row(db, run_id: str) -> Run | None:
    with db.session() as session:
        return session.get(Run, run_id)


async def memo(env, run_id: str) -> dict:
    return await (await env.client.get_workflow_handle(run_id).describe()).memo()


async def test_start_run_starts_once_records_the_run_and_reuses_a_closed_id_only_when_asked(env, settings, db):
    key = uuid.uuid4().hex[:6]
    snap = snapshot(ONE_DAY)
    run = RunInput(snapshot=snap, key=key, context={"customer": CUSTOMER, "event": {"id": f"e-{key}"}})
    async with running_worker(env, settings, db) as tq:
        assert await start_run(env.client, run, tq, db=db) == f"one_day/{key}"
        assert await memo(env, f"one_day/{key}") == {"sequence": "one_day", "definition_hash": snap.hash}
        first = row(db, f"one_day/{key}")
        assert (first.sequence_id, first.customer_id, first.trigger_event_id) == ("one_day", "c-1", f"e-{key}")
        # Running: no second run under the id, whatever the starter allows, and the row stays.
        assert await start_run(env.client, run, tq, db=db) is None
        assert await start_run(env.client, run, tq, db=db, allow_rerun=True) is None
        assert row(db, f"one_day/{key}").started_at == first.started_at
        await result_of(env, f"one_day/{key}")
        # Closed: only a starter that allows it (the scan, after the cool-down) starts it again.
        assert await start_run(env.client, run, tq, db=db) is None
        later = (await env.get_current_time()) + timedelta(hours=1)
        assert await start_run(env.client, run, tq, db=db, started_at=later, allow_rerun=True) == f"one_day/{key}"
        assert row(db, f"one_day/{key}").started_at.replace(tzinfo=later.tzinfo) == later
        await result_of(env, f"one_day/{key}")


async def test_the_router_a_start_step_and_the_scan_start_runs_alike(env, settings, db, tmp_path):
    path = tmp_path / "sequences.yaml"
    path.write_text(THREE_WAYS)
    catalog = load_catalog(path, tmp_path / "templates")
    order_id = f"o-{uuid.uuid4().hex[:6]}"
    tq = f"test-{uuid.uuid4()}"
    now = await env.get_current_time()
    lapsed_customer = add_customer(db, now - timedelta(days=61))
    # Each run has its row before it exists: an event that finds no row is one its starter's
    # catch-up delivers (keepflow.runtime.routing).
    rows_at_start = RowAtStart(db)
    client = temporal.Client(**{**env.client.config(), "interceptors": [rows_at_start]})
    async with build_worker(client, settings, db, task_queue=tq, catalog=catalog):
        event = EventIn.model_validate({
            "id": f"created-{order_id}", "type": "order.created", "occurred_at": now.isoformat(),
            "customer": {"id": "c-1"}, "order": {"id": order_id, "total": "10", "currency": "THB", "items": []}})
        assert (await ingest(db, client, catalog, event, tq)).started == [f"parent/{order_id}"]
        assert (await result_of(env, f"parent/{order_id}")).steps_done[0].outcome == f"started child/{order_id}"
        totals = await scan(env, tq)
        # The same order announced again (another event id): the run exists, nothing starts.
        again = event.model_copy(update={"id": f"again-{order_id}"})
        assert (await ingest(db, env.client, catalog, again, tq)).started == []
        for run_id in (f"child/{order_id}", f"lapsed/{lapsed_customer}"):
            await result_of(env, run_id)
    assert totals.started == 1
    assert rows_at_start.seen == {f"parent/{order_id}": True, f"child/{order_id}": True,
                                  f"lapsed/{lapsed_customer}": True}
    parent_hash = catalog.snapshot("parent").hash
    # A started sequence carries its starter's snapshot, so its hash is the starter's.
    assert await memo(env, f"parent/{order_id}") == {"sequence": "parent", "definition_hash": parent_hash, "trigger": event.id}
    assert await memo(env, f"child/{order_id}") == {"sequence": "child", "definition_hash": parent_hash}
    assert await memo(env, f"lapsed/{lapsed_customer}") == {
        "sequence": "lapsed", "definition_hash": catalog.snapshot("lapsed").hash}
    with db.session() as session:
        rows = {r.id: r for r in session.scalars(select(Run).where(
            Run.id.in_([f"parent/{order_id}", f"child/{order_id}", f"lapsed/{lapsed_customer}"])))}
    assert {(r.id, r.sequence_id, r.customer_id, r.trigger_event_id) for r in rows.values()} == {
        (f"parent/{order_id}", "parent", "c-1", f"created-{order_id}"),
        (f"child/{order_id}", "child", "c-1", f"created-{order_id}"),
        (f"lapsed/{lapsed_customer}", "lapsed", lapsed_customer, rows[f"lapsed/{lapsed_customer}"].trigger_event_id),
    }
    assert rows[f"lapsed/{lapsed_customer}"].trigger_event_id.startswith(f"inactive:{lapsed_customer}:")
