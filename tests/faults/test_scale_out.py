"""Scaled out: `keepflow serve --workers 2` and two worker processes on one task queue. A sender
that retries as Shopify does delivers every order's events twice at once, on separate connections
that the two HTTP processes share between them: each event is stored and routed once, each order
has one run that hears its shipment, and each message costs one request at the provider."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import func, select

from keepflow.http.signing import sign
from keepflow.runtime.payloads import RunStatus
from keepflow.store import Database, Event, Run
from tests.faults.stack import WEBHOOK_SECRET, Stack
from tests.faults.test_intake_faults import order_events

ORDERS = 24


async def deliver_twice(url: str, event: dict) -> list[dict]:
    """The same delivery (one webhook-id) sent twice at the same moment, each on its own connection."""
    body = json.dumps(event).encode()
    headers = {"content-type": "application/json", **sign(body, WEBHOOK_SECRET, message_id=f"msg_{uuid.uuid4().hex}")}

    async def once() -> dict:
        async with httpx.AsyncClient(timeout=30) as http:  # a connection of its own: either process may take it
            answer = await http.post(f"{url}/events", content=body, headers=headers)
            assert answer.is_success, answer.text
            return {**answer.json(), "status": answer.status_code}

    return list(await asyncio.gather(once(), once()))


# Well past its time alone: `make faults` runs it beside three other stacks.
@pytest.mark.timeout(180)
async def test_two_http_processes_and_two_workers_route_each_event_once(tmp_path):
    async with Stack(tmp_path, wait="1s", shipment=True) as stack:
        await stack.start_worker()
        await stack.start_worker()
        app = await stack.start_public_app(processes=2)
        for _ in range(300):  # /healthz answered once the first process was up; wait for the second
            if app.log().count("Application startup complete") == 2:
                break
            await asyncio.sleep(0.1)
        assert len(set(re.findall(r"Started server process \[(\d+)\]", app.log()))) == 2, app.log()[-2000:]
        now = datetime.now(timezone.utc)
        answers = []
        for i in range(ORDERS):
            created, shipped = order_events(stack, i, now)
            answers += await asyncio.gather(deliver_twice(stack.app_url, created), deliver_twice(stack.app_url, shipped))
        # Of each pair, the one that stored it is no duplicate; the other, whatever it did, is.
        odd = [pair for pair in answers if sorted(a["duplicate"] for a in pair) != [False, True]]
        assert not odd, json.dumps(odd)
        handles = [stack.client.get_workflow_handle(stack.run_id(i), result_type=RunStatus) for i in range(ORDERS)]
        done, failed = await stack.results(handles, timeout=180)
        assert not failed, failed
        # Each run heard its shipment, once.
        assert all(s.events_received == ["order.shipped"] and s.events_count == 1 for s in done.values()), done
        db = Database(stack.database_url)
        try:
            with db.session() as session:
                assert session.scalar(select(func.count()).select_from(Event)) == 2 * ORDERS
                assert session.scalar(select(func.count()).select_from(Event).where(Event.routed_at.is_(None))) == 0
                assert session.scalar(select(func.count()).select_from(Run)) == ORDERS
        finally:
            db.dispose()
        costs = stack.requests_per_key()
        expected = stack.expected_keys(ORDERS)
        assert set(costs) == set(expected) and set(costs.values()) == {1}, costs
