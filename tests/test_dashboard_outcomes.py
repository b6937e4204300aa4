"""Each sequence's runs of the period as one figure: entered = converted + still in progress +
ended without converting, the open runs counted by a real Temporal's visibility."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from keepflow.http.dashboard.in_flight import InFlight
from keepflow.http.dashboard.queries import SequenceView, with_open_runs
from keepflow.runtime.payloads import RunInput
from keepflow.runtime.routing import ingest
from keepflow.runtime.search_attributes import ensure_registered
from keepflow.runtime.starts import start_run
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.engine import CATALOG
from tests.helpers import CUSTOMER, serving_admin
from tests.test_journey import order_event
from worker import build_worker

RUNNING = 'WorkflowType="sequence" AND ExecutionStatus="Running"'
FIGURES = ("entered", "converted", "in_progress", "ended")


def figures(html: str) -> dict[str, dict[str, int]]:
    """{sequence: {figure: n}} from the overview's summaries."""
    found = {}
    for section in html.split('<section class="card" id="seq-')[1:]:
        sid = section.split('"', 1)[0]
        found[sid] = {f: int(n) for f in FIGURES
                      for n in re.findall(rf'<span data-summary="{f}">(\d+)</span>', section)}
    return found


async def settled(client, open_runs: set[str]) -> None:
    """Until visibility lists exactly these runs as open (it is eventually consistent)."""
    deadline = time.monotonic() + 30
    while True:
        listed = {w.id async for w in client.list_workflows(RUNNING)}
        if listed == open_runs:
            return
        assert time.monotonic() < deadline, (listed, open_runs)
        await asyncio.sleep(0.2)


async def test_entered_is_converted_plus_in_progress_plus_ended(tmp_path, settings, db, fake):
    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=None)
    server.start()
    try:
        client = await server.wait_ready(settings)
        await ensure_registered(client, client.namespace)
        task_queue = f"test-{uuid.uuid4()}"
        async with build_worker(client, settings, db, task_queue=task_queue, catalog=CATALOG):
            shipping, cancelled = (f"9{uuid.uuid4().int % 10**6:06d}" for _ in range(2))
            for order_id in (shipping, cancelled):
                await ingest(db, client, CATALOG, order_event("order.created", order_id, f"cust-{order_id}"), task_queue)
            # Ended without converting: fulfilment exits on a cancelled order.
            await ingest(db, client, CATALOG, order_event("order.cancelled", cancelled, f"cust-{cancelled}"), task_queue)
            # Two win-backs, as the inactivity scan starts them; one customer comes back (its goal).
            lapsed = [f"lapsed-{uuid.uuid4().hex[:6]}" for _ in range(2)]
            for customer_id in lapsed:
                context = {"customer": {**CUSTOMER, "id": customer_id}, "brand": dict(CATALOG.file.brand),
                           "event": {"id": f"inactive:{customer_id}", "type": "customer.inactive", "data": {}}}
                await start_run(client, RunInput(snapshot=CATALOG.snapshot("winback"), key=customer_id,
                                                 context=context), task_queue, db=db)
            came_back = f"9{uuid.uuid4().int % 10**6:06d}"
            await ingest(db, client, CATALOG, order_event("order.created", came_back, lapsed[0]), task_queue)
            await settled(client, {f"fulfilment/{shipping}", f"fulfilment/{came_back}", f"winback/{lapsed[1]}"})

            app = serving_admin(settings, db)
            async with app as http:
                app.app.state.services.client = client
                overview = (await http.get("/")).text
                page = (await http.get("/sequences/winback")).text
            for run in [w async for w in client.list_workflows(RUNNING)]:
                await client.get_workflow_handle(run.id).terminate("test finished")

        shown = figures(overview)
        assert shown["fulfilment"] == {"entered": 3, "converted": 0, "in_progress": 2, "ended": 1}, shown
        assert shown["winback"] == {"entered": 2, "converted": 1, "in_progress": 1, "ended": 0}, shown
        assert figures(page)["winback"] == shown["winback"]
        for counts in shown.values():
            assert counts["entered"] == counts["converted"] + counts["in_progress"] + counts["ended"]
    finally:
        server.stop()


def test_temporals_count_is_clamped_to_the_stores_figures():
    # A run continued as new starts again in Temporal's eyes; one converted may not have closed yet.
    view = SequenceView(id="winback", description="", category="marketing", trigger="", entered=5, converted=2,
                        conversion_rate=0.4, orders=0, revenue="-", not_converted=3)
    with_open_runs([view], InFlight(started_since={"winback": 4}))
    assert (view.in_progress, view.ended) == (3, 0)
    with_open_runs([view], InFlight(started_since={"winback": 1}))
    assert (view.in_progress, view.ended) == (1, 2)
    uncounted = SequenceView(id="winback", description="", category="marketing", trigger="", entered=5, converted=2,
                             conversion_rate=0.4, orders=0, revenue="-", not_converted=3)
    with_open_runs([uncounted], InFlight(note="cannot count"))
    assert (uncounted.in_progress, uncounted.ended) == (None, None)


async def test_where_temporal_cannot_count_the_page_says_so_and_keeps_not_converted(env, settings, db):
    app = serving_admin(settings, db)
    async with app as http:
        app.app.state.services.client = env.client  # the time-skipping server: no visibility store
        overview = (await http.get("/")).text
    assert 'data-summary="in_progress"' not in overview and 'data-summary="ended"' not in overview
    assert 'data-summary="not_converted"' in overview and "(in progress or ended: not counted)" in overview
