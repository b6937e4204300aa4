"""The inactivity scan over a large customer table: time, memory, and win-back runs started per second.

    python bench/scan.py [--customers 1000000] [--inactive-share 0.01] [--page-size 500]
                         [--runs execute|park] [--timeout S] [--write-results]

A benchmark script, not a timed test. In a throwaway folder it

1. generates N customers into a fresh Keepflow SQLite database (after the Alembic upgrade), in
   one transaction of 10,000-row `executemany` batches: `--inactive-share` of them last seen
   61-730 days ago (past win-back's `inactive_for: 60d`), the rest 0-59 days ago; 90 % consented
   to email and SMS, the others to neither. This is set-up and is timed on its own;
2. starts the real stack in this process: Temporal's dev server (headless, free port, its own
   SQLite file) and the Keepflow worker from worker.py (`build_worker`, the real catalog from
   sequences.yaml, the outbox providers);
3. starts one `inactivity_scan` workflow (what the hourly Schedule starts) and waits, bounded by
   `--timeout`, for its result. It does not wait for the win-back runs the scan started.

Reported: scan wall time (start_workflow call → result), customers read against the table size
(the scan should read only the inactive range, through the `last_seen_at` index: the script
EXPLAINs the page query the scan actually ran), runs started per second of scan time, the scan's
continue-as-new runs (walked back through their histories), each page's activity time and the
gaps between pages, the peak RSS of this process and of the dev server during the scan (and the
rise over the baseline just before it), the CPU seconds of both, and timers put on at run time
around the scan's own steps (`--no-breakdown` leaves them off; no file is changed).

`--runs execute` (the default) runs the real `sequence` workflow, so each started win-back run
creates its coupon and writes its email and SMS to the outbox while the scan goes on, as in
production. `--runs park` measures the scan alone: the worker then hosts only the scan, and
`sequence` is a stand-in that takes its first workflow task and waits (it does nothing).

Everything listens on 127.0.0.1 only; every wait is bounded; the dev server (and with it every
run the scan started) is stopped and the folder removed, also on error or Ctrl-C. Exit code 0
when the scan finished and started a run for every consenting inactive customer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from temporalio import workflow

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # worker.py at the repository root; ingest.py beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from figures import write_figures  # noqa: E402
from ingest import (_proc_cpu_seconds, _tree_cpu_seconds, instrument, machine, ms, percentile, provenance,  # noqa: E402
                    write_section)

RESULTS = BENCH / "RESULTS.md"
SECTION = "## Inactivity scan (bench/scan.py)"
BATCH = 10_000
CONSENT_SHARE = 0.9
INACTIVE_DAYS = (61, 730)  # win-back's inactive_for is 60d: a day of margin on either side
ACTIVE_DAYS = (0, 59)
SAMPLE_EVERY = 0.5  # seconds between RSS samples
PROGRESS_EVERY = 10.0  # seconds between progress lines (the same text the Temporal UI shows)


# -- 1. the customers --------------------------------------------------------------------------

def generate(db_path: Path, customers: int, inactive_share: float, seed: int) -> dict[str, Any]:
    """Fill `customers` with raw sqlite3 `executemany` batches in one transaction.

    Values are written as SQLAlchemy writes them on SQLite (naive UTC `YYYY-MM-DD HH:MM:SS.ffffff`,
    JSON text), and the caller checks that through the ORM afterwards.
    """
    rng = random.Random(seed)
    inactive = set(rng.sample(range(customers), round(customers * inactive_share)))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    yes, no = json.dumps({"email": True, "sms": True}), json.dumps({"email": False, "sms": False})
    day = 86_400.0
    consenting_inactive = 0

    def rows(start: int, stop: int):
        nonlocal consenting_inactive
        for i in range(start, stop):
            gone = i in inactive
            low, high = INACTIVE_DAYS if gone else ACTIVE_DAYS
            seen = now - timedelta(seconds=rng.uniform(low * day, high * day))
            consents = rng.random() < CONSENT_SHARE
            consenting_inactive += gone and consents
            yield (f"c{i:07d}", f"c{i}@example.com", f"+6681{i:07d}", "Nok", "en", "Asia/Bangkok",
                   yes if consents else no, "{}", seen.strftime("%Y-%m-%d %H:%M:%S.%f"))

    started = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN")
        for start in range(0, customers, BATCH):
            conn.executemany(
                "INSERT INTO customers (id, email, phone, first_name, locale, timezone, consents, attributes, "
                "last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows(start, min(start + BATCH, customers)))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"seconds": time.perf_counter() - started, "inactive": len(inactive),
            "consenting_inactive": consenting_inactive, "bytes": db_path.stat().st_size}


def check_table(db, threshold: datetime) -> dict[str, int]:
    """Through the ORM, as the scan reads them: rows in all, and rows past the threshold."""
    from sqlalchemy import func, select

    from keepflow.store import Customer

    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Customer))
        past = session.scalar(select(func.count()).select_from(Customer).where(Customer.last_seen_at < threshold))
    return {"rows": total, "past_threshold": past}


def capture_page_queries(engine) -> list[tuple[str, Any]]:
    """Note the first two SELECTs on `customers` the engine runs (a first page, then a page after a cursor)."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def note(_conn, _cursor, statement, parameters, _context, _many):
        if len(seen) < 2 and re.search(r"FROM customers\b", statement) and "ORDER BY" in statement:
            if not seen or ("customers.id >" in statement) != ("customers.id >" in seen[0][0]):
                seen.append((statement, parameters))

    return seen


def explain(engine, queries: list[tuple[str, Any]]) -> list[str]:
    out = []
    with engine.connect() as conn:
        for statement, parameters in queries:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            out.append("; ".join(row[-1] for row in plan))
    return out


# -- 2. memory and CPU -------------------------------------------------------------------------

def _status_kb(pid: int | str, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak(pid: int | str) -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS of this process and of the dev server every SAMPLE_EVERY seconds, in a thread."""

    def __init__(self, server_pid: int):
        self.pids = {"keepflow": os.getpid(), "temporal": server_pid}
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int | None]:
        return {name: _status_kb(pid, "VmRSS") for name, pid in self.pids.items()}

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.samples.append((time.monotonic(), self.sample()))

    def __enter__(self) -> RssSampler:
        self.reset = {name: _reset_peak(pid) for name, pid in self.pids.items()}
        self.baseline = self.sample()
        self.samples.append((time.monotonic(), self.baseline))
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.end = self.sample()
        self.samples.append((time.monotonic(), self.end))
        # VmHWM catches peaks between samples, when the reset above worked.
        self.hwm = {name: _status_kb(pid, "VmHWM") if self.reset[name] else None for name, pid in self.pids.items()}

    def peak(self, name: str) -> int | None:
        values = [s[name] for _, s in self.samples if s.get(name) is not None]
        if self.hwm.get(name) is not None:
            values.append(self.hwm[name])
        return max(values, default=None)

    def at(self, name: str, share: float) -> int | None:
        """RSS at a share (0..1) of the sampled window."""
        if not self.samples:
            return None
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        target = t0 + share * (t1 - t0)
        return min(self.samples, key=lambda s: abs(s[0] - target))[1].get(name)


# -- 3. timers around the scan's own steps -----------------------------------------------------

TIMED = (
    ("activities.builtin.inactivity", "InactivityScanner", "_candidates",
     "page read + checks (_candidates: customers, cool-down, RFM, consent; in a thread)"),
    ("activities.builtin.inactivity", None, "_scores", "RFM scores lookup (_scores, inside the page read)"),
    ("activities.builtin.inactivity", "InactivityScanner", "_start", "one start (_start: start_workflow + record_run)"),
    ("temporalio.client", "Client", "start_workflow", "Client.start_workflow (in _start)"),
    ("keepflow.runtime.starts", None, "record_run", "record_run (SQLite insert; in a thread)"),
)


# -- 4. the stack and the scan -----------------------------------------------------------------

@workflow.defn(name="sequence", sandboxed=False)
class ParkedSequence:
    """`--runs park`: stands in for the sequence workflow; takes its first task and waits, doing nothing."""

    @workflow.run
    async def run(self, _input: Any) -> None:
        await workflow.wait_condition(lambda: False)


def scan_only_worker(client, settings, db, catalog, task_queue: str):
    from temporalio.worker import Worker

    from activities.builtin.inactivity import InactivityScanner
    from worker import SANDBOX
    from workflows.inactivity import InactivityScan

    return Worker(client, task_queue=task_queue, workflows=[InactivityScan, ParkedSequence], workflow_runner=SANDBOX,
                  activities=[InactivityScanner(client, db, catalog).scan_inactive_page])


async def scan_runs(client, scan_id: str) -> list[Any]:
    """Every run of the scan, first to last: walked back from the latest through continued_execution_run_id."""
    from temporalio.api.enums.v1 import EventType

    runs, run_id = [], None
    for _ in range(10_000):
        history = await asyncio.wait_for(client.get_workflow_handle(scan_id, run_id=run_id).fetch_history(), 60)
        runs.append(history)
        first = history.events[0]
        assert first.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        run_id = first.workflow_execution_started_event_attributes.continued_execution_run_id
        if not run_id:
            break
    return list(reversed(runs))


def page_times(histories: list[Any]) -> dict[str, Any]:
    """Per page: scheduled → completed of its activity; between pages: completed → next scheduled."""
    from temporalio.api.enums.v1 import EventType

    def at(e) -> float:
        return e.event_time.seconds + e.event_time.nanos / 1e9

    pages, gaps, attempts = [], [], 0
    first = last = None
    for history in histories:
        scheduled: dict[int, float] = {}
        previous_done = None
        for e in history.events:
            kind = e.event_type
            first = at(e) if first is None else first
            last = at(e)
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[e.event_id] = at(e)
                if previous_done is not None:
                    gaps.append(at(e) - previous_done)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attempts += e.activity_task_started_event_attributes.attempt - 1
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = at(e)
                pages.append(done - scheduled[e.activity_task_completed_event_attributes.scheduled_event_id])
                previous_done = done
    return {"pages": pages, "gaps": gaps, "retries": attempts, "server_span": (last - first) if pages else None}


async def progress(handle, lines: list[str], every: float) -> None:
    """Ask the running scan for its current details (what the Temporal UI shows) every `every` seconds."""
    from temporalio.api.sdk.v1 import WorkflowMetadata

    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):  # between runs (continue-as-new) a query may miss
            meta = await asyncio.wait_for(handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata), 10)
            line = f"[{time.monotonic() - started:6.1f} s] {meta.current_details}"
            lines.append(line)
            print(line, flush=True)


async def bench(customers: int, inactive_share: float, page_size: int, runs_mode: str, timeout: float,
                seed: int, breakdown: bool) -> dict[str, Any]:
    from sqlalchemy import func, select

    from keepflow.runtime.payloads import ScanInput
    from keepflow.runtime.registry import load_catalog
    from keepflow.settings import Settings
    from keepflow.store import Database, Message, Run, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from worker import build_worker
    from workflows.inactivity import PAGES_PER_RUN, InactivityScan

    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-scan-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    db: Database | None = None
    try:
        settings = Settings(
            data_dir=data_dir, sequences_path=ROOT / "sequences.yaml", templates_dir=ROOT / "templates",
            database_url=None, temporal_address=None, task_queue=f"bench-scan-{tag}",
            email_provider="outbox", sms_provider="outbox",
        )
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        [winback] = [s for s in catalog.inactivity_sequences()]
        upgrade(settings.resolved_database_url)
        print(f"generating {customers:,} customers ({inactive_share:.2%} inactive) ...", flush=True)
        made = generate(data_dir / "keepflow.db", customers, inactive_share, seed)
        db = Database(settings.resolved_database_url)
        table = check_table(db, datetime.now(timezone.utc) - winback.inactivity.inactive_for)
        print(f"  {made['seconds']:.1f} s; {table['rows']:,} rows, {table['past_threshold']:,} past "
              f"{winback.inactivity.inactive_for.days}d, {made['consenting_inactive']:,} of them consenting; "
              f"{made['bytes'] / 2**20:.0f} MiB", flush=True)
        queries = capture_page_queries(db.engine)

        server.start()
        client = await server.wait_ready(settings)
        if runs_mode == "execute":
            worker = build_worker(client, settings, db, task_queue=settings.task_queue, catalog=catalog)
        else:
            worker = scan_only_worker(client, settings, db, catalog, settings.task_queue)
        scan_id = f"bench-inactivity-scan-{tag}"
        lines: list[str] = []
        async with worker:
            print(f"stack up: Temporal {server.address}; scanning (page size {page_size}, runs: {runs_mode}, "
                  f"at most {timeout:.0f} s) ...", flush=True)
            cpu_before = {"keepflow": _proc_cpu_seconds(os.getpid()), "temporal": _tree_cpu_seconds(server.process.pid)}
            with instrument(breakdown, TIMED, thread_waits=False) as timings, RssSampler(server.process.pid) as rss:
                started = time.monotonic()
                handle = await client.start_workflow(InactivityScan.run, ScanInput(page_size=page_size), id=scan_id,
                                                     task_queue=settings.task_queue)
                watcher = asyncio.create_task(progress(handle, lines, PROGRESS_EVERY))
                try:
                    totals = await asyncio.wait_for(handle.result(), timeout)
                    error = None
                except (asyncio.TimeoutError, Exception) as err:  # noqa: BLE001 - reported, then exit 1
                    totals, error = None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                finally:
                    wall = time.monotonic() - started
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
            cpu_after = {"keepflow": _proc_cpu_seconds(os.getpid()), "temporal": _tree_cpu_seconds(server.process.pid)}
            steps = {k: list(v) for k, v in timings.items()}
            with db.session() as session:
                recorded = session.scalar(select(func.count()).select_from(Run).where(Run.sequence_id == winback.id))
                sent = dict(session.execute(select(Message.channel, func.count()).where(
                    Message.sequence_id == winback.id, Message.status == "sent").group_by(Message.channel)).all())
            print("scan done; reading its histories ..." if error is None else f"scan did not finish: {error}",
                  flush=True)
            histories = await scan_runs(client, scan_id) if error is None else []
            # Not waiting for the win-back runs: the worker stops now, the dev server (and they) after it.
        plans = explain(db.engine, list(queries))
        return {
            "customers": customers, "inactive_share": inactive_share, "page_size": page_size, "runs_mode": runs_mode,
            "seed": seed, "generated": made, "table": table, "plans": plans, "error": error, "wall": wall,
            "totals": totals.model_dump() if totals is not None else None, "recorded_runs": recorded, "sent": sent,
            "scan_runs": len(histories), "pages_per_run": PAGES_PER_RUN, "history_events": [len(h.events) for h in histories],
            "page_times": page_times(histories), "progress": lines, "steps": steps,
            "rss": {name: {"baseline": rss.baseline[name], "peak": rss.peak(name), "end": rss.end[name],
                           "at_10": rss.at(name, 0.1), "hwm_reset": rss.reset[name]} for name in rss.pids},
            "cpu": {k: (cpu_after[k] - cpu_before[k]) if None not in (cpu_after[k], cpu_before[k]) else None
                    for k in cpu_before},
        }
    finally:
        if db is not None:
            db.dispose()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- 5. the report -----------------------------------------------------------------------------

def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    totals = raw["totals"] or {}
    wall = raw["wall"]
    pages_n = len(raw["page_times"]["pages"])
    expected_pages = totals.get("scanned", 0) // raw["page_size"] + 1 if totals else None
    steps = {label: (len(v), percentile(v, 50), percentile(v, 99), sum(v)) for label, v in raw["steps"].items()}
    return {
        **raw, "pages": pages_n, "expected_pages": expected_pages,
        "expected_scan_runs": math.ceil(expected_pages / raw["pages_per_run"]) if expected_pages else None,
        "started_per_s": totals.get("started", 0) / wall if wall else 0.0,
        "scanned_per_s": totals.get("scanned", 0) / wall if wall else 0.0,
        "steps": steps, "read_first_last": _first_last(raw["steps"].get(TIMED[0][3], [])),
    }


def _first_last(reads: list[float]) -> str:
    """p50 of the first and of the last tenth of the page reads, in call order (the cost of the cursor)."""
    if not reads:
        return "-"
    tenth = max(1, len(reads) // 10)
    return f"{ms(percentile(reads[:tenth], 50))} / {ms(percentile(reads[-tenth:], 50))}"


def report(s: dict[str, Any]) -> str:
    t, gen, table, rss, cpu, pt = s["totals"] or {}, s["generated"], s["table"], s["rss"], s["cpu"], s["page_times"]
    skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(t.get("skipped", {}).items())) or "none"

    def mem(name: str) -> str:
        r = rss[name]
        rise = (r["peak"] - r["baseline"]) if None not in (r["peak"], r["baseline"]) else None
        return (f"{mib(r['baseline'])} → peak {mib(r['peak'])} (+{mib(rise)}); "
                f"{mib(r['at_10'])} at 10 % of the scan, {mib(r['end'])} at its end")

    rows = [
        ("customers in the table / generated in", f"{table['rows']:,} / {gen['seconds']:.1f} s "
         f"({table['rows'] / gen['seconds']:,.0f} rows/s, {gen['bytes'] / 2**20:.0f} MiB file; set-up, not the scan)"),
        ("past 60 days (inactive) / of them consenting", f"{table['past_threshold']:,} / {gen['consenting_inactive']:,}"),
        ("scan finished", "yes" if s["error"] is None else f"no: {s['error']}"),
        ("**scan wall time** (start_workflow → result)", f"**{s['wall']:.1f} s**"),
        ("**customers read by the scan** / table size", f"**{t.get('scanned', 0):,}** / {table['rows']:,} "
         f"({t.get('scanned', 0) / max(table['rows'], 1):.2%})"),
        ("runs started / skipped", f"{t.get('started', 0):,} / {skipped}"),
        ("win-back rows in `runs` (record_run)", f"{s['recorded_runs']:,}"),
        ("**runs started per second of scan**", f"**{s['started_per_s']:.1f}**"),
        ("customers read per second of scan", f"{s['scanned_per_s']:.0f}"),
        ("pages (activities) / scan runs (continue-as-new)",
         f"{s['pages']} / {s['scan_runs']} (expected {s['expected_pages']} / {s['expected_scan_runs']} at "
         f"{s['pages_per_run']} pages a run); history events per run: max {max(s['history_events'], default=0)}"),
        ("page activity (scheduled → completed) p50 / p99 / sum", f"{ms(percentile(pt['pages'], 50))} / "
         f"{ms(percentile(pt['pages'], 99))} / {sum(pt['pages']):.1f} s; retried attempts: {pt['retries']}"),
        ("between pages (completed → next scheduled) p50 / p99 / sum", f"{ms(percentile(pt['gaps'], 50))} / "
         f"{ms(percentile(pt['gaps'], 99))} / {sum(pt['gaps']):.1f} s"),
        ("page read (_candidates): first / last tenth of the pages, p50", s["read_first_last"]),
        ("**RSS, this process** (worker + scan)", f"**{mem('keepflow')}**"),
        ("RSS, Temporal dev server", mem("temporal")),
        ("CPU during the scan: Keepflow process / dev server",
         f"{cpu['keepflow']:.1f} / {cpu['temporal']:.1f} s of {(os.cpu_count() or 1) * s['wall']:.1f} core-s "
         f"({os.cpu_count()} cores × {s['wall']:.1f} s)" if None not in cpu.values() else "-"),
        ("win-back messages sent during the scan (outbox)",
         ", ".join(f"{n:,} {ch}" for ch, n in sorted(s["sent"].items())) or "0"),
    ]
    out = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if s["plans"]:
        out += ["", "The page query the scan ran, as SQLite plans it (`EXPLAIN QUERY PLAN`): "
                + " — then, after a cursor: ".join(f"`{p}`" for p in s["plans"])]
    if s["steps"]:
        out += ["", "The scan's own steps (timers put on at run time by the script; `--no-breakdown` leaves them off):",
                "", "| step | calls | p50 | p99 | total |", "|---|---|---|---|---|"]
        order = {label: i for i, (_, _, _, label) in enumerate(TIMED)}
        for label, (n, p50, p99, total) in sorted(s["steps"].items(), key=lambda kv: order.get(kv[0], 99)):
            out.append(f"| {label} | {n:,} | {ms(p50)} | {ms(p99)} | {total:.1f} s |")
    return "\n".join(out)


def interpretation(s: dict[str, Any]) -> str:
    """Sentences drawn from the figures, so a rerun elsewhere stays honest."""
    t, pt, cpu, wall = s["totals"] or {}, s["page_times"], s["cpu"], s["wall"]
    if not t:
        return "The scan did not finish within the timeout; no figures to interpret."
    out = []
    page_sum, gap_sum = sum(pt["pages"]), sum(pt["gaps"])
    out.append(f"Of the {wall:.1f} s scan, its {s['pages']} page activities took {page_sum:.1f} s and the workflow "
               f"between pages {gap_sum:.1f} s" + (", so the time is in the pages." if page_sum > 2 * gap_sum else "."))
    steps = s["steps"]
    read = steps.get(TIMED[0][3])
    start = steps.get(TIMED[2][3])
    begin = steps.get(TIMED[3][3])
    record = steps.get(TIMED[4][3])
    if read and start and begin:
        parallel = 16
        with contextlib.suppress(ImportError):
            from activities.builtin.inactivity import PARALLEL_STARTS as parallel
        out.append(
            f"Reading {t['scanned']:,} customers in pages of {s['page_size']} (cool-down, RFM and consent checks "
            f"included) took {read[3]:.1f} s in all; the rest is starting runs, {parallel} at a time: one start took "
            f"{ms(start[1])} at p50 ({ms(start[2])} at p99), of which Client.start_workflow (the dev server's "
            f"answer) {ms(begin[1])} and record_run {ms(record[1]) if record else '-'}, which caps a page at about "
            f"{parallel / start[1]:.0f} starts/s.")
    if None not in cpu.values():
        kf, tp = cpu["keepflow"] / wall, cpu["temporal"] / wall
        busy = (cpu["keepflow"] + cpu["temporal"]) / ((os.cpu_count() or 1) * wall)
        what = ("the started win-back runs executing beside it (coupon, email and SMS to the outbox)"
                if s["runs_mode"] == "execute" else "the stand-in runs, which only take their first task")
        rss = s["rss"]["keepflow"]
        flat = (f"; this process's RSS went from {mib(rss['at_10'])} at 10 % of the scan to {mib(rss['end'])} at "
                f"its end" + (" (the worker also caches up to 1,000 of the started runs, the SDK's default)"
                              if s["runs_mode"] == "execute" else "")) if None not in (rss["at_10"], rss["end"]) else ""
        out.append(f"The Keepflow process (the scan and {what}) ran at {kf:.2f} cores and the Temporal dev server "
                   f"at {tp:.2f}, {busy:.0%} of the machine{flat}.")
    return " ".join(out)


def write_results(s: dict[str, Any]) -> None:
    command = (f"python bench/scan.py --customers {s['customers']} --inactive-share {s['inactive_share']} "
               f"--page-size {s['page_size']}" + (" --runs park" if s["runs_mode"] == "park" else "") + " --write-results")
    section = "\n".join([
        SECTION, "",
        *provenance(command, pragmas=True),
        f"- Parameters: {s['customers']:,} customers in Keepflow's SQLite file, {s['inactive_share']:.2%} of them last "
        f"seen 61-730 days ago, 90 % consented to email and SMS; one `inactivity_scan` run (page size "
        f"{s['page_size']}) on the worker from worker.py with the outbox providers; "
        + ("the started win-back runs execute during the scan (not waited for after it)" if s["runs_mode"] == "execute"
           else "`--runs park`: the started runs are a stand-in that does nothing"),
        "",
        report(s), "",
        interpretation(s), "",
    ])
    write_section(SECTION, section)
    if s["error"] is None:  # a scan cut off by the timeout has no figures to compare
        write_figures(figures(s), command, machine())


def figures(s: dict[str, Any]) -> dict[str, float | int]:
    """The bold rows of the report and the counts beside them; `--runs park` keys say so (scan.park.*)."""
    t, pt, rss = s["totals"] or {}, s["page_times"], s["rss"]
    key = "scan.park" if s["runs_mode"] == "park" else "scan"

    def mib_or_none(kb: int | None) -> float | None:
        return None if kb is None else round(kb / 1024, 1)

    out: dict[str, float | int | None] = {
        f"{key}.wall_s": round(s["wall"], 1),
        f"{key}.customers_read": t.get("scanned", 0),
        f"{key}.runs_started": t.get("started", 0),
        f"{key}.runs_started_per_s": round(s["started_per_s"], 1),
        f"{key}.customers_read_per_s": round(s["scanned_per_s"], 1),
        f"{key}.pages": s["pages"],
        f"{key}.scan_runs": s["scan_runs"],
        f"{key}.page_p50_ms": round(percentile(pt["pages"], 50) * 1000) if pt["pages"] else None,
        f"{key}.page_p99_ms": round(percentile(pt["pages"], 99) * 1000) if pt["pages"] else None,
        f"{key}.keepflow_peak_rss_mib": mib_or_none(rss["keepflow"]["peak"]),
        f"{key}.temporal_peak_rss_mib": mib_or_none(rss["temporal"]["peak"]),
    }
    # Off Linux /proc is missing and the RSS is unknown: leave those keys as they were rather than write a null.
    return {k: v for k, v in out.items() if v is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="rows in the customers table (default 1,000,000)")
    parser.add_argument("--inactive-share", type=float, default=0.01,
                        help="share of customers past 60 days (default 0.01: 10,000 of a million; see bench/README.md)")
    parser.add_argument("--page-size", type=int, default=500, help="the scan's page size (default 500, as the Schedule)")
    parser.add_argument("--runs", choices=("execute", "park"), default="execute",
                        help="execute: the real sequence workflow runs the started win-backs (default); "
                             "park: a stand-in that does nothing, to measure the scan alone")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the scan may take (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the generated customers")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="do not time the scan's steps (the timers are put on at run time, never in files)")
    args = parser.parse_args()
    if args.customers < 1 or not 0 <= args.inactive_share <= 1 or not 0 < args.page_size <= 10_000:
        parser.error("--customers must be at least 1, --inactive-share within 0..1, --page-size within 1..10000")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = asyncio.run(bench(args.customers, args.inactive_share, args.page_size, args.runs, args.timeout, args.seed,
                            breakdown=not args.no_breakdown))
    s = summarize(raw)
    print()
    print(report(s))
    print()
    print(interpretation(s))
    ok = s["error"] is None and (s["totals"] or {}).get("started") == s["generated"]["consenting_inactive"]
    if s["error"] is None and not ok:
        print(f"\nMISMATCH: {s['generated']['consenting_inactive']:,} consenting inactive customers, "
              f"{(s['totals'] or {}).get('started', 0):,} runs started")
    if args.write_results:
        write_results(s)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
