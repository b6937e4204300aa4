"""Win-back: the inactivity scan, goals and cool-down, on the time-skipping server."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from temporalio import client as temporal
from temporalio.client import WorkflowExecutionStatus

from keepflow.insights import rfm
from keepflow.runtime.events import EventIn
from keepflow.runtime.payloads import ScanInput, ScanTotals
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from keepflow.store import Coupon, Customer, Run
from tests.engine import CATALOG, running_worker, time_skipping_server
from tests.helpers import messages, result_of, to_local_hour, until_step
from workflows.inactivity import InactivityScan



@pytest.fixture
async def env():
    """A server of each test's own: these tests skip months, and the test server's clock can
    stall on what earlier tests' runs left behind (see tests.engine.end_leftover_runs)."""
    async with await time_skipping_server() as own:
        yield own


def add_customer(db, last_seen_at: datetime, consents=None, **fields) -> str:
    customer_id = f"wb-{uuid.uuid4().hex[:8]}"
    with db.session() as session:
        session.add(Customer(id=customer_id, email=f"{customer_id}@example.com", phone="+66811112222",
                             first_name="Mali", locale="th", consents=consents if consents is not None else
                             {"email": True, "sms": True}, attributes={}, last_seen_at=last_seen_at, **fields))
    return customer_id


async def scan(env, tq: str, page_size: int = 500) -> ScanTotals:
    return await env.client.execute_workflow(
        InactivityScan.run, ScanInput(page_size=page_size), id=f"scan-{uuid.uuid4().hex[:6]}", task_queue=tq)


def runs(db, customer_id: str) -> list[Run]:
    with db.session() as session:
        return list(session.scalars(select(Run).where(Run.customer_id == customer_id)))


async def test_scan_starts_winback_only_for_customers_past_the_threshold(env, settings, db):
    now = await env.get_current_time()
    gone = add_customer(db, now - timedelta(days=61))
    recent = add_customer(db, now - timedelta(days=59))
    unconsented = add_customer(db, now - timedelta(days=200), consents={"email": False})
    async with running_worker(env, settings, db) as tq:
        totals = await scan(env, tq, page_size=2)  # several pages: the cursor must carry on
        assert [r.id for r in runs(db, gone)] == [f"winback/{gone}"]
        assert runs(db, recent) == [] and runs(db, unconsented) == []
        assert totals.started == 1 and totals.skipped == {"no marketing consent": 1}
        assert totals.scanned == 2  # the one seen 59 days ago is not even read


async def test_a_scan_page_cut_short_after_a_row_is_written_starts_the_run_when_retried(env, settings, db):
    """The row is written before the start (keepflow.runtime.starts); the start then fails. The
    page's retry takes that row for its own, not for a cool-down, and starts the run."""
    now = await env.get_current_time()
    gone = add_customer(db, now - timedelta(days=61))
    refused: list[str] = []

    class FirstStartLost(temporal.Interceptor):
        def intercept_client(self, next: temporal.OutboundInterceptor) -> temporal.OutboundInterceptor:
            class Losing(temporal.OutboundInterceptor):
                async def start_workflow(self, input: temporal.StartWorkflowInput):
                    if input.id == f"winback/{gone}" and not refused:
                        refused.append(input.id)
                        raise ConnectionError("the connection to Temporal dropped")
                    return await super().start_workflow(input)
            return Losing(next)

    client = temporal.Client(**{**env.client.config(), "interceptors": [FirstStartLost()]})
    async with running_worker(env, settings, db, client=client) as tq:
        totals = await scan(env, tq)
        assert refused == [f"winback/{gone}"]
        assert totals.started == 1 and totals.skipped == {}
        assert [r.id for r in runs(db, gone)] == [f"winback/{gone}"]


async def test_an_order_ends_the_run_as_converted_and_nothing_more_is_sent(env, settings, db, fake):
    now = await to_local_hour(env, 10)  # the offer SMS is marketing: it keeps quiet hours
    customer_id = add_customer(db, now - timedelta(days=61))
    async with running_worker(env, settings, db) as tq:
        await scan(env, tq)
        await until_step(env, f"winback/{customer_id}", "3")  # offer sent, waiting 4 days for the reminder
        await env.sleep(timedelta(days=2))
        with db.session() as session:
            code = session.scalars(select(Coupon.code).where(Coupon.customer_id == customer_id)).one()
        order = EventIn.model_validate({
            "id": f"order-{customer_id}", "type": "order.created", "occurred_at": (now + timedelta(days=2)).isoformat(),
            "customer": {"id": customer_id},
            "order": {"id": f"o-{customer_id}", "total": "990", "currency": "THB", "items": [],
                      "discount_codes": [code.lower()]}})
        routed = await ingest(db, env.client, CATALOG, order, tq)
        assert routed.signalled == [f"winback/{customer_id}"]
        result = await result_of(env, f"winback/{customer_id}")
    assert result.exit_reason == "converted: order.created"
    sent = [(m.channel, m.template) for m in messages(db) if m.sequence_id == "winback"]
    assert sent == [("email", "winback_offer"), ("sms", "winback_offer")]  # no reminder, no last chance
    [run] = [r for r in runs(db, customer_id) if r.sequence_id == "winback"]
    assert run.converted_event_id == f"order-{customer_id}"
    with db.session() as session:
        coupon = session.get(Coupon, code)
        assert coupon.redeemed_order_id == f"o-{customer_id}"  # used once, by this order
    assert rfm.profile(db, customer_id)["level"] == "first_time"  # rescored on the order


async def test_second_scan_and_cool_down_start_nothing_new(env, settings, db):
    now = await to_local_hour(env, 10)
    customer_id = add_customer(db, now - timedelta(days=100))
    async with running_worker(env, settings, db) as tq:
        first = await scan(env, tq)
        second = await scan(env, tq)  # the run is still going (and so, by its start, cooling down)
        assert (first.started, second.started) == (1, 0)
        assert second.skipped in ({"already in a run": 1}, {"cool-down": 1})
        await until_step(env, f"winback/{customer_id}", "3")
        await env.sleep(timedelta(days=7))  # the run ends after its last-chance email on day 6
        run = await env.client.get_workflow_handle(f"winback/{customer_id}").describe()
        assert run.status == WorkflowExecutionStatus.COMPLETED
        again = await scan(env, tq)  # finished, but within the 90-day cool-down
        assert (again.started, again.skipped) == (0, {"cool-down": 1})
        await env.sleep(timedelta(days=91))
        later = await scan(env, tq)  # still inactive, cool-down over: a new win-back
        assert later.started == 1
    assert len(runs(db, customer_id)) == 1  # the newer run replaced the older row


def test_a_coupon_is_redeemed_once_and_never_after_it_expires(db):
    from keepflow.runtime.routing import store

    now = datetime.now(timezone.utc)
    with db.session() as session:
        session.add(Coupon(code="BACK-VALID123", key="winback/x:0", customer_id="c", percent=20,
                           created_at=now - timedelta(days=1), expires_at=now + timedelta(days=6)))
        session.add(Coupon(code="BACK-OLD12345", key="winback/y:0", customer_id="c", percent=20,
                           created_at=now - timedelta(days=9), expires_at=now - timedelta(days=2)))

    def order(n: int, *codes: str) -> EventIn:
        return EventIn.model_validate({
            "id": f"o{n}", "type": "order.created", "occurred_at": now.isoformat(), "customer": {"id": "c"},
            "order": {"id": f"o{n}", "total": "10", "currency": "THB", "discount_codes": list(codes)}})

    store(db, order(1, "back-valid123", "BACK-OLD12345"))
    store(db, order(2, "BACK-VALID123"))
    with db.session() as session:
        assert session.get(Coupon, "BACK-VALID123").redeemed_order_id == "o1"
        assert session.get(Coupon, "BACK-OLD12345").redeemed_at is None
