"""Runs in flight per step on the dashboard, counted by a real Temporal.

The runs are started the production way (events through the router, a sequence started as the
router or a `start:` step would) on the real worker; each run sets `KeepflowStep` itself when it
settles into a wait. What the pages show is checked against Temporal's own list of the open runs
and the attribute each one carries, read run by run, not against `count_workflows`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter

from keepflow.http.dashboard.in_flight import settling_steps
from keepflow.runtime.routing import ingest
from keepflow.runtime.search_attributes import STEP, ensure_registered
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.engine import CATALOG
from tests.helpers import serving_admin, start
from tests.test_journey import order_event
from worker import build_worker

RUNNING = 'WorkflowType="sequence" AND ExecutionStatus="Running"'


def waiting_rows(html: str) -> dict[str, int]:
    """{step path: runs} from a sequence page's runs-in-flight table."""
    table = html.split('<table id="in-flight">', 1)[1].split("</table>", 1)[0]
    return {path: int(n) for path, n in re.findall(r'<tr data-wait="([^"]+)">.*?<td class="n" data-runs>(\d+)</td>', table, re.S)}


def totals(html: str) -> dict[str, int]:
    """{sequence: runs in flight} from the overview's summaries."""
    found = {}
    for section in html.split('<section class="card" id="seq-')[1:]:
        sid = section.split('"', 1)[0]
        found[sid] = int(re.search(r'<span data-summary="in_flight">(\d+)</span>', section).group(1))
    return found


async def where_runs_wait(client, expected_runs: int) -> Counter:
    """Open runs per (sequence, step) from each run's own search attributes, once all have settled."""
    deadline = time.monotonic() + 30
    while True:
        runs = [w async for w in client.list_workflows(RUNNING)]
        at = [w.typed_search_attributes.get(STEP) for w in runs]
        if len(runs) == expected_runs and all(at):
            return Counter(tuple(value.split("/", 1)) for value in at)
        assert time.monotonic() < deadline, f"runs never settled: {[(w.id, a) for w, a in zip(runs, at)]}"
        await asyncio.sleep(0.2)


async def test_pages_count_the_runs_waiting_at_each_step(tmp_path, settings, db, fake):
    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=None)
    server.start()
    try:
        client = await server.wait_ready(settings)
        await ensure_registered(client, client.namespace)  # as the worker does when it starts
        task_queue = f"test-{uuid.uuid4()}"
        async with build_worker(client, settings, db, task_queue=task_queue, catalog=CATALOG):
            orders = [f"9{uuid.uuid4().int % 10**6:06d}" for _ in range(3)]
            for n, order_id in enumerate(orders):
                await ingest(db, client, CATALOG, order_event("order.created", order_id, f"cust-{n}"), task_queue)
            # One order moves on: shipped, so that run waits further down (or at a held text).
            await where_runs_wait(client, 3)
            await ingest(db, client, CATALOG, order_event(
                "order.shipped", orders[0], "cust-0", carrier="Kerry Express", tracking_number="KEX1",
                tracking_url="https://track.example.com/KEX1"), task_queue)
            for n in range(2):  # education begins with a wait
                await start(client, task_queue, CATALOG.snapshot("education"), key=f"edu-{n}")
            # Visibility is eventually consistent: wait until every run's attribute is there and
            # the shipped run has left step 1.
            deadline = time.monotonic() + 30
            while True:
                expected = await where_runs_wait(client, 5)
                if expected[("fulfilment", "1")] == 2:
                    break
                assert time.monotonic() < deadline, expected
                await asyncio.sleep(0.2)

            app = serving_admin(settings, db)
            async with app as http:
                # The app's Temporal client (what create_app is given, or connects to on first use).
                app.app.state.services.client = client
                fulfilment = (await http.get("/sequences/fulfilment")).text
                education = (await http.get("/sequences/education")).text
                overview = (await http.get("/")).text
            for run in [w async for w in client.list_workflows(RUNNING)]:
                await client.get_workflow_handle(run.id).terminate("test finished")

        print("runs waiting per step, from each run:", dict(expected))
        assert expected[("education", "0")] == 2 and sum(n for (s, _), n in expected.items() if s == "fulfilment") == 3
        for sid, page in (("fulfilment", fulfilment), ("education", education)):
            shown = waiting_rows(page)
            sequence = CATALOG.sequences[sid]
            assert list(shown) == settling_steps(sequence)
            assert shown == {path: expected[(sid, path)] for path in settling_steps(sequence)}, (sid, shown, expected)
            assert f'id="in-flight-total">{sum(shown.values())}<' in page
        assert totals(overview) == {s.id: sum(n for (sid, _), n in expected.items() if sid == s.id)
                                    for s in CATALOG.file.sequences}
        assert "in-flight-note" not in overview + fulfilment
    finally:
        server.stop()


async def test_a_server_that_cannot_count_gets_a_note_not_an_error(env, settings, db):
    """The time-skipping test server has no visibility store: count_workflows is UNIMPLEMENTED."""
    app = serving_admin(settings, db)
    async with app as http:
        app.app.state.services.client = env.client
        overview = await http.get("/")
        page = await http.get("/sequences/winback")
    for answer in (overview, page):
        assert answer.status_code == 200
        assert "This Temporal server cannot count workflows" in answer.text
    assert "runs in flight: not counted" in overview.text and 'data-summary="in_flight"' not in overview.text
    assert '<table id="in-flight">' not in page.text
    # The funnel is still there.
    assert 'data-step="1" data-template="winback_offer"' in page.text


async def test_unreachable_temporal_costs_a_bounded_wait(settings, db):
    closed = f"127.0.0.1:{free_port()}"
    async with serving_admin(settings.model_copy(update={"temporal_address": closed}), db) as http:
        began = time.monotonic()
        page = await http.get("/sequences/fulfilment")
        took = time.monotonic() - began
        missing = await http.get("/sequences/no_such_thing")
    assert page.status_code == 200 and 'id="in-flight-note"' in page.text, page.text[-2000:]
    assert took < 5, took
    assert missing.status_code == 404 and "There is no sequence &#39;no_such_thing&#39;" in missing.text
