"""`reentry: {after: ...}`: a customer-keyed sequence triggered per order lets the customer in again
once their last run has ended and `after` has passed since the event that started it; without it,
one run ever. On the time-skipping server, with the router as production runs it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus

from keepflow.runtime import routing
from keepflow.runtime.events import EventIn
from keepflow.runtime.registry import load_catalog
from keepflow.store import Run
from tests.engine import time_skipping_server
from tests.helpers import result_of
from tests.test_routing_crashes import Crash, crash_at
from worker import build_worker

SEQUENCES = """
sequences:
  - id: loyal
    category: transactional
    trigger: order.created
    key: customer.id
    reentry: {after: 2d}
    steps:
      - wait: 1d
  - id: once
    category: transactional
    trigger: order.created
    key: customer.id
    steps:
      - wait: 1d
"""


def order(customer_id: str, n: int, at: datetime) -> EventIn:
    return EventIn.model_validate({
        "id": f"order-{customer_id}-{n}", "type": "order.created", "occurred_at": at.isoformat(),
        "customer": {"id": customer_id},
        "order": {"id": f"o-{customer_id}-{n}", "total": "10", "currency": "THB", "items": []}})


def started_at(db, run_id: str) -> tuple[datetime, str | None]:
    with db.session() as session:
        row = session.get(Run, run_id)
        assert row is not None
        return row.started_at, row.trigger_event_id


@pytest.fixture
async def env():
    """A server of each test's own: these tests read the clock between runs, and the shared one can
    be left running free by an earlier test (after tests/test_personal_data.py it was ten years on
    by the time a one-day run had ended)."""
    async with await time_skipping_server() as own:
        yield own


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "sequences.yaml"
    path.write_text(SEQUENCES)
    return load_catalog(path, tmp_path / "templates")


async def test_a_customer_enters_again_only_after_the_window_and_once_their_run_has_ended(
        env, settings, db, catalog):
    customer = f"c-{uuid.uuid4().hex[:8]}"
    loyal, once = f"loyal/{customer}", f"once/{customer}"
    tq = f"test-{uuid.uuid4()}"
    async with build_worker(env.client, settings, db, task_queue=tq, catalog=catalog):
        # The server's clock well ahead of this process's, as after earlier tests: the window is
        # counted between the events' own times, never against when routing ran.
        await env.sleep(timedelta(days=5))
        first = await routing.ingest(db, env.client, catalog, order(customer, 1, await env.get_current_time()), tq)
        assert first.started == [loyal, once]
        # Their run is still going: a second order starts nothing, reentry or not.
        second = await routing.ingest(db, env.client, catalog, order(customer, 2, await env.get_current_time()), tq)
        assert second.started == []
        await result_of(env, loyal)
        await result_of(env, once)
        # Ended, but a day after it started: within the two days.
        third = await routing.ingest(db, env.client, catalog, order(customer, 3, await env.get_current_time()), tq)
        assert third.started == []
        await env.sleep(timedelta(days=2))
        fourth = order(customer, 4, await env.get_current_time())
        assert (await routing.ingest(db, env.client, catalog, fourth, tq)).started == [loyal]
        assert started_at(db, loyal)[1] == fourth.id  # the newer run replaces the row
        await result_of(env, loyal)
    # Without reentry, nothing changed: one run, the first.
    assert started_at(db, once)[1] == f"order-{customer}-1"


async def test_an_order_routed_again_after_a_crash_starts_no_second_run(env, settings, db, catalog, monkeypatch):
    customer = f"c-{uuid.uuid4().hex[:8]}"
    loyal = f"loyal/{customer}"
    tq = f"test-{uuid.uuid4()}"
    async with build_worker(env.client, settings, db, task_queue=tq, catalog=catalog):
        await routing.ingest(db, env.client, catalog, order(customer, 1, await env.get_current_time()), tq)
        await result_of(env, loyal)
        await result_of(env, f"once/{customer}")
        await env.sleep(timedelta(days=3))
        # The new run starts, and the process dies before `runs` notes it: the row still says the
        # first run started three days ago, so the row alone would let the order in again.
        crash_at(monkeypatch, "during the last write")
        with pytest.raises(Crash):
            await routing.ingest(db, env.client, catalog, order(customer, 2, await env.get_current_time()), tq)
        assert started_at(db, loyal)[1] == f"order-{customer}-1"
        handle = env.client.get_workflow_handle(loyal)
        reentered = (await handle.describe()).run_id
        await result_of(env, loyal)  # it has ended when the reconciler routes the order again
        assert await routing.reconcile(db, env.client, catalog, tq, older_than=timedelta(0)) == 1
        description = await handle.describe()
        assert (description.run_id, description.status) == (reentered, WorkflowExecutionStatus.COMPLETED)
        assert started_at(db, loyal)[1] == f"order-{customer}-2"
