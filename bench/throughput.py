"""Sequence throughput: N post-purchase runs through the real worker, against bare Temporal.

    python bench/throughput.py [--runs 200] [--start-concurrency 50] [--time-scale 1/86400]
                               [--timeout S] [--breakdown] [--sandboxed] [--bare-first] [--bare-sends]
                               [--repeat N] [--write-results]

A benchmark script, not a timed test. In a throwaway folder it starts Temporal's dev server
(headless, free port on 127.0.0.1) and runs two kinds of phase on that same server, four phases in
mirrored order (Keepflow, bare, bare, Keepflow), because each phase meets a server slowed by the
runs of the phases before it:

1. Keepflow: the real worker from worker.py (`build_worker`, sandboxed `sequence` workflow, the
   outbox providers, its own SQLite store, or the PostgreSQL database DATABASE_URL names) runs N runs of a synthetic sequence with the shape of
   `fulfilment`: the same four sends with the same templates (email order_confirmed, wait, email
   order_shipped, sms order_shipped, wait, email order_delivered). `fulfilment` itself waits for
   order.shipped / order.delivered events and ends by starting `education`; here each `wait_for`
   is a `wait: 1d` and the `start:` is left out, so every run does the same fixed work (4
   activities, 2 timers) without a driver sending events or spawning further runs. Runs are
   started directly with `client.start_workflow("sequence", RunInput(...))` on a copy of the
   definitions compressed by bench/compress.py (default a day to a second, in whole seconds),
   which also takes out quiet hours, the cap and expiry.
2. Bare Temporal: a minimal unsandboxed workflow defined here does the same 4 activities (no-op,
   synchronous, on a thread pool of the worker's size) and the same 2 timers (same compressed
   durations), N runs, with the same worker limits (max concurrent activities; workflow tasks at
   the SDK default in both).

Reported for each side, its two phases added up: wall time from the first start call to the last run closed (server clock),
runs/s, activities/s, events per run history, and the CPU seconds of this process (client and
worker) and of the dev server during the phase, split for this process into the activity
threads' CPU and the rest; then the ratio Keepflow / bare. `--breakdown` times send_message's
steps (timers put on at run time; no file is changed). Diagnostics, not how the worker runs:
`--sandboxed` runs Keepflow's workflows in Temporal's sandbox (as tests and `keepflow dev` do; a
production worker does not, see KEEPFLOW_WORKFLOW_SANDBOX), `--bare-first` starts the mirrored
order with bare (bare, Keepflow, Keepflow, bare), and `--bare-sends` gives bare's activities the
work of a send written by hand (HandSender below: the same template rendered, one row, one outbox
line) in place of nothing; its figures are never written.

Everything listens on 127.0.0.1 only; every wait is bounded; the dev server is stopped and the
folder removed, also on error or Ctrl-C. Exit code 0 when every run of every phase completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from temporalio import activity, workflow

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # worker.py at the repository root; ingest.py beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from compress import compressed, scaled  # noqa: E402
from figures import write_figures  # noqa: E402
from ingest import (_proc_cpu_seconds, _tree_cpu_seconds, instrument, machine, ms, percentile, provenance,  # noqa: E402
                    write_section)

RESULTS = BENCH / "RESULTS.md"
SECTION = "## Sequence throughput (bench/throughput.py)"
SEQUENCE_ID = "bench_fulfilment"
BARE_WORKFLOW = "bench-bare-sequence"
BARE_ACTIVITY = "bench-noop-send"
CALL_TIMEOUT = 30.0  # seconds one start_workflow or fetch_history call may take

# `fulfilment`'s sends in order, with its two `wait_for` steps as fixed waits and no `start:`.
STEPS: list[dict[str, Any]] = [
    {"send": "email", "template": "order_confirmed"},
    {"wait": "1d"},
    {"send": "email", "template": "order_shipped"},
    {"send": "sms", "template": "order_shipped"},
    {"wait": "1d"},
    {"send": "email", "template": "order_delivered"},
]
WAIT_SECONDS = 86400  # each `wait: 1d`, in definition seconds

# `--breakdown`: timers put on at run time around send_message's steps (ingest.py's `instrument`),
# to see how much of the worker's time is the activity rather than the workflow side.
SEND_STEPS = (
    ("activities.builtin.send", "MessageSender", "_claim", "send_message: claim row + stored profile + suppressions (SQLite, one transaction)"),
    ("keepflow.language.rendering", "Renderer", "render", "send_message: render template"),
    ("activities.builtin.send", "MessageSender", "_mark_sending", "send_message: mark sending (SQLite)"),
    ("keepflow.sending.providers.outbox", "OutboxEmail", "send_email", "send_message: outbox email (file append)"),
    ("keepflow.sending.providers.outbox", "OutboxSms", "send_sms", "send_message: outbox sms (file append)"),
    ("activities.builtin.send", "MessageSender", "_finish", "send_message: finish row (SQLite)"),
)


# -- the baseline ------------------------------------------------------------------------------

@activity.defn(name=BARE_ACTIVITY)
def noop_send(step: int) -> int:
    """Synchronous like send_message, so it also pays the thread pool hand-off; does nothing else."""
    return step


@workflow.defn(name=BARE_WORKFLOW, sandboxed=False)
class BareSequence:
    """The same activities and timers as the Keepflow run, with nothing around them."""

    @workflow.run
    async def run(self, shape: list[float]) -> int:
        from workflows.sequence import SEND_RETRY, SEND_TIMEOUT  # the same activity options as a send

        done = 0  # activities completed
        for i, wait in enumerate(shape):
            if wait > 0:
                await workflow.sleep(wait)
            else:
                await workflow.execute_activity(BARE_ACTIVITY, i, start_to_close_timeout=SEND_TIMEOUT,
                                                retry_policy=SEND_RETRY)
                done += 1
        return done


class HandSender:
    """`--bare-sends` (a diagnostic): what each send of a sequence written by hand would do, so that
    Keepflow's sends are weighed against work of their kind rather than against nothing. It renders
    the same template with the same renderer (Jinja, and an email's text part), records the message
    in one row of a table of its own (SQLite with the store's pragmas, or DATABASE_URL's database)
    and appends it to an outbox file, as Keepflow's outbox provider does. What it leaves out is what
    Keepflow adds: consent, suppressions, the frequency cap and quiet hours, the row claimed before
    the provider call so that a retry never sends twice, the lease, the heartbeat. It takes the place
    of noop_send in BareSequence, so the runs carry what they carry bare (the step's index), and
    reads the rest from the run's id, as Keepflow's send reads what its request only names."""

    def __init__(self, folder: Path, brand: dict[str, Any]) -> None:
        from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, event, insert

        from keepflow.language.rendering import Renderer

        self.renderer = Renderer(ROOT / "templates", "en")
        self.engine = create_engine(os.environ.get("DATABASE_URL") or f"sqlite:///{folder / 'hand-sent.db'}")
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(connection, _record) -> None:
                cursor = connection.cursor()
                for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
                    cursor.execute(f"PRAGMA {pragma}")
                cursor.close()
        self.table = Table("bench_hand_sent", MetaData(), Column("id", Integer, primary_key=True, autoincrement=True),
                           Column("key", String(255), nullable=False), Column("channel", String(16), nullable=False),
                           Column("recipient", String(255), nullable=False), Column("subject", Text),
                           Column("body", Text, nullable=False), Column("sent_at", DateTime(timezone=True), nullable=False))
        self.table.metadata.drop_all(self.engine)
        self.table.metadata.create_all(self.engine)
        self.insert = insert(self.table)
        self.brand = brand
        self.outbox = folder / "hand-outbox.jsonl"
        self._lock = threading.Lock()

    @activity.defn(name=BARE_ACTIVITY)
    def send(self, step: int) -> int:
        run_id = activity.info().workflow_id
        assert run_id is not None  # always scheduled by BareSequence
        prefix, number = run_id.split("/", 1)[1].rsplit("-", 1)  # as bare_phase names its runs
        run = context(int(number), prefix, self.brand)
        key = f"{run_id}:{step}"
        channel, template = STEPS[step]["send"], STEPS[step]["template"]
        customer = run["customer"]
        rendered = self.renderer.render(channel, template, customer.get("locale"), run)
        recipient = customer["email"] if channel == "email" else customer["phone"]
        sent_at = datetime.now(timezone.utc)
        with self.engine.begin() as db:
            db.execute(self.insert, {"key": key, "channel": channel, "recipient": recipient,
                                     "subject": rendered.subject, "body": rendered.text, "sent_at": sent_at})
        line = json.dumps({"key": key, "channel": channel, "to": recipient, "subject": rendered.subject,
                           "html": rendered.body if channel == "email" else None, "text": rendered.text,
                           "sent_at": sent_at.isoformat()}, ensure_ascii=False)
        with self._lock, self.outbox.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        return step


class CpuCountingExecutor(ThreadPoolExecutor):
    """The activity thread pool, adding up the CPU time its threads spend in activities, so a phase's
    process CPU splits into activities and the rest (workflow tasks, the SDK's event loop, the client)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_seconds = 0.0
        self._cpu_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        def counted():
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with self._cpu_lock:
                    self.cpu_seconds += spent

        return super().submit(counted)


# -- running a phase ---------------------------------------------------------------------------

def sequences_file(folder: Path) -> Path:
    """sequences.yaml's brand and rules with the synthetic sequence alone, validated by the real loader."""
    yaml = YAML(typ="safe")
    real = yaml.load((ROOT / "sequences.yaml").read_text())
    fulfilment = next(s for s in real["sequences"] if s["id"] == "fulfilment")
    synthetic = {"id": SEQUENCE_ID, "description": "fulfilment's sends and timers, for bench/throughput.py",
                 "category": fulfilment["category"], "key": fulfilment["key"],
                 "quiet_hours": fulfilment.get("quiet_hours"), "steps": STEPS}
    path = folder / "sequences.yaml"
    yaml.default_flow_style = False
    with path.open("w") as out:
        yaml.dump({"brand": real["brand"], "rules": real["rules"], "sequences": [synthetic]}, out)
    return path


def context(i: int, tag: str, brand: dict[str, Any]) -> dict[str, Any]:
    order = f"T{tag}-{i:05d}"
    return {
        "customer": {"id": f"cust-{order}", "email": f"t{i}@example.com", "phone": "+66812345678",
                     "first_name": "Nok", "locale": "en", "timezone": "Asia/Bangkok",
                     "consents": {"email": True, "sms": True}},
        "order": {"id": order, "number": f"#{order}", "currency": "THB", "total": "25900.00", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR camera", "quantity": 1, "price": "24900.00"}]},
        "event": {"id": f"evt_{order}", "type": "order.created", "occurred_at": datetime.now(timezone.utc).isoformat()},
        # What `wait_for: order.shipped` with `as: shipment` would have put there; the templates read it.
        "shipment": {"id": f"evt_ship_{order}", "type": "order.shipped", "occurred_at": "", "data": {
            "carrier": "Kerry Express", "tracking_number": f"KE{i:08d}"}},
        "brand": brand,
    }


async def phase(client, starts: list[tuple[str, str, Any]], task_queue: str, concurrency: int, timeout: float,
                server_pid: int) -> dict[str, Any]:
    """Start every (workflow id, workflow name, argument), wait (bounded) for all to close, read the histories."""
    from temporalio.api.enums.v1 import EventType

    gate = asyncio.Semaphore(concurrency)
    handles: dict[str, Any] = {}
    errors: list[str] = []

    async def start(workflow_id: str, name: str, arg: Any) -> None:
        async with gate:
            try:
                handles[workflow_id] = await asyncio.wait_for(
                    client.start_workflow(name, arg, id=workflow_id, task_queue=task_queue), CALL_TIMEOUT)
            except Exception as err:  # noqa: BLE001 - counted and reported
                errors.append(f"start: {type(err).__name__}")

    async def finish(workflow_id: str) -> Any:
        try:
            return await handles[workflow_id].result()
        except Exception as err:  # noqa: BLE001 - counted and reported
            errors.append(f"result: {type(err).__name__}")
            return None

    cpu_before = (_proc_cpu_seconds(os.getpid()), _tree_cpu_seconds(server_pid))
    started = time.time()
    await asyncio.gather(*(start(*s) for s in starts))
    starts_done = time.time()
    try:
        results = await asyncio.wait_for(asyncio.gather(*(finish(w) for w in handles)), timeout)
    except asyncio.TimeoutError:
        results = []
        errors.append(f"not all runs closed within {timeout:.0f} s")
    observed = time.time()
    cpu_after = (_proc_cpu_seconds(os.getpid()), _tree_cpu_seconds(server_pid))

    histories = await read_histories(client, list(handles), EventType)
    closed = [h["closed"] for h in histories.values() if h["closed"] is not None]
    completed = sum(1 for h in histories.values() if h["completed"])
    last_close = max(closed, default=observed)
    return {
        "runs": len(starts), "completed": completed, "errors": errors, "results": results,
        "wall_s": last_close - started, "starts_s": starts_done - started, "observed_wall_s": observed - started,
        "activities": sum(h["activities"] for h in histories.values()),
        "timers": sum(h["timers"] for h in histories.values()),
        "history": [h["events"] for h in histories.values()],
        "run_s": [h["closed"] - h["opened"] for h in histories.values() if h["closed"] is not None],
        "wft_s": [d for h in histories.values() for d in h["wft_s"]],
        "cpu_self_s": None if None in (cpu_before[0], cpu_after[0]) else cpu_after[0] - cpu_before[0],
        "cpu_server_s": None if None in (cpu_before[1], cpu_after[1]) else cpu_after[1] - cpu_before[1],
    }


async def read_histories(client, workflow_ids: list[str], EventType, concurrency: int = 16) -> dict[str, dict]:
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, dict] = {}

    async def one(workflow_id: str) -> None:
        async with gate:
            try:
                history = await asyncio.wait_for(client.get_workflow_handle(workflow_id).fetch_history(), CALL_TIMEOUT)
            except Exception:  # noqa: BLE001 - a run without history counts as not completed
                return
        h = {"events": len(history.events), "activities": 0, "timers": 0, "opened": None, "closed": None,
             "completed": False, "wft_s": []}
        wft_started = None
        for e in history.events:
            at = e.event_time.seconds + e.event_time.nanos / 1e9
            kind = e.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                h["opened"] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                h["activities"] += 1
            elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
                h["timers"] += 1
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                wft_started = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and wft_started is not None:
                h["wft_s"].append(at - wft_started)  # the worker's time on one workflow task, as the server saw it
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                h["closed"], h["completed"] = at, True
            elif kind in (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
                          EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED):
                h["closed"] = at
        out[workflow_id] = h

    await asyncio.gather(*(one(w) for w in workflow_ids))
    return out


async def bench(runs: int, concurrency: int, time_scale: float, timeout: float, breakdown: bool = False,
                sandboxed: bool = False, bare_first: bool = False, bare_sends: bool = False) -> dict[str, Any]:
    from sqlalchemy import func, select
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    import worker
    from keepflow.runtime.payloads import RunInput
    from keepflow.runtime.registry import load_catalog
    from keepflow.settings import Settings
    from keepflow.store import Database, Message, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from worker import ACTIVITY_THREADS, build_worker

    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-throughput-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    db: Database | None = None
    try:
        catalog = compressed(load_catalog(sequences_file(data_dir), ROOT / "templates"), time_scale)
        snapshot = catalog.snapshot(SEQUENCE_ID)
        brand = catalog.file.brand
        brand = brand.model_dump(mode="json") if hasattr(brand, "model_dump") else brand
        settings = Settings(data_dir=data_dir, sequences_path=data_dir / "sequences.yaml", templates_dir=ROOT / "templates",
                            email_provider="outbox", sms_provider="outbox",
                            database_url=os.environ.get("DATABASE_URL") or None)
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        server.start()
        client = await server.wait_ready(settings)
        wait = wait_seconds(time_scale)
        shape = [wait if "wait" in s else 0.0 for s in STEPS]
        hand_sender = HandSender(data_dir, brand) if bare_sends else None
        print(f"Temporal on {server.address}; {runs} runs per phase, {concurrency} start calls in flight, "
              f"time scale {time_scale:g} (each wait {wait:g} s)", flush=True)

        async def keepflow_phase(round_no: int) -> dict[str, Any]:
            keepflow_queue = f"throughput-keepflow-{tag}"
            key = f"T{tag}{round_no}"
            print("phase: Keepflow ...", flush=True)
            # build_worker reads worker.ThreadPoolExecutor when called: swapped here (this process only,
            # put back at once) for a pool that counts its threads' CPU time.
            pool = worker.ThreadPoolExecutor
            worker.ThreadPoolExecutor = CpuCountingExecutor
            try:
                kf_worker = build_worker(client, settings.model_copy(update={"workflow_sandbox": sandboxed}), db,
                                         task_queue=keepflow_queue, catalog=catalog)
            finally:
                worker.ThreadPoolExecutor = pool
            executor = kf_worker.config().get("activity_executor")
            with instrument(breakdown, SEND_STEPS, thread_waits=False) as timings:
                async with kf_worker:
                    kf = await phase(client, [
                        (f"{SEQUENCE_ID}/{key}-{i:05d}", "sequence",
                         RunInput(snapshot=snapshot, key=f"{key}-{i:05d}", context=context(i, f"{tag}{round_no}", brand),
                                  step_attribute=False))
                        for i in range(runs)], keepflow_queue, concurrency, timeout, server.process.pid)
            kf["cpu_activities_s"] = executor.cpu_seconds if isinstance(executor, CpuCountingExecutor) else None
            kf["timings"] = {label: list(v) for label, v in timings.items()}
            with db.session() as session:
                kf["messages"] = dict(session.execute(select(Message.status, func.count()).group_by(Message.status)).all())
            kf["outcomes"] = {}
            for r in kf.pop("results"):  # RunStatus as JSON: the handles were made without a result type
                for step in (r or {}).get("steps_done", []):
                    if step["kind"] == "send":
                        key = step["outcome"].split(":")[0]
                        kf["outcomes"][key] = kf["outcomes"].get(key, 0) + 1
            return kf

        async def bare_phase(round_no: int) -> dict[str, Any]:
            bare_queue = f"throughput-bare-{tag}"
            print("phase: bare Temporal ...", flush=True)
            executor = CpuCountingExecutor(ACTIVITY_THREADS, thread_name_prefix="bench-activity")
            bare_worker = Worker(
                client, task_queue=bare_queue, workflows=[BareSequence],
                activities=[hand_sender.send if hand_sender is not None else noop_send],
                workflow_runner=UnsandboxedWorkflowRunner(), activity_executor=executor,
                max_concurrent_activities=ACTIVITY_THREADS,
            )
            async with bare_worker:
                bare = await phase(client, [(f"{BARE_WORKFLOW}/{tag}{round_no}-{i:05d}", BARE_WORKFLOW, shape)
                                            for i in range(runs)], bare_queue, concurrency, timeout, server.process.pid)
            bare.pop("results")
            bare["cpu_activities_s"] = executor.cpu_seconds
            return bare

        # Each phase meets a dev server whose SQLite file holds every earlier phase's runs, which
        # slows it: in one Keepflow-then-bare pair the ratio moved from 0.85-0.90 to 0.62-0.68 when
        # the order was swapped (500 runs). So the phases run twice, mirrored (Keepflow, bare, bare,
        # Keepflow; `--bare-first`: bare, Keepflow, Keepflow, bare), and each side's figures are
        # its two phases added up.
        order = ["bare", "keepflow", "keepflow", "bare"] if bare_first else ["keepflow", "bare", "bare", "keepflow"]
        phases: dict[str, list[dict[str, Any]]] = {"keepflow": [], "bare": []}
        for round_no, side in enumerate(order):
            run = keepflow_phase if side == "keepflow" else bare_phase
            phases[side].append(await run(round_no))
        kf, bare = merged(phases["keepflow"]), merged(phases["bare"])
        if hand_sender is not None:
            bare["hand_sent"] = sum(1 for _ in hand_sender.outbox.open(encoding="utf-8"))
            hand_sender.engine.dispose()
        return {"sandboxed": sandboxed, "bare_first": bare_first, "bare_sends": bare_sends, "runs": runs,
                "concurrency": concurrency,
                "time_scale": time_scale, "keepflow": kf, "bare": bare, "activity_threads": ACTIVITY_THREADS}
    finally:
        if db is not None:
            db.dispose()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def merged(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's phases added up, with each phase's own runs/s kept for the table."""
    out = {**phases[0], "phase_rates": []}
    for n, p in enumerate(phases):
        out["phase_rates"].append(p["completed"] / p["wall_s"] if p["wall_s"] > 0 else float("nan"))
        if n == 0:
            continue
        for k in ("runs", "completed", "wall_s", "starts_s", "observed_wall_s", "activities", "timers"):
            out[k] += p[k]
        for k in ("errors", "history", "run_s", "wft_s"):
            out[k] = out[k] + p[k]
        for k in ("cpu_self_s", "cpu_server_s", "cpu_activities_s"):
            out[k] = None if out.get(k) is None or p.get(k) is None else out[k] + p[k]
        if "outcomes" in p:
            out["outcomes"] = {k: out["outcomes"].get(k, 0) + p["outcomes"].get(k, 0)
                               for k in {*out["outcomes"], *p["outcomes"]}}
            out["messages"] = p["messages"]  # the store's totals after the last phase
            out["timings"] = {k: out["timings"].get(k, []) + p["timings"].get(k, [])
                              for k in {*out["timings"], *p["timings"]}}
    if "timings" in out:
        out["steps"] = {label: (len(v), percentile(v, 50), percentile(v, 99), sum(v))
                        for label, v in out.pop("timings").items()}
    return out


# -- figures -----------------------------------------------------------------------------------

def rates(p: dict[str, Any]) -> dict[str, Any]:
    wall = p["wall_s"] if p["wall_s"] > 0 else float("nan")
    return {**p, "runs_per_s": p["completed"] / wall, "activities_per_s": p["activities"] / wall}


def report(raw: dict[str, Any]) -> tuple[str, float | None]:
    kf, bare = rates(raw["keepflow"]), rates(raw["bare"])
    ratio = kf["runs_per_s"] / bare["runs_per_s"] if bare["runs_per_s"] else None

    def cpu(p: dict[str, Any]) -> str:
        if p["cpu_self_s"] is None or p["cpu_server_s"] is None:
            return "-"
        window = p["observed_wall_s"]
        return (f"{p['cpu_self_s']:.1f} / {p['cpu_server_s']:.1f} s "
                f"({p['cpu_self_s'] / window:.2f} / {p['cpu_server_s'] / window:.2f} cores)")

    def hist(p: dict[str, Any]) -> str:
        h = p["history"]
        return f"{min(h)}–{max(h)} (p50 {percentile(h, 50):.0f})" if h else "-"

    rows = [
        ("runs completed / started", lambda p: f"{p['completed']} / {p['runs']}"
         + (f" ({len(p['errors'])} errors: {', '.join(sorted(set(p['errors'])))})" if p["errors"] else "")),
        ("start calls (wall)", lambda p: f"{p['starts_s']:.2f} s"),
        ("first start → last run closed (wall)", lambda p: f"{p['wall_s']:.2f} s"),
        ("**runs/s**", lambda p: f"**{p['runs_per_s']:.1f}**"),
        ("runs/s of each phase, in the order run", lambda p: ", ".join(f"{r:.1f}" for r in p["phase_rates"])),
        ("**activities/s**", lambda p: f"**{p['activities_per_s']:.1f}**"),
        ("activities / timers fired, all runs", lambda p: f"{p['activities']} / {p['timers']}"),
        ("events per run history", hist),
        ("one run, start → close p50 / p99", lambda p: f"{ms(percentile(p['run_s'], 50))} / {ms(percentile(p['run_s'], 99))}"),
        ("workflow task (started → completed) p50 / p99",
         lambda p: f"{ms(percentile(p['wft_s'], 50))} / {ms(percentile(p['wft_s'], 99))}"),
        ("CPU in the phase: this process (client + worker) / dev server", cpu),
        ("of this process: in activities (thread CPU) / the rest (workflow tasks, event loop, client)",
         lambda p: "-" if p.get("cpu_activities_s") is None or p["cpu_self_s"] is None else
         f"{p['cpu_activities_s']:.1f} / {p['cpu_self_s'] - p['cpu_activities_s']:.1f} s"),
    ]
    out = [f"| figure | Keepflow | bare Temporal{', sending by hand' if raw.get('bare_sends') else ''} |", "|---|---|---|"]
    out += [f"| {label} | {f(kf)} | {f(bare)} |" for label, f in rows]
    out.append(f"| **ratio Keepflow / bare (runs/s)** | **{ratio:.2f}** | |" if ratio is not None else
               "| ratio Keepflow / bare | - | |")
    if kf.get("steps"):
        out += ["", "send_message's steps in the Keepflow phase (`--breakdown`: timers put on at run time; wall time "
                "on the activity threads, so the totals overlap):", "",
                "| step | calls | p50 | p99 | total |", "|---|---|---|---|---|"]
        order = {label: i for i, (_, _, _, label) in enumerate(SEND_STEPS)}
        for label, (n, p50, p99, total) in sorted(kf["steps"].items(), key=lambda kv: order.get(kv[0], 99)):
            out.append(f"| {label} | {n} | {ms(p50)} | {ms(p99)} | {total:.1f} s |")
    out += ["", f"Keepflow send outcomes: {kf.get('outcomes')}; message rows by status in the outbox store: "
            f"{kf.get('messages')}." + (f" Messages the bare side sent by hand: {bare['hand_sent']}."
                                        if "hand_sent" in bare else "")]
    return "\n".join(out), ratio


def write_results(raw: dict[str, Any], table: str, note: str, ratio: float | None, ratios: list[float]) -> None:
    """`raw`, `table`, `note`, `ratio`: the median run of `ratios` (one per run, in the order run)."""
    scale = Fraction(raw["time_scale"]).limit_denominator(1_000_000)
    repeat = f" --repeat {len(ratios)}" if len(ratios) > 1 else ""
    section = "\n".join([
        SECTION, "",
        *provenance(command := f"python bench/throughput.py --runs {raw['runs']} --start-concurrency "
                    f"{raw['concurrency']} --time-scale {scale}{' --sandboxed' if raw.get('sandboxed') else ''}"
                    f"{' --bare-first' if raw['bare_first'] else ''}{repeat} --write-results", pragmas=True),
        *([f"- Repeated: {len(ratios)} whole runs, each on a fresh dev server, gave ratios "
           f"{', '.join(f'{r:.2f}' for r in ratios)} (in the order run); **median {ratio:.2f}**. The figures below "
           "are the median run's."] if len(ratios) > 1 and ratio is not None else []),
        f"- Parameters: {raw['runs']} runs per phase on one dev server, four phases mirrored "
        f"({'bare, Keepflow, Keepflow, bare' if raw['bare_first'] else 'Keepflow, bare, bare, Keepflow'}), "
        "each side's two phases added up; "
        f"{raw['concurrency']} start calls in flight; time scale {scale} (each `wait: 1d` lasts "
        f"{wait_seconds(raw['time_scale']):g} s). Keepflow: the worker from worker.py "
        f"({'`sequence` in the sandbox (diagnostic)' if raw.get('sandboxed') else '`sequence` without the sandbox, as production runs it'}, "
        f"outbox providers, {'PostgreSQL' if os.environ.get('DATABASE_URL') else 'SQLite'} store) running a synthetic sequence of `fulfilment`'s shape (its 4 sends and "
        "templates; its 2 `wait_for` as `wait: 1d`; no `start: education`). Bare: an unsandboxed workflow with "
        f"the same 4 activities (no-op, sync, {raw['activity_threads']} threads) and 2 timers, same worker limits.",
        "",
        table, "",
        note, "",
    ])
    write_section(SECTION, section)
    if ratio is not None and not raw.get("sandboxed"):  # a diagnostic run is not the product's figure
        kf, bare = rates(raw["keepflow"]), rates(raw["bare"])
        figures = {"throughput.ratio": round(ratio, 3), "throughput.keepflow_runs_per_s": round(kf["runs_per_s"], 2),
                   "throughput.bare_runs_per_s": round(bare["runs_per_s"], 2), "throughput.repeats": len(ratios),
                   "throughput.ratio_min": round(min(ratios), 3), "throughput.ratio_max": round(max(ratios), 3)}
        if kf["cpu_self_s"] is not None and bare["cpu_self_s"] is not None:
            figures["throughput.worker_cpu_ms_per_run"] = round(kf["cpu_self_s"] / max(kf["completed"], 1) * 1000, 1)
            figures["throughput.bare_cpu_ms_per_run"] = round(bare["cpu_self_s"] / max(bare["completed"], 1) * 1000, 1)
        write_figures(figures, command, machine())


def interpretation(raw: dict[str, Any], ratio: float | None) -> str:
    kf, bare = rates(raw["keepflow"]), rates(raw["bare"])
    out = []
    if ratio is not None:
        bare_name = ("a bare Temporal sequence whose sends are written by hand" if raw.get("bare_sends")
                     else "bare Temporal")
        out.append(f"Keepflow completes {ratio:.2f} of the runs per second of {bare_name} on the same server.")
    if kf["cpu_self_s"] is not None and bare["cpu_self_s"] is not None:
        per_kf = kf["cpu_self_s"] / max(kf["completed"], 1) * 1000
        per_bare = bare["cpu_self_s"] / max(bare["completed"], 1) * 1000
        srv_kf = kf["cpu_server_s"] / max(kf["completed"], 1) * 1000
        srv_bare = bare["cpu_server_s"] / max(bare["completed"], 1) * 1000
        out.append(f"Per run, the worker process spent {per_kf:.0f} ms of CPU for Keepflow against {per_bare:.0f} ms "
                   f"bare, and the dev server {srv_kf:.0f} ms against {srv_bare:.0f} ms.")
        out.append(f"A workflow task took {ms(percentile(kf['wft_s'], 50))} at p50 in Keepflow against "
                   f"{ms(percentile(bare['wft_s'], 50))} bare (server clock, picked up → completed).")
        busiest = max(kf["cpu_self_s"] / kf["observed_wall_s"], kf["cpu_server_s"] / kf["observed_wall_s"])
        if busiest > 0.9:
            out.append("In the Keepflow phase one process ran at about a full core, so CPU is the limit there: the "
                       "worker is one Python interpreter, whose workflow tasks and activity threads share the GIL.")
    return " ".join(out)


def wait_seconds(time_scale: float) -> float:
    """How long each `wait: 1d` lasts in the compressed definitions (and in the bare phase)."""
    return scaled(timedelta(seconds=WAIT_SECONDS), time_scale).total_seconds()


def parse_scale(text: str) -> float:
    value = float(Fraction(text))
    if value <= 0:
        raise argparse.ArgumentTypeError("the time scale must be positive")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per phase (default 200)")
    parser.add_argument("--start-concurrency", type=int, default=50, help="start_workflow calls in flight (default 50)")
    parser.add_argument("--time-scale", type=parse_scale, default=1 / 86400,
                        help="real seconds per definition second, e.g. 1/86400: a day per second (the default); "
                             "the compressed waits are whole seconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a phase may take to finish (default 180)")
    parser.add_argument("--breakdown", action="store_true",
                        help="time send_message's steps (timers put on at run time, never in files)")
    parser.add_argument("--sandboxed", action="store_true",
                        help="diagnostic: run Keepflow's workflows in Temporal's sandbox (as tests do; production does not)")
    parser.add_argument("--bare-first", action="store_true", help="mirror the other way: bare, Keepflow, Keepflow, bare")
    parser.add_argument("--bare-sends", action="store_true",
                        help="diagnostic: bare's activities send as a sequence written by hand would (render the same "
                             "template, one row, one outbox line) instead of doing nothing")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the whole benchmark N times, each on a fresh dev server, and report the median run "
                             "(issue 16's target is the median of 3)")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    args = parser.parse_args()
    if args.runs < 1 or args.start_concurrency < 1 or args.repeat < 1:
        parser.error("--runs, --start-concurrency and --repeat must be at least 1")
    if args.bare_sends and args.write_results:
        parser.error("--bare-sends is a diagnostic: its figures are not the benchmark's, so they are not written")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    done: list[tuple[float | None, dict[str, Any], str, str]] = []
    ok = True
    for number in range(1, args.repeat + 1):
        raw = asyncio.run(bench(args.runs, args.start_concurrency, args.time_scale, args.timeout,
                                breakdown=args.breakdown, sandboxed=args.sandboxed, bare_first=args.bare_first,
                                bare_sends=args.bare_sends))
        table, ratio = report(raw)
        note = interpretation(raw, ratio)
        print()
        print(table)
        print()
        print(note)
        if args.repeat > 1:
            print(f"\nrun {number} of {args.repeat}: ratio {'-' if ratio is None else f'{ratio:.2f}'}", flush=True)
        ok = ok and all(raw[side]["completed"] == raw[side]["runs"] == 2 * args.runs for side in ("keepflow", "bare"))
        done.append((ratio, raw, table, note))
    ratios = [r if r is not None else 0.0 for r, *_ in done]
    median_ratio, raw, table, note = sorted(done, key=lambda run: run[0] or 0.0)[(len(done) - 1) // 2]
    if args.repeat > 1:
        print(f"\nratios {', '.join(f'{r:.2f}' for r in ratios)}: median {median_ratio or 0.0:.2f}")
    if args.write_results:
        write_results(raw, table, note, median_ratio, ratios)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
