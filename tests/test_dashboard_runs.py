"""Runs in flight per step on the dashboard, listed by a real Temporal and placed from the store.

The runs are started the production way (events through the router, a sequence started as the
router or a `start:` step would) on the real worker, and one the way runs were started before this
release, which still sets `KeepflowStep` as it settles. What the pages show is checked against
where each run says it is (its own `status` query), read run by run, not against the page's method.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter

from keepflow.http.dashboard.in_flight import FINISHING, passes_on, place, settling_steps
from keepflow.runtime.payloads import RunInput
from keepflow.runtime.routing import ingest
from keepflow.runtime.search_attributes import STEP, STILL_SETTING, ensure_registered
from keepflow.runtime.starts import record_run, start_run
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.engine import CATALOG
from tests.helpers import CUSTOMER, serving_admin, snapshot
from tests.test_journey import order_event
from worker import build_worker
from workflows.sequence import SequenceWorkflow

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
    """Open runs per (sequence, step), each as the run itself says (its status query), once Temporal
    lists them all and each has been at a step a run can wait at for two readings in a row."""
    deadline = time.monotonic() + 30
    before = None
    while True:
        runs = [w async for w in client.list_workflows(RUNNING)]
        at = Counter()
        for run in runs:
            status = await client.get_workflow_handle(run.id).query(SequenceWorkflow.status)
            at[(run.id.split("/", 1)[0], status.current_step)] += 1
        settled = len(runs) == expected_runs and all(step in settling_steps(CATALOG.sequences[sid]) for sid, step in at)
        if settled and at == before:
            return at
        before = at if settled else None
        assert time.monotonic() < deadline, f"runs never settled: {at}"
        await asyncio.sleep(0.3)


async def test_pages_show_the_runs_waiting_at_each_step(tmp_path, settings, db, fake):
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
            education = CATALOG.snapshot("education")
            context = {"customer": CUSTOMER, "brand": dict(CATALOG.file.brand)}
            for n in range(2):  # education begins with a wait; started as a `start:` step does
                await start_run(client, RunInput(snapshot=education, key=f"edu-{n}", context=context), task_queue, db=db)
            # A run started before this release: its input asks for the search attribute.
            old = await client.start_workflow(SequenceWorkflow.run, RunInput(snapshot=education, key="edu-old", context=context),
                                              id="education/edu-old", task_queue=task_queue)
            record_run(db, old.id, context, definition_hash=education.hash)
            deadline = time.monotonic() + 30
            while True:
                listed = [w async for w in client.list_workflows(f'{RUNNING} AND WorkflowId="education/edu-old"')]
                if listed and listed[0].typed_search_attributes.get(STEP) == "education/0":
                    break
                assert time.monotonic() < deadline, listed
                await asyncio.sleep(0.2)

            app = serving_admin(settings, db)
            async with app as http:
                # The app's Temporal client (what create_app is given, or connects to on first use).
                app.app.state.services.client = client
                for _ in range(3):  # a run that moved while the pages were read: read them again
                    expected = await where_runs_wait(client, 6)
                    fulfilment_page = (await http.get("/sequences/fulfilment")).text
                    education_page = (await http.get("/sequences/education")).text
                    overview = (await http.get("/")).text
                    if await where_runs_wait(client, 6) == expected:
                        break
            # What docs/operations.md counts before the attribute may go: the old run alone.
            still_setting = (await client.count_workflows(STILL_SETTING)).count
            for run in [w async for w in client.list_workflows(RUNNING)]:
                await client.get_workflow_handle(run.id).terminate("test finished")

        print("runs waiting per step, from each run:", dict(expected))
        assert expected[("education", "0")] == 3 and sum(n for (s, _), n in expected.items() if s == "fulfilment") == 3
        assert expected[("fulfilment", "1")] == 2
        assert still_setting == 1
        for sid, page in (("fulfilment", fulfilment_page), ("education", education_page)):
            shown = waiting_rows(page)
            sequence = CATALOG.sequences[sid]
            assert list(shown) == settling_steps(sequence)
            assert shown == {path: expected[(sid, path)] for path in settling_steps(sequence)}, (sid, shown, expected)
            assert f'id="in-flight-total">{sum(shown.values())}<' in page
            assert 'id="in-flight-how"' in page
        assert totals(overview) == {s.id: sum(n for (sid, _), n in expected.items() if sid == s.id)
                                    for s in CATALOG.file.sequences}
        assert "in-flight-note" not in overview + fulfilment_page
    finally:
        server.stop()


BRANCHING = """
sequences:
  - id: branching
    category: marketing
    steps:
      - send: email
        template: note
      - if: "customer.consents.sms"
        then:
          - send: sms
            template: ping
        else: []
      - wait: 1d
      - if: "customer.vip"
        then:
          - wait: 2d
        else:
          - wait_for: order.created
            timeout: 3d
      - send: email
        template: note
      - wait_for: order.shipped
        timeout: 1d
        on_timeout:
          - wait: 1d
          - send: email
            template: note
"""


def test_a_run_is_placed_at_the_first_wait_after_its_latest_message():
    sequence = snapshot(BRANCHING).sequence
    assert place(sequence, None) == ("0", True)  # on its way to its first send
    assert place(sequence, ("0", "deferred")) == ("0", True)  # held there
    assert place(sequence, ("0", "sending")) == ("0", True)
    # After the email: the text's branch holds a run only until its row is written, so the wait.
    assert place(sequence, ("0", "sent")) == ("2", True)
    assert place(sequence, ("1.then.0", "skipped: no consent for sms")) == ("2", True)
    # Past the wait, nothing is recorded until the next send: that wait is where it is counted,
    # and the page says it may be further on already.
    assert passes_on(sequence)["2"] == ["3"]
    assert place(sequence, ("4", "sent")) == ("5", True)
    assert place(sequence, ("5.on_timeout.1", "sent")) == (FINISHING, True)
    assert passes_on(sequence)["5"] == ["5.on_timeout.0"]
    # A step this definition does not have: not placed.
    assert place(sequence, ("9", "sent")) is None


def test_where_the_branches_lead_to_different_waits_the_run_is_somewhere_after_the_branch():
    sequence = snapshot(BRANCHING.replace("      - wait: 1d\n      - if: \"customer.vip\"", "      - if: \"customer.vip\"")).sequence
    assert place(sequence, ("0", "sent")) == ("2", False)


async def test_a_server_that_cannot_count_gets_a_note_not_an_error(env, settings, db):
    """The time-skipping test server has no visibility store: list_workflows is UNIMPLEMENTED."""
    app = serving_admin(settings, db)
    async with app as http:
        app.app.state.services.client = env.client
        overview = await http.get("/")
        page = await http.get("/sequences/winback")
    for answer in (overview, page):
        assert answer.status_code == 200
        assert "This Temporal server cannot list workflows" in answer.text
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
