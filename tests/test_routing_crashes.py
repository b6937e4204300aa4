"""Routing that cannot lose an event: a crash at any point of `route`, a slow store, a locked one.

The case every test here builds on: a store's `order.shipped` arrives before its `order.created`
(Shopify does not promise order). The shipment is stored with no run to hear it; the run the
order starts must get it, however routing the order is cut short.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from temporalio import client as temporal

from keepflow.http import intake
from keepflow.runtime import routing
from keepflow.runtime.events import EventIn
from keepflow.store import Database, Delivery, Event, Run
from tests.engine import CATALOG, running_worker
from tests.helpers import to_local_hour
from tests.test_webhooks import event, serving, signed


class Crash(BaseException):
    """The process dying mid-route: nothing after this point runs, and nothing catches it."""


def order_events() -> tuple[dict, dict]:
    order_id = f"O{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    created = event("order.created", order_id, occurred_at=now.isoformat())
    shipped = event("order.shipped", order_id, occurred_at=(now + timedelta(hours=20)).isoformat(),
                    data={"tracking_number": "TH123"})
    return created, shipped


async def heard(env, order_id: str) -> list[str]:
    """The outcomes of the order's fulfilment run's first four steps: a confirmation, the wait for
    its shipment, and the two messages after it. Four, so the run is in its long wait after them
    when the test ends, not in the middle of a send."""
    handle = env.client.get_workflow_handle(f"fulfilment/{order_id}")
    for _ in range(200):
        status = await handle.query("status")
        if len(status["steps_done"]) >= 4:
            break
        await asyncio.sleep(0.05)
    return [s["outcome"] for s in status["steps_done"]]


def routed_at(db: Database, event_id: str) -> datetime | None:
    with db.session() as session:
        return session.scalar(select(Event.routed_at).where(Event.id == event_id))


def run_row(db: Database, run_id: str) -> Run | None:
    with db.session() as session:
        return session.get(Run, run_id)


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Make routing die at `point`, once: the real step runs (or not) and then the process is gone."""
    crashed = False

    def once() -> None:
        nonlocal crashed
        if not crashed:
            crashed = True
            raise Crash(point)

    if point == "after start":
        real_start = routing.starts.start_run

        async def start_then_die(*args, **kwargs):
            started = await real_start(*args, **kwargs)
            once()
            return started
        monkeypatch.setattr(routing.starts, "start_run", start_then_die)
    elif point == "after catch-up":
        real_catch_up = routing._catch_up

        async def catch_up_then_die(*args, **kwargs):
            await real_catch_up(*args, **kwargs)
            once()
        monkeypatch.setattr(routing, "_catch_up", catch_up_then_die)
    elif point == "during the last write":
        real_settle = routing._note_and_mark

        def settle_dies(*args, **kwargs):
            once()
            return real_settle(*args, **kwargs)
        monkeypatch.setattr(routing, "_note_and_mark", settle_dies)
    else:
        raise AssertionError(point)


@pytest.mark.parametrize("point", ["after start", "after catch-up", "during the last write"])
async def test_a_crash_anywhere_in_route_loses_no_event(env, settings, db, fake, monkeypatch, point):
    await to_local_hour(env, 10)
    created, shipped = order_events()
    order_id = created["order"]["id"]
    async with running_worker(env, settings, db) as tq:
        assert (await routing.ingest(db, env.client, CATALOG, EventIn.model_validate(shipped), tq)).runs == 0
        crash_at(monkeypatch, point)
        with pytest.raises(Crash):
            await routing.ingest(db, env.client, CATALOG, EventIn.model_validate(created), tq)
        assert routed_at(db, created["id"]) is None, "a crashed routing must leave the event for the reconciler"
        # The process is back: its reconciler routes what was left unrouted.
        assert await routing.reconcile(db, env.client, CATALOG, tq, older_than=timedelta(0)) == 1
        assert routed_at(db, created["id"]) is not None
        assert await routing.reconcile(db, env.client, CATALOG, tq, older_than=timedelta(0)) == 0
        assert run_row(db, f"fulfilment/{order_id}") is not None, "the run must be in `runs` (reports, cool-downs)"
        assert (await heard(env, order_id))[1] == "received order.shipped"


@pytest.mark.parametrize("when", ["before", "after"])
async def test_an_event_that_comes_while_its_run_starts_reaches_it(env, settings, db, fake, when):
    """The shipment comes while the order's run is being started, its row already written. Before
    the run exists, its signal finds none and the catch-up after the start delivers it; once the
    run exists (its catch-up not yet read), the row sends the signal to the run."""
    await to_local_hour(env, 10)
    created, shipped = order_events()
    order_id = created["order"]["id"]
    answers = []

    async def ship() -> None:
        raw, headers = signed(shipped)
        answers.append(await http.post("/events", content=raw, headers=headers))

    class ShipmentDuringTheStart(temporal.Interceptor):
        def intercept_client(self, next: temporal.OutboundInterceptor) -> temporal.OutboundInterceptor:
            class Interleaving(temporal.OutboundInterceptor):
                async def start_workflow(self, input: temporal.StartWorkflowInput):
                    ours = input.id == f"fulfilment/{order_id}" and not answers
                    if ours and when == "before":
                        await ship()
                    handle = await super().start_workflow(input)
                    if ours and when == "after":
                        await ship()
                    return handle
            return Interleaving(next)

    client = temporal.Client(**{**env.client.config(), "interceptors": [ShipmentDuringTheStart()]})
    async with running_worker(env, settings, db) as tq:
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db, client=client) as (http, _app):
            raw, headers = signed(created)
            answer = await http.post("/events", content=raw, headers=headers)
            assert answer.status_code == 202 and answer.json()["started"] == [f"fulfilment/{order_id}"]
            [during] = answers
            assert during.status_code == 202
            assert during.json()["signalled"] == ([] if when == "before" else [f"fulfilment/{order_id}"])
            assert (await heard(env, order_id))[1] == "received order.shipped"


async def test_a_slow_store_answers_in_time_and_routing_finishes_later(env, settings, db, fake, monkeypatch):
    await to_local_hour(env, 10)
    created, shipped = order_events()
    order_id = created["order"]["id"]
    real_settle = routing._note_and_mark

    def slow_settle(*args, **kwargs):
        time.sleep(4)  # a SQLite write waiting on a lock
        return real_settle(*args, **kwargs)

    async with running_worker(env, settings, db) as tq:
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db) as (http, _app):
            raw, headers = signed(shipped)
            assert (await http.post("/events", content=raw, headers=headers)).status_code == 202
            monkeypatch.setattr(routing, "_note_and_mark", slow_settle)
            raw, headers = signed(created)
            began = time.monotonic()
            answer = await http.post("/events", content=raw, headers=headers)
            took = time.monotonic() - began
            assert answer.status_code == 202, answer.text
            assert took < 3, f"answered after {took:.1f} s; Shopify gives up at 5 s"
            assert answer.json()["routing"] == "in progress"
            for _ in range(200):
                if routed_at(db, created["id"]) is not None:
                    break
                await asyncio.sleep(0.05)
            assert routed_at(db, created["id"]) is not None
            assert (await heard(env, order_id))[1] == "received order.shipped"


async def test_waits_for_the_lock_never_add_up_past_the_answer_deadline(env, settings, db, fake, monkeypatch):
    """Storing waited out most of the lock timeout, then marking the event routed (the other
    write) waited for the next writer: the answer still leaves in time, and routing finishes after it."""
    await to_local_hour(env, 10)
    created, _ = order_events()
    order_id = created["order"]["id"]
    real_accept, real_settle = routing.accept, routing._note_and_mark

    def accept_after_a_wait(*args, **kwargs):
        time.sleep(2.9)  # the other writer let go just before the 3 s lock timeout
        return real_accept(*args, **kwargs)

    def settle_after_a_wait(*args, **kwargs):
        time.sleep(2.9)  # and the next one took the lock before this write
        return real_settle(*args, **kwargs)

    async with running_worker(env, settings, db) as tq:
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db) as (http, _app):
            monkeypatch.setattr(routing, "accept", accept_after_a_wait)
            monkeypatch.setattr(routing, "_note_and_mark", settle_after_a_wait)
            raw, headers = signed(created)
            began = time.monotonic()
            answer = await http.post("/events", content=raw, headers=headers)
            took = time.monotonic() - began
            assert answer.status_code == 202, answer.text
            assert took < intake.ANSWER_WITHIN + 0.5, f"answered after {took:.1f} s; Shopify gives up at 5 s"
            assert answer.json()["routing"] == "in progress"
            for _ in range(200):
                if routed_at(db, created["id"]) is not None:
                    break
                await asyncio.sleep(0.05)
            assert routed_at(db, created["id"]) is not None
            assert run_row(db, f"fulfilment/{order_id}") is not None


@contextmanager
def write_lock_held(db: Database) -> Iterator[Callable[[], None]]:
    """Another process holding the write lock on the events table; yields a way to let go."""
    if db.engine.dialect.name == "sqlite":
        holder = sqlite3.connect(db.engine.url.database, timeout=1)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield holder.rollback
        finally:
            holder.close()
        return
    with db.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        try:
            yield transaction.rollback
        finally:
            if transaction.is_active:
                transaction.rollback()


async def test_a_locked_database_is_503_with_retry_after_and_nothing_written(env, settings, db, fake):
    created, _ = order_events()
    impatient = Database(db.url, lock_timeout=timedelta(seconds=0.5))
    try:
        async with running_worker(env, settings, db) as tq:
            async with serving(env, settings.model_copy(update={"task_queue": tq}), impatient) as (http, _app):
                raw, headers = signed(created)
                with write_lock_held(db) as let_go:
                    answer = await http.post("/events", content=raw, headers=headers)
                    let_go()
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"].isdigit()
                assert "database is busy" in answer.json()["detail"]
                with db.session() as session:
                    assert session.get(Event, created["id"]) is None
                    assert session.scalar(select(func.count()).select_from(Delivery)) == 0
                again = await http.post("/events", content=raw, headers=headers)
                assert again.status_code == 202, again.text
    finally:
        impatient.dispose()
