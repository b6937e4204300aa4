"""Cost per run: history events and billable Temporal Cloud Actions, against bare Temporal and the minimum.

    python bench/cost.py [--runs 3] [--time-scale 1/86400] [--timeout S] [--write-results]

A benchmark script, not a timed test. In a throwaway folder it starts Temporal's dev server
(headless, free port on 127.0.0.1), the fake SendGrid/Twilio server from tests/fakes, and the real
worker from worker.py (`build_worker`, real provider SDKs aimed at the fake, its own SQLite store)
with the real sequences.yaml compressed by bench/compress.py (default a day to a second, in whole
seconds; no quiet hours, cap or expiry). It then runs:

* post-purchase journeys: an `order.created` event through keepflow.runtime.routing.ingest starts
  `fulfilment`; `order.shipped` and `order.delivered` follow once the run waits for each (it has
  started the timer of that `wait_for`), as a store would send them; `fulfilment` starts
  `education`, which starts `cross_sell` (customers the split puts in the `offer` arm), which starts
  `review_request`; no review arrives, so its reminder goes. Four runs per journey.
* win-back runs: a customer last seen 61 days ago, started the way the inactivity scan starts one
  (same id, context and id policy), who does not come back: coupon, offer email and SMS, reminder, last chance.

Both sides run on the same client, so on the same data converter: first as a deployment runs
(payloads sealed with a payload key; definitions and contexts moved to the store by
keepflow/runtime/payload_parts.py), then the whole again without a payload key, and the history
bytes of both passes are reported side by side.

Every run's history (each run of a continue-as-new chain) is fetched and counted by event type,
and its billable Actions are counted following Temporal Cloud's published definition
(https://docs.temporal.io/cloud/actions). The minimum is computed from the steps each run reports
it took (its RunStatus `steps_done`): one start per run, one activity per message, `do` and
`start`, one timer per `wait` and `wait_for`, one signal per event a `wait_for` received. Then a
bare workflow defined here replays exactly those steps as plain activities (no-op), timers and
signals, chained the same way, on its own worker on the same server, and is counted the same way.

Everything listens on 127.0.0.1 only; every wait is bounded; everything started here is stopped
and the folder removed, also on error or Ctrl-C. Exit code 0 when every run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # worker.py and tests/fakes at the repository root; the other scripts beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from compress import compressed, scaled  # noqa: E402
from figures import write_figures  # noqa: E402
from ingest import machine, provenance, settings_for, write_section  # noqa: E402
from scan import scan_runs  # noqa: E402
from throughput import BARE_ACTIVITY, noop_send, parse_scale  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
SECTION = "## Cost per run (bench/cost.py)"
ACTIONS_PAGE = "https://docs.temporal.io/cloud/actions"
BARE_RUN = "bench-bare-run"
BARE_START = "bench-bare-start"
CALL_TIMEOUT = 30.0  # seconds one Temporal call may take
POLL = 0.05  # seconds between looks at a run's history while driving it
JOURNEY = ["fulfilment", "education", "cross_sell", "review_request"]
KINDS = ("post-purchase", "win-back")


# -- counting ----------------------------------------------------------------------------------

def event_name(event_type: int) -> str:
    from temporalio.api.enums.v1 import EventType

    return EventType.Name(event_type).removeprefix("EVENT_TYPE_")


def billable_actions(history) -> Counter:
    """Temporal Cloud Actions in one run's history, by the rules of ACTIONS_PAGE.

    Counted there but never in a history: queries, activity heartbeats, schedule actions. A
    continue-as-new is billed as the next run's start, so it counts in that run's history.
    """
    from temporalio.api.enums.v1 import EventType as E

    out: Counter = Counter()
    marker_tasks: set[int] = set()
    for e in history.events:
        kind = e.event_type
        if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            out["workflow started"] += 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            out["activity scheduled"] += 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            # The attempt number counts the retries before it (the first attempt is not one).
            out["activity retries"] += max(0, e.activity_task_started_event_attributes.attempt - 1)
        elif kind == E.EVENT_TYPE_TIMER_STARTED:
            out["timer started"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            out["signal"] += 1
        elif kind == E.EVENT_TYPE_MARKER_RECORDED:
            # "all RecordMarkers from each Workflow Task as one action"
            marker_tasks.add(e.marker_recorded_event_attributes.workflow_task_completed_event_id)
        elif kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
            if fields - {"TemporalChangeVersion"}:  # the versioning attribute is exempt
                out["search-attribute upsert"] += 1
        elif kind == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            out["child workflow start (2 each)"] += 2
        elif kind in (E.EVENT_TYPE_WORKFLOW_EXECUTION_OPTIONS_UPDATED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED):
            out["update / options updated"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            meta = e.workflow_task_completed_event_attributes.metering_metadata
            out["local activity retries"] += meta.nonfirst_local_activity_execution_attempts
    out["markers (1 per workflow task with any)"] = len(marker_tasks)
    return +out  # drop the zero entries


def markers_and_upserts(history) -> tuple[Counter, Counter]:
    """What the extra items are: marker names (with the patch id of a workflow.patched marker) and
    the search attributes each upsert set."""
    from temporalio.api.enums.v1 import EventType as E

    markers, upserts = Counter(), Counter()
    for e in history.events:
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED:
            attrs = e.marker_recorded_event_attributes
            label = attrs.marker_name
            for payloads in attrs.details.values():  # a patch marker carries {"id": <patch id>, ...}
                for payload in payloads.payloads:
                    with contextlib.suppress(ValueError):
                        data = json.loads(payload.data)
                        label += f" {data.get('id', '') if isinstance(data, dict) else data}"
            markers[label.strip()] += 1
        elif e.event_type == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            upserts[", ".join(sorted(fields))] += 1
    return markers, upserts


def minimum_actions(runs: list[tuple[str, list[Any]]]) -> Counter:
    """The Actions the steps the runs took need at the least, whatever runs them."""
    out: Counter = Counter({"workflow started": len(runs)})
    for _, records in runs:
        for r in records:
            if r.kind in ("send", "do", "start"):
                # A workflow cannot start another id by itself: an activity (1) or a child start (2,
                # which include the new run's start, counted above) — one action beyond the new run's start.
                out["activity scheduled"] += 1
            elif r.kind == "wait":
                out["timer started"] += 1
            elif r.kind == "wait_for":
                out["timer started"] += 1
                if r.outcome.startswith("received"):
                    out["signal"] += 1
    return out


def steps_taken(runs: list[tuple[str, list[Any]]]) -> Counter:
    out: Counter = Counter()
    for _, records in runs:
        for r in records:
            out[r.kind + (" (received)" if r.kind == "wait_for" and r.outcome.startswith("received") else "")] += 1
    return out


# -- the bare workflow -------------------------------------------------------------------------

@workflow.defn(name=BARE_RUN, sandboxed=False)
class BareRun:
    """Plain Temporal doing a Keepflow run's steps: an activity per send/do/start, a timer per wait,
    a timed wait for a signal per wait_for; the start step's activity starts the next bare run."""

    def __init__(self) -> None:
        self.signals = 0

    @workflow.signal(name="event")
    def event(self, _payload: Any) -> None:
        self.signals += 1

    @workflow.run
    async def run(self, plan: dict[str, Any]) -> int:
        from workflows.sequence import SEND_RETRY, SEND_TIMEOUT  # the same activity options as a send

        taken = 0
        for i, op in enumerate(plan["ops"]):
            kind = op["op"]
            if kind == "activity":
                await workflow.execute_activity(BARE_ACTIVITY, i, start_to_close_timeout=SEND_TIMEOUT,
                                                retry_policy=SEND_RETRY)
            elif kind == "start":
                await workflow.execute_activity(BARE_START, op["next"], start_to_close_timeout=SEND_TIMEOUT,
                                                retry_policy=SEND_RETRY)
            elif kind == "sleep":
                await workflow.sleep(op["seconds"])
            elif kind == "wait_for":
                try:
                    await workflow.wait_condition(lambda: self.signals > taken, timeout=op["seconds"])
                except asyncio.TimeoutError:
                    pass
                taken = min(self.signals, taken + 1)
        return len(plan["ops"])


class BareStarter:
    def __init__(self, client) -> None:
        self.client = client

    @activity.defn(name=BARE_START)
    async def start(self, plan: dict[str, Any]) -> str:
        if plan:
            await self.client.start_workflow(BARE_RUN, plan, id=plan["id"], task_queue=activity.info().task_queue)
        return plan.get("id", "")


def bare_plan(catalog, runs: list[tuple[str, list[Any]]], prefix: str) -> dict[str, Any]:
    """Nested plans, one per run of the chain, with the steps each Keepflow run took, in definition order
    (a record is written when its step ends, so an `if` comes after its branch; the walk puts it first)."""
    from keepflow.language.dsl import walk_steps

    plans = []
    for sequence_id, records in runs:
        walked = list(walk_steps(catalog.snapshot(sequence_id).sequence.steps, ""))
        steps, order = dict(walked), {path: i for i, (path, _) in enumerate(walked)}
        ops: list[dict[str, Any]] = []
        for r in sorted(records, key=lambda r: order.get(r.path, len(order))):
            step = steps.get(r.path)
            if r.kind in ("send", "do"):
                ops.append({"op": "activity"})
            elif r.kind == "start":
                ops.append({"op": "start", "next": {}})
            elif r.kind == "wait":
                ops.append({"op": "sleep", "seconds": step.wait.total_seconds()})
            elif r.kind == "wait_for":
                ops.append({"op": "wait_for", "seconds": step.timeout.total_seconds(),
                            "signal": r.outcome.startswith("received")})
        plans.append({"id": f"{BARE_RUN}/{prefix}/{sequence_id}", "ops": ops})
    for plan, following in zip(plans, plans[1:]):  # each start step starts the next run of the chain
        for op in plan["ops"]:
            if op["op"] == "start":
                op["next"] = following
                break
    return plans[0]


def bare_signals(plan: dict[str, Any]) -> list[tuple[str, int]]:
    """(run id, timers started) pairs: signal that run once it has started that many timers."""
    out = []
    while plan:
        timers = 0
        for op in plan["ops"]:
            if op["op"] in ("sleep", "wait_for"):
                timers += 1
            if op["op"] == "wait_for" and op["signal"]:
                out.append((plan["id"], timers))
        plan = next((op["next"] for op in plan["ops"] if op["op"] == "start"), {})
    return out


# -- driving runs ------------------------------------------------------------------------------

async def exists(client, workflow_id: str, deadline: float) -> None:
    from temporalio.service import RPCError, RPCStatusCode

    while True:
        try:
            await asyncio.wait_for(client.get_workflow_handle(workflow_id).describe(), CALL_TIMEOUT)
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(POLL)


async def when_waiting(client, workflow_id: str, timers: int, deadline: float) -> None:
    """Until the run has started `timers` timers: it is in the wait the next event is meant for."""
    from temporalio.api.enums.v1 import EventType as E

    await exists(client, workflow_id, deadline)
    while True:
        history = await asyncio.wait_for(client.get_workflow_handle(workflow_id).fetch_history(), CALL_TIMEOUT)
        if sum(1 for e in history.events if e.event_type == E.EVENT_TYPE_TIMER_STARTED) >= timers:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow_id} never started timer {timers}")
        await asyncio.sleep(POLL)


async def keepflow_chain(client, first_id: str, deadline: float) -> list[tuple[str, list[Any], list[Any]]]:
    """(sequence id, steps_done, histories of each run of its continue-as-new chain) for a run and
    every run it started (`start:` steps, whose outcome names the run)."""
    from keepflow.runtime.payloads import RunStatus

    out, pending = [], [first_id]
    while pending:
        workflow_id = pending.pop(0)
        await exists(client, workflow_id, deadline)
        status = await asyncio.wait_for(client.get_workflow_handle(workflow_id, result_type=RunStatus).result(),
                                        max(1.0, deadline - time.monotonic()))
        histories = await scan_runs(client, workflow_id)
        out.append((status.sequence_id, status.steps_done, histories))
        pending += [r.outcome.split(" ", 1)[1] for r in status.steps_done
                    if r.kind == "start" and r.outcome.startswith("started ")]
    return out


def order_event(event_type: str, order_id: str, customer_id: str, **data) -> Any:
    from keepflow.runtime.events import EventIn

    return EventIn.model_validate({
        "id": f"{event_type}-{order_id}", "type": event_type, "occurred_at": datetime.now(timezone.utc).isoformat(),
        "customer": {"id": customer_id, "email": f"{customer_id}@example.com", "phone": "+66812345678",
                     "first_name": "Nok", "locale": "en", "timezone": "Asia/Bangkok",
                     "consents": {"email": True, "sms": True}},
        "order": {"id": order_id, "number": f"#{order_id}", "total": "25900.00", "currency": "THB", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR camera", "quantity": 1, "price": "24900.00"}]},
        "data": data,
    })


def offer_arm_customers(count: int, tag: str) -> list[str]:
    """Customers cross_sell's split (step 1.then.0) puts in the `offer` arm: a coupon, then its email."""
    from keepflow.language.expressions import bucket

    found, n = [], 0
    while len(found) < count:
        customer = f"cust-{tag}-{n}"
        if bucket("cross_sell", "1.then.0", customer) >= 0.5:
            found.append(customer)
        n += 1
    return found


async def post_purchase(client, catalog, db, task_queue: str, order_id: str, customer_id: str, deadline: float):
    from keepflow.runtime.routing import ingest

    first = f"fulfilment/{order_id}"
    routed = await ingest(db, client, catalog, order_event("order.created", order_id, customer_id), task_queue)
    if routed.started != [first]:
        raise RuntimeError(f"order.created started {routed.started}, expected [{first}]")
    # fulfilment's step 1 and step 4 are `wait_for` (order.shipped, order.delivered), each its run's
    # first and second timer: the store's events arrive while the run waits for them.
    await when_waiting(client, first, 1, deadline)
    await ingest(db, client, catalog, order_event("order.shipped", order_id, customer_id, carrier="Kerry Express",
                                                  tracking_number=f"KE{order_id}"), task_queue)
    await when_waiting(client, first, 2, deadline)
    await ingest(db, client, catalog, order_event("order.delivered", order_id, customer_id), task_queue)
    return await keepflow_chain(client, first, deadline)


async def winback(client, catalog, db, task_queue: str, customer_id: str, deadline: float):
    from temporalio.common import WorkflowIDReusePolicy

    from activities.builtin.inactivity import _context
    from keepflow.runtime.payloads import RunInput
    from keepflow.store import Customer

    as_of = datetime.now(timezone.utc)
    with db.session() as session:
        session.add(Customer(id=customer_id, email=f"{customer_id}@example.com", phone="+66811112222",
                             first_name="Mali", locale="en", timezone="Asia/Bangkok",
                             consents={"email": True, "sms": True}, attributes={},
                             last_seen_at=as_of - timedelta(days=61)))
    with db.session() as session:
        customer = _context(session.get(Customer, customer_id), None)
    # As activities/builtin/inactivity.py's InactivityScanner._start starts it.
    snapshot = catalog.snapshot("winback")
    context = {"customer": customer, "brand": catalog.file.brand,
               "event": {"id": f"inactive:{customer_id}:{as_of:%Y%m%d%H%M}", "type": "customer.inactive",
                         "occurred_at": as_of.isoformat(), "data": {}}}
    await client.start_workflow(
        "sequence", RunInput(snapshot=snapshot, key=customer_id, context=context, step_attribute=False),
        id=f"winback/{customer_id}", task_queue=task_queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        memo={"sequence": "winback", "definition_hash": snapshot.hash})
    return await keepflow_chain(client, f"winback/{customer_id}", deadline)


async def run_bare(client, plan: dict[str, Any], deadline: float) -> list[list[Any]]:
    """Start the bare chain, send its signals when each run waits for them, wait for every run; histories."""
    await client.start_workflow(BARE_RUN, plan, id=plan["id"], task_queue=plan["task_queue"])
    for run_id, timers in bare_signals(plan):
        await when_waiting(client, run_id, timers, deadline)
        await client.get_workflow_handle(run_id).signal("event", {"type": "event"})
    out, current = [], plan
    while current:
        await exists(client, current["id"], deadline)
        await asyncio.wait_for(client.get_workflow_handle(current["id"]).result(), max(1.0, deadline - time.monotonic()))
        out.append(await scan_runs(client, current["id"]))
        current = next((op["next"] for op in current["ops"] if op["op"] == "start"), {})
    return out


async def bench(runs: int, time_scale: float, timeout: float, sealed: bool = True) -> dict[str, Any]:
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from keepflow.runtime.registry import load_catalog
    from keepflow.store import Database, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from tests.fakes.provider_server import FakeProviders
    from worker import ACTIVITY_THREADS, build_worker

    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-cost-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    fake = FakeProviders()
    db: Database | None = None
    try:
        fake.start()
        server.start()
        settings = settings_for(data_dir, server.address, fake, f"cost-{tag}")
        if not sealed:
            settings = settings.model_copy(update={"payload_keys": None})
        upgrade(settings.resolved_database_url)
        # The client a deployment has (payloads sealed with its key, unless `sealed` is off; definitions
        # and contexts in its store); the bare workflow runs on the same client, so on the same converter.
        client = await server.wait_ready(settings)
        with contextlib.suppress(ImportError):  # runs upsert KeepflowStep once the code has it: register it first
            from keepflow.runtime.search_attributes import ensure_registered
            await ensure_registered(client, "default")
        catalog = compressed(load_catalog(settings.sequences_path, settings.templates_dir), time_scale)
        db = Database(settings.resolved_database_url)
        print(f"Temporal on {server.address}, fake providers on {fake.url}; {runs} post-purchase journeys and "
              f"{runs} win-back runs, time scale {time_scale:g} "
              f"(a day lasts {scaled(timedelta(days=1), time_scale).total_seconds():g} s) ...", flush=True)

        deadline = time.monotonic() + timeout
        started = time.monotonic()
        async with build_worker(client, settings, db, task_queue=settings.task_queue, catalog=catalog):
            customers = offer_arm_customers(runs, tag)
            journeys = await asyncio.gather(
                *(post_purchase(client, catalog, db, settings.task_queue, f"P{tag}-{i}", customers[i], deadline)
                  for i in range(runs)),
                *(winback(client, catalog, db, settings.task_queue, f"wb-{tag}-{i}", deadline)
                  for i in range(runs)))
        keepflow_s = time.monotonic() - started
        print(f"Keepflow runs done in {keepflow_s:.1f} s; now the bare workflow ...", flush=True)

        bare_queue = f"cost-bare-{tag}"
        plans = []
        for j, chain in enumerate(journeys):
            plan = bare_plan(catalog, [(seq, recs) for seq, recs, _ in chain], f"{tag}-{j}")
            plan["task_queue"] = bare_queue
            plans.append(plan)
        started = time.monotonic()
        deadline = time.monotonic() + timeout
        bare_worker = Worker(client, task_queue=bare_queue, workflows=[BareRun],
                             activities=[noop_send, BareStarter(client).start],
                             workflow_runner=UnsandboxedWorkflowRunner(),
                             activity_executor=_executor(ACTIVITY_THREADS), max_concurrent_activities=ACTIVITY_THREADS)
        async with bare_worker:
            bare = await asyncio.gather(*(run_bare(client, p, deadline) for p in plans))
        bare_s = time.monotonic() - started
        return {"runs": runs, "time_scale": time_scale, "keepflow": journeys, "bare": bare,
                "keepflow_s": keepflow_s, "bare_s": bare_s, "sent": {
                    "sendgrid": len(fake.accepted("sendgrid")), "twilio": len(fake.accepted("twilio"))}}
    finally:
        if db is not None:
            db.dispose()
        server.stop()
        fake.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _executor(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="bench-activity")


# -- figures -----------------------------------------------------------------------------------

def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per run kind: every journey's counts (they should be equal), and the first journey's detail."""
    out: dict[str, Any] = {}
    runs = raw["runs"]
    for k, kind in enumerate(KINDS):
        chains = raw["keepflow"][k * runs:(k + 1) * runs]
        bares = raw["bare"][k * runs:(k + 1) * runs]

        def totals(histories_per_run: list[list[Any]]) -> dict[str, Any]:
            histories = [h for run in histories_per_run for h in run]
            events, actions, markers, upserts, sizes = Counter(), Counter(), Counter(), Counter(), Counter()
            for h in histories:
                events.update(event_name(e.event_type) for e in h.events)
                for e in h.events:
                    sizes[event_name(e.event_type)] += e.ByteSize()
                actions.update(billable_actions(h))
                m, u = markers_and_upserts(h)
                markers.update(m)
                upserts.update(u)
            return {"executions": len(histories), "events": events, "actions": actions, "markers": markers,
                    "upserts": upserts, "bytes": sum(sizes.values()), "sizes": sizes}

        keepflow = [totals([hs for _, _, hs in chain]) for chain in chains]
        bare = [totals(b) for b in bares]
        steps = [[(seq, recs) for seq, recs, _ in chain] for chain in chains]
        out[kind] = {
            "sequences": [seq for seq, _, _ in chains[0]], "keepflow": keepflow, "bare": bare,
            "minimum": [minimum_actions(s) for s in steps], "steps": [steps_taken(s) for s in steps],
        }
    return out


def spread(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def report(s: dict[str, Any]) -> str:
    def col(kind: str, side: str, f) -> str:
        data = s[kind][side]
        return spread([f(d) for d in data])

    header = ("| per run kind | post-purchase: Keepflow | bare | minimum | win-back: Keepflow | bare | minimum |\n"
              "|---|---|---|---|---|---|---|")
    rows = []

    def row(label: str, kf, bare, minimum) -> None:
        cells = []
        for kind in KINDS:
            cells += [kf(kind), bare(kind), minimum(kind)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    row("runs (workflow executions)", lambda k: col(k, "keepflow", lambda d: d["executions"]),
        lambda k: col(k, "bare", lambda d: d["executions"]),
        lambda k: spread([m["workflow started"] for m in s[k]["minimum"]]))
    row("**history events**", lambda k: "**" + col(k, "keepflow", lambda d: sum(d["events"].values())) + "**",
        lambda k: "**" + col(k, "bare", lambda d: sum(d["events"].values())) + "**", lambda k: "")
    row("history size (bytes)", lambda k: col(k, "keepflow", lambda d: d["bytes"]),
        lambda k: col(k, "bare", lambda d: d["bytes"]), lambda k: "")
    row("**billable Actions**", lambda k: "**" + col(k, "keepflow", lambda d: sum(d["actions"].values())) + "**",
        lambda k: "**" + col(k, "bare", lambda d: sum(d["actions"].values())) + "**",
        lambda k: "**" + spread([sum(m.values()) for m in s[k]["minimum"]]) + "**")
    categories = sorted({c for kind in KINDS for side in ("keepflow", "bare") for d in s[kind][side]
                         for c in d["actions"]} | {c for kind in KINDS for m in s[kind]["minimum"] for c in m})
    for c in categories:
        row(f"Actions: {c}", lambda k, c=c: col(k, "keepflow", lambda d: d["actions"].get(c, 0)),
            lambda k, c=c: col(k, "bare", lambda d: d["actions"].get(c, 0)),
            lambda k, c=c: spread([m.get(c, 0) for m in s[k]["minimum"]]))
    out = [header, *rows, ""]

    out += ["History events by type (summed over the runs of one journey / one win-back):", "",
            "| event type | post-purchase: Keepflow | bare | win-back: Keepflow | bare |", "|---|---|---|---|---|"]
    types = sorted({t for kind in KINDS for side in ("keepflow", "bare") for d in s[kind][side] for t in d["events"]})
    for t in types:
        cells = [col(kind, side, lambda d, t=t: d["events"].get(t, 0)) for kind in KINDS for side in ("keepflow", "bare")]
        marker = " ≠" if any(cells[i] != cells[i + 1] for i in (0, 2)) else ""
        out.append(f"| {t}{marker} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def explanation(s: dict[str, Any]) -> str:
    out = []
    for kind in KINDS:
        d = s[kind]
        kf, bare, minimum = d["keepflow"][0], d["bare"][0], d["minimum"][0]
        steps = ", ".join(f"{n} {k}" for k, n in sorted(d["steps"][0].items()))
        line = [f"**{kind}** ({' → '.join(d['sequences'])}; steps taken: {steps}):"]
        extra = {c: kf["actions"].get(c, 0) - minimum.get(c, 0) for c in set(kf["actions"]) | set(minimum)}
        extra = {c: n for c, n in extra.items() if n}
        total_kf, total_min = sum(kf["actions"].values()), sum(minimum.values())
        line.append(f"Keepflow {total_kf} Actions against a minimum of {total_min} and {sum(bare['actions'].values())} "
                    f"for the bare workflow.")
        for c, n in sorted(extra.items()):
            why = ""
            if c.startswith("markers"):
                why = (f" (markers: {', '.join(f'{v}× {m}' for m, v in kf['markers'].items())}: workflow.patched "
                       "records one the first time a run reaches the patch)")
            elif c == "search-attribute upsert":
                why = f" (upserts: {', '.join(f'{v}× {a}' for a, v in kf['upserts'].items())}; " \
                      "one setting only TemporalChangeVersion, the SDK's note of a patch, is not billed)"
            line.append(f"{'+' if n > 0 else ''}{n} {c}{why}.")
        if not extra:
            line.append("No Action beyond the minimum.")
        diff = {t: kf["events"].get(t, 0) - bare["events"].get(t, 0) for t in set(kf["events"]) | set(bare["events"])}
        diff = {t: n for t, n in diff.items() if n}
        if diff:
            line.append(f"History events {sum(kf['events'].values()) - sum(bare['events'].values()):+d} against bare: "
                        + ", ".join(f"{n:+d} {t}" for t, n in sorted(diff.items())) + ".")
        big = ", ".join(f"{t} {n:,} B" for t, n in kf["sizes"].most_common(2))
        line.append(f"History size {kf['bytes']:,} B, {kf['bytes'] / max(bare['bytes'], 1):.2f}× bare's; the largest "
                    f"parts: {big} (definitions and contexts travel as hashes, keepflow/runtime/payload_parts.py).")
        wft_kf = kf["events"].get("WORKFLOW_TASK_COMPLETED", 0)
        wft_bare = bare["events"].get("WORKFLOW_TASK_COMPLETED", 0)
        line.append(f"Workflow tasks (3 events each, not billed): {wft_kf} against {wft_bare} bare.")
        out.append(" ".join(line))
    out.append(f"Actions follow Temporal Cloud's published definition ({ACTIONS_PAGE}): a run start, each activity "
               "scheduled and each retry, each timer, each signal, each search-attribute upsert (not "
               "TemporalChangeVersion), the markers of one workflow task as one. Queries and heartbeats are Actions "
               "that leave no history; nothing here queried or heartbeat (results came from the runs' results).")
    return "\n\n".join(out)


def write_results(raw: dict[str, Any], s: dict[str, Any], table: str, note: str, unsealed: dict[str, Any]) -> None:
    scale = Fraction(raw["time_scale"]).limit_denominator(1_000_000)
    section = "\n".join([
        SECTION, "",
        *provenance(command := f"python bench/cost.py --runs {raw['runs']} --time-scale {scale} --write-results"),
        f"- Parameters: {raw['runs']} post-purchase journeys (order.created → shipped → delivered through "
        "keepflow.runtime.routing.ingest; customers in cross_sell's offer arm; no review) and "
        f"{raw['runs']} win-back runs (started as the scan starts them; no return), the real sequences.yaml on the "
        "worker from worker.py with the real SendGrid/Twilio SDKs against the fake in tests/fakes, compressed by "
        f"bench/compress.py at time scale {scale} (no quiet hours, cap or expiry); then a bare unsandboxed "
        f"workflow replaying the same steps. Actions per {ACTIONS_PAGE}.",
        "",
        table, "",
        note, "",
    ])
    write_section(SECTION, section)
    out = figures(s)
    out.update({k.replace("cost.", "cost.unsealed.", 1): v for k, v in figures(unsealed).items() if "history_bytes" in k})
    write_figures(out, command, machine())


FIGURE_KEYS = {"post-purchase": "post_purchase", "win-back": "winback"}


def figures(s: dict[str, Any]) -> dict[str, float | int]:
    """The headline numbers, per run kind: the first run's (every run's counts are equal)."""
    out: dict[str, float | int] = {}
    for kind in KINDS:
        d, key = s[kind], f"cost.{FIGURE_KEYS[kind]}"
        out[f"{key}.actions"] = sum(d["keepflow"][0]["actions"].values())
        out[f"{key}.minimum"] = sum(d["minimum"][0].values())
        out[f"{key}.bare_actions"] = sum(d["bare"][0]["actions"].values())
        out[f"{key}.history_bytes"] = d["keepflow"][0]["bytes"]
        out[f"{key}.bare_history_bytes"] = d["bare"][0]["bytes"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="post-purchase journeys and win-back runs each (default 3)")
    parser.add_argument("--time-scale", type=parse_scale, default=1 / 86400,
                        help="real seconds per definition second, e.g. 1/86400: a day per second (the default); "
                             "the compressed waits are whole seconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds each phase may take (default 180)")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = asyncio.run(bench(args.runs, args.time_scale, args.timeout))
    s = summarize(raw)
    table, note = report(s), explanation(s)
    print(f"\nKeepflow phase {raw['keepflow_s']:.1f} s, bare phase {raw['bare_s']:.1f} s; messages at the fake: "
          f"{raw['sent']}\n")
    print(table)
    print()
    print(note)
    print("\nAgain with payloads unsealed on both sides (no KEEPFLOW_PAYLOAD_KEYS, as the bare workflow would run) ...",
          flush=True)
    unsealed = summarize(asyncio.run(bench(args.runs, args.time_scale, args.timeout, sealed=False)))
    sizes = history_sizes(s, unsealed)
    print()
    print(sizes)
    if args.write_results:
        write_results(raw, s, table, note + "\n\n" + sizes, unsealed)
    return 0


def history_sizes(sealed: dict[str, Any], unsealed: dict[str, Any]) -> str:
    """Bytes per journey and per win-back with each converter, and the ratios that matter."""
    lines = ["History bytes per run kind (first run of each), by what the payloads go through:", "",
             "| run kind | Keepflow sealed | bare sealed | ratio | Keepflow unsealed | bare unsealed | ratio | "
             "Keepflow sealed / bare unsealed |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        ks, bs = sealed[kind]["keepflow"][0]["bytes"], sealed[kind]["bare"][0]["bytes"]
        ku, bu = unsealed[kind]["keepflow"][0]["bytes"], unsealed[kind]["bare"][0]["bytes"]
        lines.append(f"| {kind} | {ks:,} | {bs:,} | **{ks / bs:.2f}×** | {ku:,} | {bu:,} | **{ku / bu:.2f}×** | "
                     f"{ks / bu:.2f}× |")
    lines += ["", "Sealed: both sides on the client a deployment has (AES-GCM, KEEPFLOW_PAYLOAD_KEYS, which production "
              "requires). Unsealed: both without keys, as the issue's first figures were taken. The last column puts "
              "the sealing's own bytes (a nonce, a tag and two metadata entries per payload) on Keepflow's side only."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
