"""Intake under faults: events over HTTP into the public app while the stack's processes are
SIGKILLed (Temporal's dev server killed mid-run on its own is in test_server_restart.py).

A sender that behaves like Shopify posts signed events to `/events` at a steady rate: each
order's `order.created` and its `order.shipped`, a third of the shipments sent before their
order. It gives every attempt 5 s and retries any other answer, or none, with the same
webhook-id until it gets a 2xx. Meanwhile the worker is SIGKILLed twice, Temporal's dev server
twice, the public app twice (once while Temporal is down), and another writer holds the
database's write lock in long bursts for a while. Every event acknowledged is stored and routed,
every order has one run that completes having heard its shipment, no message costs more than one
request at the provider, and no answer takes 5 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keepflow.http.signing import sign
from keepflow.runtime.payloads import RunStatus
from keepflow.store import Database, Event, Run
from tests.faults.stack import SHIPMENT_PATH, WEBHOOK_SECRET, Stack

# -- 1. events in while everything is killed ------------------------------------------------

ORDERS = 36
POST_OVER = 36.0  # seconds over which the orders are sent, evenly
# Every third order's shipment is sent SHIP_BEFORE seconds before the order itself (Shopify does
# not promise order); the others SHIP_AFTER seconds after it.
OUT_OF_ORDER_EVERY, SHIP_BEFORE, SHIP_AFTER = 3, 0.5, 3.0
SHOPIFY_TIMEOUT = 5.0  # Shopify's limit: an answer later than this is a failed delivery
RETRY_AFTER = 1.0  # the sender's pause between attempts (Shopify's is longer; the test has minutes, not hours)
DELIVER_WITHIN = 75.0  # seconds a delivery may take, retries and all, before the sender gives up
SERVER_DOWN_FOR = 5.0
LOCK_FOR, LOCK_BURST, LOCK_GAP = 8.0, 2.8, 0.05  # another writer holds the database's write lock
SEND_HOLD = 1.0  # seconds the fake holds each accepted send's answer, so a worker kill finds sends in flight
# (seconds into the posting, what is SIGKILLed or held up). The app's first kill falls in Temporal's
# first outage: what it had stored but not routed is left to its successor's reconciler, which
# starts before Temporal is back. Temporal's second outage is one the app lives through, with a
# client connected before it. Another writer holds the database's write lock for just under the
# intake's lock timeout, again and again: storing waits for it, and so does what routing writes.
FAULTS = [(5.0, "worker"), (10.0, "server"), (12.0, "app"), (20.0, "database"), (24.0, "worker"), (30.0, "server"),
          (36.0, "app")]


def order_id(i: int) -> str:
    return f"r{i:05d}"


def order_events(stack: Stack, i: int, at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """Order i's `order.created` (its id is the run's id, which the texts' bodies start with) and
    its `order.shipped`, which happened a minute later whenever it is sent."""
    customer = {"id": f"cust-{i:05d}", "email": f"r{i}@example.com", "phone": f"+66812{i:06d}",
                "first_name": f"R{i}", "locale": "en", "timezone": "Asia/Bangkok",
                "consents": {"email": True, "sms": True}}
    created = {"id": stack.run_id(i), "type": "order.created", "occurred_at": at.isoformat(), "customer": customer,
               "order": {"id": order_id(i), "total": "25.00", "currency": "THB"}}
    shipped = {"id": f"shipment/{order_id(i)}", "type": "order.shipped",
               "occurred_at": (at + timedelta(minutes=1)).isoformat(), "order": {"id": order_id(i)},
               "data": {"tracking_number": f"TH{i:08d}"}}
    return created, shipped


@dataclass
class Attempt:
    event_id: str
    began: float  # seconds into the posting
    seconds: float
    outcome: str  # the status code, "timeout" (no answer within 5 s), or the connection error
    routing: str | None = None  # what a 2xx said of routing: "done" or "in progress"

    @property
    def answered(self) -> bool:
        return self.outcome.isdigit()


@dataclass
class Sender:
    """Shopify's side: one delivery per event, retried with the same webhook-id until a 2xx."""

    url: str
    began: float = field(default_factory=time.monotonic)
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, float] = field(default_factory=dict)  # event id -> seconds into the posting
    gave_up: dict[str, str] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.began

    async def deliver(self, http: httpx.AsyncClient, event: dict[str, Any], at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        body = json.dumps(event).encode()
        webhook_id = f"msg_{uuid.uuid4().hex}"
        deadline = self.now() + DELIVER_WITHIN
        while True:
            # Signed again each time, as a sender's retry is: a fresh timestamp, the same id.
            headers = {"content-type": "application/json", **sign(body, WEBHOOK_SECRET, message_id=webhook_id)}
            attempt = Attempt(event["id"], self.now(), 0.0, "")
            try:
                response = await asyncio.wait_for(http.post(f"{self.url}/events", content=body, headers=headers),
                                                  SHOPIFY_TIMEOUT)
                attempt.outcome = str(response.status_code)
                if response.is_success:
                    attempt.routing = response.json().get("routing")
            except asyncio.TimeoutError:
                attempt.outcome = "timeout"
            except httpx.TransportError as err:
                attempt.outcome = type(err).__name__
            attempt.seconds = self.now() - attempt.began
            self.attempts.append(attempt)
            if attempt.answered and 200 <= int(attempt.outcome) < 300:
                self.acked[event["id"]] = self.now()
                return
            if self.now() > deadline:
                self.gave_up[event["id"]] = f"last attempt: {attempt.outcome}"
                return
            await asyncio.sleep(RETRY_AFTER)

    def answers(self) -> list[float]:
        return sorted(a.seconds for a in self.attempts if a.answered)

    def report(self) -> str:
        times = self.answers()
        outcomes = Counter(f"{a.outcome} {a.routing}" if a.routing else a.outcome for a in self.attempts)
        retried = Counter(a.event_id for a in self.attempts)
        return "\n".join([
            f"attempts: {len(self.attempts)} for {len(retried)} events; events that needed more than one: "
            f"{sum(1 for n in retried.values() if n > 1)} (most attempts for one: {max(retried.values())})",
            "outcomes: " + ", ".join(f"{k} x{n}" for k, n in sorted(outcomes.items())),
            f"answer times (s): p50 {percentile(times, 50):.3f}, p99 {percentile(times, 99):.3f}, "
            f"max {times[-1]:.3f}; over {SHOPIFY_TIMEOUT:.0f} s: {sum(1 for t in times if t > SHOPIFY_TIMEOUT)} "
            f"answered late + {outcomes['timeout']} not answered in time",
        ])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


class Faults:
    """Faults at fixed times into the posting, each in its own task, so an outage can overlap another."""

    def __init__(self, stack: Stack, sender: Sender):
        self.stack, self.sender = stack, sender
        self.done: list[tuple[float, str]] = []  # (seconds into the posting, what was done)

    def schedule(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._at(at, self._kinds[what])) for at, what in FAULTS]

    async def _at(self, at: float, fault: Callable[[], Awaitable[str]]) -> None:
        await asyncio.sleep(max(0.0, at - self.sender.now()))
        began = self.sender.now()
        what = await fault()
        self.done.append((began, f"{what} (back after {self.sender.now() - began:.1f} s)"))

    async def worker(self) -> str:
        victim = self.stack.workers[-1]
        victim.kill()
        await victim.exited(10)
        await self.stack.start_worker()
        return f"worker {victim.pid} SIGKILLed, a new one started"

    async def server(self) -> str:
        await self.stack.kill_server(SERVER_DOWN_FOR)
        return f"Temporal dev server SIGKILLed, down {SERVER_DOWN_FOR:.0f} s, started again on its file"

    async def app(self) -> str:
        victim = self.stack.apps[-1]
        victim.kill()
        await victim.exited(10)
        await self.stack.start_public_app()  # ready once /healthz is 200: after Temporal is back
        return f"public app {victim.pid} SIGKILLed, a new one started"

    async def database(self) -> str:
        await self.stack.hold_database_lock(LOCK_FOR, LOCK_BURST, LOCK_GAP)
        return (f"another writer held the database's write lock {LOCK_BURST} s at a time, "
                f"{LOCK_GAP} s apart, for {LOCK_FOR:.0f} s")

    @property
    def _kinds(self) -> dict[str, Callable[[], Awaitable[str]]]:
        return {"worker": self.worker, "server": self.server, "app": self.app, "database": self.database}


def stored_events(database_url: str) -> dict[str, tuple[datetime, datetime | None]]:
    """Each stored event's received_at and routed_at."""
    db = Database(database_url)
    try:
        with db.session() as session:
            return {e.id: (e.received_at, e.routed_at) for e in session.scalars(select(Event))}
    finally:
        db.dispose()


def run_rows(database_url: str) -> dict[str, str | None]:
    """Each noted run and the event noted as its trigger."""
    db = Database(database_url)
    try:
        with db.session() as session:
            return {r.id: r.trigger_event_id for r in session.scalars(select(Run))}
    finally:
        db.dispose()


async def all_routed(stack: Stack, event_ids: set[str], timeout: float) -> dict[str, tuple[datetime, datetime | None]]:
    """Wait (bounded) until every one of `event_ids` is stored and routed; the events as they stand."""
    deadline = time.monotonic() + timeout
    while True:
        events = stored_events(stack.database_url)
        if all(events.get(e, (None, None))[1] is not None for e in event_ids) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.5)


async def executions(stack: Stack, expected: int, timeout: float = 20.0) -> Counter[str]:
    """Workflow executions on the stack's task queue, per workflow id (visibility lags: wait, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = Counter([w.id async for w in stack.client.list_workflows(f"TaskQueue = '{stack.task_queue}'")])
        if sum(ids.values()) >= expected or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.5)


def reconciled(stack: Stack) -> int:
    """Events the public apps' reconcilers routed, from their logs."""
    return sum(int(n) for app in stack.apps for n in re.findall(r"reconciler routed (\d+) stored event", app.log()))


@pytest.mark.timeout(240)
async def test_events_in_while_worker_server_and_app_are_killed(tmp_path):
    async with Stack(tmp_path / "stack", shipment=True) as stack:
        stack.fake.on_accept = lambda api, record: time.sleep(SEND_HOLD)
        await stack.start_worker()
        await stack.start_public_app()
        sender = Sender(stack.app_url)
        start = datetime.now(timezone.utc)
        plan: list[tuple[float, dict[str, Any]]] = []
        for i in range(ORDERS):
            at = 1.0 + i * POST_OVER / ORDERS
            created, shipped = order_events(stack, i, start + timedelta(seconds=at))
            plan.append((at, created))
            plan.append((at - SHIP_BEFORE if i % OUT_OF_ORDER_EVERY == 0 else at + SHIP_AFTER, shipped))

        faults = Faults(stack, sender)
        async with httpx.AsyncClient(timeout=SHOPIFY_TIMEOUT + 1) as http:
            sender.began = time.monotonic()
            kills = faults.schedule()
            await asyncio.gather(*(sender.deliver(http, event, at) for at, event in plan))
            await asyncio.gather(*kills)
        posting = sender.now()
        print(f"\nposting and faults over after {posting:.0f} s:")
        print("\n".join(f"  {at:5.1f} s  {what}" for at, what in sorted(faults.done)))
        print(sender.report())

        # Every event the sender was told was received is stored, and routed (by its own request,
        # its routing carried on after the answer, or a reconciler).
        assert sender.gave_up == {}
        acked = set(sender.acked)
        assert acked == {event["id"] for _, event in plan}
        events = await all_routed(stack, acked, timeout=45)
        routed_late = sorted(e for e in acked if events.get(e, (None, None))[1] is None)
        print(f"routed by a reconciler: {reconciled(stack)} events; all routed {sender.now() - posting:.0f} s "
              f"after the posting; unrouted: {routed_late}")
        assert routed_late == []
        # The out-of-order case really happened: shipments stored before their order.
        early = [i for i in range(ORDERS) if events[f"shipment/{order_id(i)}"][0] < events[stack.run_id(i)][0]]
        print(f"shipments stored before their order: {len(early)} of {ORDERS}")
        assert len(early) >= ORDERS // OUT_OF_ORDER_EVERY // 2

        # One run per order, noted in `runs`, and each completes having heard its shipment.
        handles = [stack.client.get_workflow_handle(stack.run_id(i), result_type=RunStatus) for i in range(ORDERS)]
        done, failed = await stack.results(handles, 120)
        print(f"runs completed {sender.now() - posting:.0f} s after the posting; not completed: {len(failed)}")
        assert failed == {}
        assert {k: r.exit_reason for k, r in done.items() if r.exit_reason != "completed"} == {}
        for run_id, status in done.items():
            assert status.steps_done[-1].path == SHIPMENT_PATH, run_id
            assert status.steps_done[-1].outcome == "received order.shipped", run_id
        assert await executions(stack, ORDERS) == Counter({h.id: 1 for h in handles})
        assert run_rows(stack.database_url) == {h.id: h.id for h in handles}  # its trigger: the order.created

        # No message twice (email whose worker died mid-send is `unknown`, with at most one request).
        requests, rows = stack.requests_per_key(), stack.rows()
        expected = stack.expected_keys(ORDERS)
        statuses = Counter((r.channel, r.status, requests.get(k, 0)) for k, r in rows.items())
        print("messages (channel, status, requests at the provider): "
              + ", ".join(f"{c} {s} {n}: {count}" for (c, s, n), count in sorted(statuses.items())))
        assert set(rows) == set(expected)
        assert set(requests) <= set(expected)
        assert {k: n for k, n in requests.items() if n > 1} == {}
        for key, row in rows.items():
            assert row.status == "sent" or (row.channel, row.status) == ("email", "unknown"), (key, row)

        # Shopify's limit: no answer, however busy or recovering the stack, later than 5 s.
        assert [a for a in sender.attempts if a.outcome == "timeout"] == []
        assert sender.answers()[-1] < SHOPIFY_TIMEOUT
