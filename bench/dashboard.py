"""The dashboard over a million messages: how long each page takes, and what SQL it runs.

    python bench/dashboard.py [--messages 1000000] [--repeat 7] [--keep FILE | --reuse FILE]
                              [--role admin|marketer] [--plans] [--write-results]

A benchmark script, not a timed test. In a throwaway folder it

1. generates a shop's year into a fresh Keepflow SQLite database (after the Alembic upgrade), with
   raw sqlite3 `executemany` batches in one transaction: customers with RFM scores, runs of every
   sequence in sequences.yaml (their send steps, branches picked at random), one message row per
   send step reached (realistic bodies; sent, skipped with reasons, failed, held, pending), the
   provider notifications about them (delivered, opened, sometimes twice, clicked, unsubscribed),
   each run's trigger event and the orders of fulfilment runs. This is set-up and is timed on its own;
2. serves the real admin app (`keepflow.http.admin.create_admin_app`) on a free port, with
   Temporal's dev server (headless, free port) behind it so the pages that ask Temporal ask a real
   one, and signs in to it as an admin (so each customer and message page also writes its audit
   row), or with `--role marketer` as a marketer (every value on the page masked);
3. requests each dashboard page over HTTP: one warm-up, then `--repeat` times; reports the median
   and the slowest, the page size, and the SQL statements one more request ran (count and time),
   with SQLite's plan of the customer lookup by email (`--plans`: of every page's statements).

`--keep FILE` keeps the generated database; `--reuse FILE` skips generation and benchmarks that
file after upgrading it to the newest migration (the upgrade is timed: it is what building new
indexes costs on a million rows).

Everything listens on 127.0.0.1 only; everything started here is stopped and the folder removed,
also on error or Ctrl-C. Exit code 0 when every page answered 200, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # keepflow at the repository root; ingest.py beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from figures import write_figures  # noqa: E402
from ingest import machine, provenance, wait_for_http, write_section  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
SECTION = "## Dashboard pages (bench/dashboard.py)"
BATCH = 10_000
DAYS = 365  # the log spans a year; the overview's default period is its last 30 days
MESSAGES_PER_CUSTOMER = 7
SEQUENCE_WEIGHTS = {"fulfilment": 35, "education": 25, "cross_sell": 10, "review_request": 15, "winback": 15}
STEP_GAP = timedelta(days=2)  # between a run's consecutive sends
SKIP_REASONS = [("no consent for email", 5), ("customer has no email address", 2), ("email suppressed: unsubscribe", 3)]
TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy writes a datetime on SQLite (naive UTC)


# -- 1. the data -------------------------------------------------------------------------------

def _send_paths(steps, prefix: str, rng: random.Random) -> list[tuple[str, Any]]:
    """The send steps one run reaches: one arm of each `if` and `split`, a timeout arm sometimes."""
    from keepflow.language.dsl import IfStep, SendStep, SplitStep, WaitForStep, child_branches, step_path

    out: list[tuple[str, Any]] = []
    for index, step in enumerate(steps):
        path = step_path(prefix, index, step)
        if isinstance(step, SendStep):
            out.append((path, step))
        branches = child_branches(step)
        if isinstance(step, (IfStep, SplitStep)) and branches:
            branches = [rng.choice(branches)]
        elif isinstance(step, WaitForStep):
            branches = [b for b in branches if rng.random() < 0.4]
        for branch, children in branches:
            out.extend(_send_paths(children, f"{path}.{branch}", rng))
    return out


def _body(channel: str, template: str, name: str, customer: str) -> tuple[str | None, str]:
    if channel == "sms":
        return None, f"Hi {name}, {template.replace('_', ' ')}: see https://shop.example.com/o/{customer} Reply STOP to opt out"
    paragraph = ("<p style=\"margin:0 0 12px;font:15px/1.5 sans-serif;color:#1d2433\">Thank you for shopping with "
                 "Test Shop. Here is everything you need to know about your order and how to get the most from it."
                 "</p>")
    return (f"{template.replace('_', ' ').capitalize()}, {name}",
            f"<html><body><table width=\"600\"><tr><td><h1>Hello {name}</h1>{paragraph * 4}"
            f"<p><a href=\"https://shop.example.com/c/{customer}\">Open your account</a></p>"
            f"<p style=\"font-size:12px\"><a href=\"https://shop.example.com/u/{customer}\">Unsubscribe</a></p>"
            "</td></tr></table></body></html>")


def generate(db_path: Path, messages: int, seed: int) -> dict[str, Any]:
    """Fill the store in one transaction; returns row counts and the time it took.

    Runs start in time order over the year and each run's sends follow it every STEP_GAP, so message
    ids grow with `created_at` as in production (a heap orders the sends of overlapping runs).
    """
    from keepflow.runtime.registry import load_catalog

    catalog = load_catalog(ROOT / "sequences.yaml", ROOT / "templates")
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    start = now - timedelta(days=DAYS)
    customers = max(10, messages // MESSAGES_PER_CUSTOMER)
    sequences = {s.id: s for s in catalog.file.sequences}
    weights = {k: w for k, w in SEQUENCE_WEIGHTS.items() if k in sequences} or {k: 1 for k in sequences}
    ids, chances = list(weights), list(weights.values())
    # Sends per run, sampled, so that the runs spread over the year write about `messages` rows.
    sample = random.Random(seed + 1)
    per_run = statistics.mean(len(_send_paths(sequences[sample.choices(ids, chances)[0]].steps, "", sample))
                              for _ in range(5000))
    runs_wanted = int(messages / per_run * 1.03) + 1  # a little over: the sends still ahead of now are dropped
    names = ["Nok", "นก", "小明"]  # first names in the three locales the templates speak
    counts = {"customers": customers, "runs": 0, "messages": 0, "events": 0, "orders": 0, "scores": customers}

    conn = sqlite3.connect(db_path, isolation_level=None)
    started = time.perf_counter()
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.execute("BEGIN")
        segments = ["champions", "loyal", "potential_loyalists", "new_customers", "at_risk", "hibernating", "lost"]
        _batched(conn, "INSERT INTO customers (id, email, phone, first_name, locale, timezone, consents, attributes, "
                       "last_seen_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 ((f"c{i:07d}", f"c{i}@example.com", f"+6681{i:07d}", names[i % len(names)], "en", "Asia/Bangkok",
                   '{"email": true, "sms": true}', "{}", now.strftime(TS), start.strftime(TS), now.strftime(TS))
                  for i in range(customers)))
        _batched(conn, "INSERT INTO customer_scores (customer_id, recency_days, orders_count, monetary, r, f, m, segment, "
                       "level, fit, computed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 ((f"c{i:07d}", i % 365, 1 + i % 4, 100 + i % 900, 1 + i % 5, 1 + (i // 5) % 5, 1 + (i // 25) % 5,
                   segments[i % len(segments)], ("first-time", "repeat", "advocate")[i % 3], ("retain", "grow", "exit")[i % 3],
                   now.strftime(TS)) for i in range(customers)))

        message_rows: list[tuple] = []
        event_rows: list[tuple] = []
        run_rows: list[tuple] = []
        order_rows: list[tuple] = []
        pending: list[tuple] = []  # heap of (created_at, tiebreak, send) not written yet
        tiebreak = 0

        def flush(force: bool = False) -> None:
            for table, rows, sql in (
                ("messages", message_rows,
                 "INSERT INTO messages (id, key, workflow_id, sequence_id, step, channel, category, template, "
                 "customer_id, recipient, locale, subject, body, status, provider, provider_message_id, error, "
                 "attempts, created_at, sending_at, sent_at, counted_at, delivery_status) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                ("events", event_rows,
                 "INSERT INTO events (id, type, customer_id, order_id, occurred_at, received_at, payload, routed_at, runs) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                ("runs", run_rows,
                 "INSERT OR REPLACE INTO runs (id, sequence_id, customer_id, started_at, trigger_event_id, converted_at, "
                 "converted_event_id) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                ("orders", order_rows,
                 "INSERT INTO orders (id, customer_id, total, currency, items, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
            ):
                if rows and (force or len(rows) >= BATCH):
                    conn.executemany(sql, rows)
                    counts[table] += len(rows)
                    rows.clear()

        def write_send(at: datetime, send: tuple) -> None:
            run_id, sid, path, step, customer, name, category = send
            mid = counts["messages"] + len(message_rows) + 1
            recent = now - at < timedelta(days=1)
            roll = rng.random()
            status, error, sent_at = "sent", None, at + timedelta(seconds=rng.uniform(1, 30))
            if recent and roll < 0.3:
                status, sent_at = rng.choice(["deferred", "deferred", "pending", "sending"]), None
            elif roll < 0.05:
                status, sent_at = "skipped", None
                error = rng.choices([r for r, _ in SKIP_REASONS], [w for _, w in SKIP_REASONS])[0]
            elif roll < 0.058:
                status, sent_at, error = "failed", None, "provider said no (HTTP 400)"
            elif roll < 0.06:
                status, sent_at, error = "unknown", None, "timed out after 10 s"
            subject, body = _body(step.send, step.template, name, customer) if status != "skipped" else (None, None)
            recipient = f"c{int(customer[1:])}@example.com" if step.send == "email" else f"+6681{customer[1:]}"
            message_rows.append((
                mid, f"{run_id}:{path}", run_id, sid, path, step.send, category, step.template, customer,
                recipient, "en", subject, body, status,
                ("sendgrid" if step.send == "email" else "twilio") if sent_at else None,
                f"pm-{mid}" if sent_at else None, error, 1 if status != "skipped" else 0, at.strftime(TS),
                at.strftime(TS) if status != "skipped" else None, sent_at.strftime(TS) if sent_at else None,
                at.strftime(TS) if category == "marketing" and sent_at else None, None,
            ))
            if status != "sent":
                return
            # Provider notifications: delivered, opened (sometimes twice), clicked, rarely unsubscribed.
            kinds = []
            if rng.random() < 0.95:
                kinds.append(("message.delivered", 60))
                if step.send == "email" and rng.random() < 0.4:
                    kinds.append(("message.opened", 3600 * rng.uniform(1, 48)))
                    if rng.random() < 0.3:
                        kinds.append(("message.opened", 3600 * rng.uniform(48, 96)))
                    if rng.random() < 0.25:
                        kinds.append(("message.clicked", 3600 * rng.uniform(1, 50)))
                    if rng.random() < 0.01:
                        kinds.append(("message.unsubscribed", 3600 * rng.uniform(1, 50)))
            for n, (kind, after) in enumerate(kinds):
                when = min(sent_at + timedelta(seconds=after), now)
                event_rows.append((
                    f"sg-{mid}-{n}", kind, customer, None, when.strftime(TS), when.strftime(TS),
                    json.dumps({"id": f"sg-{mid}-{n}", "type": kind, "occurred_at": when.isoformat() + "Z",
                                "customer": {"id": customer}, "data": {"message_id": mid, "provider": "sendgrid",
                                                                      "sg_event_id": uuid.UUID(int=rng.getrandbits(128)).hex}}),
                    when.strftime(TS), 0,
                ))

        run_starts = sorted(rng.uniform(0, DAYS * 86_400) for _ in range(runs_wanted))
        for n, offset in enumerate(run_starts):
            at = start + timedelta(seconds=offset)
            while pending and pending[0][0] <= at:
                when, _, send = heapq.heappop(pending)
                write_send(when, send)
            if counts["messages"] + len(message_rows) >= messages:
                break
            sid = rng.choices(ids, chances)[0]
            sequence = sequences[sid]
            cnum = rng.randrange(customers)
            customer, name = f"c{cnum:07d}", names[cnum % len(names)]
            run_id = f"{sid}/r{n:07d}"
            trigger = f"evt-{n:07d}"
            converted = at + timedelta(days=rng.uniform(1, 20)) if sequence.category == "marketing" and rng.random() < 0.08 else None
            run_rows.append((run_id, sid, customer, at.strftime(TS), trigger,
                             converted.strftime(TS) if converted and converted < now else None, None))
            event_type = sequence.trigger if isinstance(sequence.trigger, str) else "customer.inactive"
            payload = {"id": trigger, "type": event_type, "occurred_at": at.isoformat() + "Z",
                       "customer": {"id": customer, "email": f"c{cnum}@example.com", "first_name": name}}
            if sid == "fulfilment":
                total = round(rng.uniform(300, 9000), 2)
                order_rows.append((f"o{n:07d}", customer, total, "THB", '[{"sku": "CAM-1", "qty": 1}]', at.strftime(TS)))
                payload["order"] = {"id": f"o{n:07d}", "total": str(total), "currency": "THB"}
            event_rows.append((trigger, event_type, customer, payload.get("order", {}).get("id"), at.strftime(TS),
                               at.strftime(TS), json.dumps(payload), at.strftime(TS), 1))
            for k, (path, step) in enumerate(_send_paths(sequence.steps, "", rng)):
                when = at + k * STEP_GAP + timedelta(seconds=rng.uniform(0, 3600))
                if when < now:
                    tiebreak += 1
                    heapq.heappush(pending, (when, tiebreak, (run_id, sid, path, step, customer, name, sequence.category)))
            flush()
        while pending and counts["messages"] + len(message_rows) < messages:
            when, _, send = heapq.heappop(pending)
            write_send(when, send)
        flush(force=True)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"seconds": time.perf_counter() - started, "counts": counts, "bytes": db_path.stat().st_size}


def _batched(conn: sqlite3.Connection, sql: str, rows) -> None:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            conn.executemany(sql, batch)
            batch.clear()
    if batch:
        conn.executemany(sql, batch)


# -- 2. the pages ------------------------------------------------------------------------------

def pages(db) -> list[tuple[str, str, str]]:
    """(key, label, path) of each page to time, with ids picked from the data. The labels and paths
    carry those ids, which change with --messages and --seed; the key does not, so results.json
    compares like with like."""
    from sqlalchemy import func, select

    from keepflow.store import Customer, Message

    with db.session() as session:
        top = session.scalar(select(func.max(Message.id))) or 1
        middle = session.scalar(select(Message.id).where(Message.id >= top // 2).order_by(Message.id).limit(1)) or 1
        busiest = session.execute(
            select(Message.customer_id, func.count()).where(Message.id.between(middle, middle + 20_000))
            .group_by(Message.customer_id).order_by(func.count().desc()).limit(1)).first()
        customer = session.get(Customer, busiest[0]) if busiest else None
    deep = max(2, top // 2 // 50)
    out = [
        ("overview_30d", "overview (last 30 days)", "/"),
        ("overview_365d", "overview (last 365 days)", "/?since=365d"),
        ("sequence_fulfilment", "sequence page: fulfilment", "/sequences/fulfilment"),
        ("sequence_winback", "sequence page: winback", "/sequences/winback"),
        ("messages_page_1", "messages, page 1", "/messages"),
        ("messages_page_2", "messages, page 2", "/messages?page=2"),
        ("messages_deep_page", f"messages, page {deep:,} (deep, by page number)", f"/messages?page={deep}"),
        ("messages_deep_cursor", f"messages older than #{middle:,} (deep, by cursor)", f"/messages?before={middle}"),
        ("education_page_1", "messages of education, page 1", "/messages?sequence=education"),
        ("education_deep_cursor", f"messages of education older than #{middle:,}",
         f"/messages?sequence=education&before={middle}"),
        ("message", f"message #{middle:,}", f"/messages/{middle}"),
    ]
    if customer is not None:
        out += [("customer_by_id", f"customer by id ({customer.id})", f"/customers?q={customer.id}"),
                ("customer_by_email", f"customer by email ({customer.email.upper()})",
                 f"/customers?q={customer.email.upper()}")]
    return out


class StatementLog:
    """The SQL statements the engine runs while `recording`: (statement, parameters, seconds)."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self.recording = False
        self.seen: list[tuple[str, Any, float]] = []

        @event.listens_for(engine, "before_cursor_execute")
        def before(conn, _cursor, _statement, _parameters, _context, _many):
            conn.info.setdefault("bench_started", []).append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn, _cursor, statement, parameters, _context, _many):
            took = time.perf_counter() - conn.info["bench_started"].pop()
            if self.recording:
                self.seen.append((statement, parameters, took))

    @contextlib.contextmanager
    def record(self):
        self.seen = []
        self.recording = True
        try:
            yield self.seen
        finally:
            self.recording = False


BENCH_USER, BENCH_PASSWORD = "bench-admin", "bench-admin-password"


def explain(engine, statement: str, parameters: Any) -> str:
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "; ".join(row[-1] for row in plan)


async def time_pages(base: str, targets: list[tuple[str, str, str]], repeat: int, log: StatementLog,
                     engine, plans: bool) -> list[dict[str, Any]]:
    import httpx

    out = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        form = (await http.get("/signin")).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        signed_in = await http.post("/signin", data={"name": BENCH_USER, "password": BENCH_PASSWORD, "csrf_token": token})
        assert signed_in.status_code == 303, signed_in.text
        for key, label, path in targets:
            first = await http.get(path)  # warm-up: caches, the first connection
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                answer = await http.get(path)
                times.append(time.perf_counter() - began)
            with log.record() as statements:
                await http.get(path)
            row = {"key": key, "label": label, "path": path, "status": answer.status_code,
                   "first_status": first.status_code, "bytes": len(answer.content), "median": statistics.median(times), "max": max(times),
                   "statements": len(statements), "sql": sum(t for _, _, t in statements)}
            slowest = sorted(statements, key=lambda s: -s[2])
            if plans:
                row["plans"] = [(t, s, explain(engine, s, p)) for s, p, t in slowest[:6] if s.lstrip().upper().startswith("SELECT")]
            if "@" in path:
                row["email_plan"] = [explain(engine, s, p) for s, p, _ in statements
                                     if "FROM customers" in s and "email" in s]
            out.append(row)
            print(f"  {label}: {row['median'] * 1000:.0f} ms median ({row['status']})", flush=True)
    return out


async def bench(messages: int, repeat: int, seed: int, keep: Path | None, reuse: Path | None,
                plans: bool, only: str | None = None, role: str = "admin") -> dict[str, Any]:
    from keepflow.http.admin import create_admin_app
    from keepflow.http.serving import serve_http
    from keepflow.runtime.registry import load_catalog
    from keepflow.settings import Settings, new_secret
    from keepflow.store import Database, access, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port

    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-dashboard-"))
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    db: Database | None = None
    stop = asyncio.Event()
    http_task: asyncio.Task | None = None
    try:
        db_path = reuse or data_dir / "keepflow.db"
        settings = Settings(
            data_dir=data_dir, sequences_path=ROOT / "sequences.yaml", templates_dir=ROOT / "templates",
            database_url=f"sqlite:///{db_path}", temporal_address=server.address, task_queue="bench-dashboard",
            email_provider="outbox", sms_provider="outbox",
        )
        began = time.perf_counter()
        upgrade(settings.resolved_database_url)
        migrated = time.perf_counter() - began
        made = None
        if reuse is None:
            print(f"generating {messages:,} messages ...", flush=True)
            made = generate(db_path, messages, seed)
            c = made["counts"]
            print(f"  {made['seconds']:.0f} s: {c['messages']:,} messages, {c['events']:,} events, {c['runs']:,} runs, "
                  f"{c['customers']:,} customers, {c['orders']:,} orders; {made['bytes'] / 2**20:,.0f} MiB", flush=True)
        else:
            print(f"reusing {reuse} (upgraded in {migrated:.1f} s)", flush=True)
        db = Database(settings.resolved_database_url)
        log = StatementLog(db.engine)
        server.start()
        client = await server.wait_ready(settings)
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        if access.role_of(db, BENCH_USER) is not None:  # a reused database has it already
            access.remove_user(db, BENCH_USER)
        access.add_user(db, BENCH_USER, BENCH_PASSWORD, role)
        app = create_admin_app(settings, catalog=catalog, db=db, client=client, session_secret=new_secret())
        port = free_port()
        http_task = asyncio.create_task(serve_http(app, "127.0.0.1", port, stop))
        base = f"http://127.0.0.1:{port}"
        await wait_for_http(base, http_task, path="/signin")  # the admin app's one page open to all
        targets = [t for t in pages(db) if only is None or re.search(only, t[1])]
        print(f"timing {len(targets)} pages, {repeat} requests each after a warm-up ...", flush=True)
        timed = await time_pages(base, targets, repeat, log, db.engine, plans)
        return {"messages": messages, "repeat": repeat, "seed": seed, "role": role, "generated": made,
                "migrated": migrated, "reused": reuse is not None, "pages": timed, "bytes": db_path.stat().st_size}
    finally:
        stop.set()
        if http_task is not None:
            with contextlib.suppress(Exception):
                await http_task
        if db is not None:
            db.dispose()
        server.stop()
        if keep is not None and reuse is None and (data_dir / "keepflow.db").exists():
            for suffix in ("", "-wal", "-shm"):
                source = data_dir / f"keepflow.db{suffix}"
                if source.exists():
                    shutil.move(source, f"{keep}{suffix}")
            print(f"kept the database at {keep}")
        shutil.rmtree(data_dir, ignore_errors=True)


# -- 3. the report -----------------------------------------------------------------------------

def report(s: dict[str, Any]) -> str:
    made = s["generated"]
    lines = []
    if made:
        c = made["counts"]
        lines.append(f"Store: {c['messages']:,} messages, {c['events']:,} events, {c['runs']:,} runs, "
                     f"{c['customers']:,} customers (each scored), {c['orders']:,} orders over {DAYS} days; "
                     f"{made['bytes'] / 2**20:,.0f} MiB, generated in {made['seconds']:.0f} s.")
    else:
        lines.append(f"Store: reused ({s['bytes'] / 2**20:,.0f} MiB); upgraded to the newest migration in {s['migrated']:.1f} s.")
    lines += ["", "| page | median | slowest | SQL statements (time) | size |", "|---|---:|---:|---:|---:|"]
    for p in s["pages"]:
        status = "" if p["status"] == 200 else f" **HTTP {p['status']}**"
        lines.append(f"| {p['label']} `{p['path']}`{status} | **{p['median'] * 1000:.0f} ms** | {p['max'] * 1000:.0f} ms | "
                     f"{p['statements']} ({p['sql'] * 1000:.0f} ms) | {p['bytes'] / 1024:.0f} KiB |")
    for p in s["pages"]:
        if p.get("email_plan"):
            lines += ["", f"SQLite's plan of the lookup by email (`EXPLAIN QUERY PLAN`): {' | '.join(p['email_plan'])}"]
        for took, statement, plan in p.get("plans", []):
            lines += ["", f"{p['label']}: {took * 1000:.0f} ms `{' '.join(statement.split())[:300]}`", f"    plan: {plan}"]
    return "\n".join(lines)


def write_results(s: dict[str, Any]) -> None:
    command = (f"python bench/dashboard.py --messages {s['messages']} --repeat {s['repeat']}"
               + (f" --role {s['role']}" if s["role"] != "admin" else "") + " --write-results")
    section = "\n".join([
        SECTION, "",
        *provenance(command),
        f"- Parameters: a generated year in Keepflow's SQLite file (seed {s['seed']}); the real app over loopback "
        f"(httpx, one request at a time) with Temporal's dev server behind it; median and slowest of "
        f"{s['repeat']} requests after a warm-up",
        "",
        report(s), "",
    ])
    write_section(SECTION, section)
    write_figures(figures(s), command, machine())


def figures(s: dict[str, Any]) -> dict[str, float | int]:
    """Median and slowest of each page that answered 200 (an error page's time says nothing about the
    page); a marketer's masked pages keep keys of their own (dashboard.marketer.*)."""
    key = "dashboard.marketer" if s["role"] == "marketer" else "dashboard"
    out: dict[str, float | int] = {}
    for p in s["pages"]:
        if p["status"] == 200:
            out[f"{key}.{p['key']}.median_ms"] = round(p["median"] * 1000, 1)
            out[f"{key}.{p['key']}.slowest_ms"] = round(p["max"] * 1000, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="rows in the message log (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page (default 7)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the generated data")
    parser.add_argument("--keep", type=Path, help="keep the generated SQLite file here")
    parser.add_argument("--reuse", type=Path, help="benchmark this SQLite file (made by --keep) instead of generating")
    parser.add_argument("--only", help="time only the pages whose label matches this regular expression")
    parser.add_argument("--role", choices=["admin", "marketer"], default="admin",
                        help="sign in as an admin (whole, each customer and message view audited) or a marketer (masked)")
    parser.add_argument("--plans", action="store_true", help="print SQLite's plan of each page's slowest statements")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    args = parser.parse_args()
    if args.messages < 100 or args.repeat < 1:
        parser.error("--messages must be at least 100 and --repeat at least 1")
    if args.reuse is not None and not args.reuse.exists():
        parser.error(f"--reuse: {args.reuse} does not exist")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = asyncio.run(bench(args.messages, args.repeat, args.seed, args.keep, args.reuse, args.plans, args.only,
                           args.role))
    print()
    print(report(s))
    if args.write_results:
        write_results(s)
    return 0 if all(p["status"] == 200 for p in s["pages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
