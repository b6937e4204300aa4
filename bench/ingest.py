"""Events in, under load: signed `order.created` events over loopback to the first email out.

    python bench/ingest.py [--events N] [--concurrency C] [--rate R] [--worker-process] [--handwritten-first]
                           [--http-processes N] [--workers M] [--timeout S] [--write-results]

A load test script, not a timed test. In a throwaway folder it starts the real stack in this
process — Temporal's dev server (headless, free port), the fake SendGrid/Twilio server from
tests/fakes, the Keepflow worker with the real provider SDKs aimed at the fake, and the HTTP
app on a free port with a fresh webhook secret. Then a second process (this file, `--client`)
posts N distinct signed `order.created` events with C requests in flight and reports, per
event, when it sent the request and what came back. This process waits (bounded) until the
fake has accepted every order_confirmed email and matches them by recipient.

Against what a developer would build without Keepflow: bench/handwritten.py, a FastAPI endpoint
that verifies the same signatures with the `standardwebhooks` library, records the delivery id in
a table of the same kind of database, and starts a workflow whose one activity sends the
confirmation through the SendGrid SDK to the same fake, its worker in its own process (compare
with `--worker-process`: otherwise Keepflow's worker shares this process and its GIL while the
baseline's does not). Its app is served in this process as Keepflow's is, and takes the same N
events from the same second process.

The sides run in one run on one dev server, N events a phase, in mirrored order: Keepflow,
hand-written, hand-written, Keepflow. The server's history grows with every phase and the machine
may get busier or quieter while it runs, so a later phase is not the same ground as an earlier
one; mirrored, both sides sit on average at the same place. `--handwritten-first` mirrors the other
way (hand-written, Keepflow, Keepflow, hand-written), to see what is left of the order's effect
across runs. Before the phases each side takes a few unmeasured events, so neither pays alone for
first connections and imports. A side's figures pool its two phases.

Scaling out (issue 16): `--http-processes N` (N > 1) serves Keepflow's app as `keepflow serve --workers N`
in a process group of its own (uvicorn's supervisor and its N app processes on one port), configured
through the environment as in production, and `--workers M` (M > 1 implies `--worker-process`) runs M
`worker.py` processes on the one task queue. The hand-written side stays as it is. With the app out of
this process the engine-step timers cannot reach it, so such a run has no step breakdown.

Reported per side: accepted events/s (2xx answers / wall time of the posting phases), HTTP
latency p50/p99, and request → first message at the fake p50/p99 (both clocks are time.time() on
the same machine), and the ratio Keepflow / hand-written. As the ceiling of both, the same second
process then makes N bare `start_workflow` calls of a no-op workflow defined here (its own worker
and task queue, same server), and the ratios to it are printed. Where Keepflow's time goes: each
run's history split into stages, the CPU seconds of each process while posting, and timers
wrapped at run time around the engine's own steps while Keepflow posts (`--no-breakdown` leaves
those off; no file is changed).

What a side sustains, beside what it answers: accepted events/s counts answers, and an answer may
leave work behind it (the hand-written worker runs most of its workflows after the burst, in the
SDK's sandbox). So each phase is also measured from its first request to its last email: events
handled per second, and each process's CPU per event (dev server, app process with the fake,
worker) with its ratio to the hand-written side's, the rate each could keep up on a machine with
no CPU to spare; plus what the processes burn idle (sampled once before the phases), to show
that this is work, not polling.

Everything listens on 127.0.0.1 only; every wait is bounded; everything started here is
stopped and the folder removed, also on error or Ctrl-C. Exit code 0 when every event's email
arrived, on both sides, 1 if any was lost (or the run failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio import workflow

from figures import write_figures

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # worker.py and tests/fakes live at the repository root
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Events in (bench/ingest.py)"
NOOP_WORKFLOW = "bench-noop"
# Each phase meets a server with more history than the one before: in mirrored order both sides
# sit, on average, at the same place in the run (`--handwritten-first` mirrors it the other way).
ORDER = ("keepflow", "handwritten", "handwritten", "keepflow")
ORDER_HANDWRITTEN_FIRST = ("handwritten", "keepflow", "keepflow", "handwritten")
SIDE_NAMES = {"keepflow": "Keepflow", "handwritten": "hand-written"}
WARMUP = 20  # events each side takes, unmeasured, before the phases
CLIENT_TIMEOUT = 30.0  # seconds one HTTP request or one start_workflow call may take

# -- figures -----------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# -- the second process: posting events, starting bare workflows ------------------------------

def order_id(i: int, tag: str) -> str:
    return f"B{tag}-{i:05d}"


def recipient(i: int, tag: str) -> str:
    # The phases of one run share the fake: each phase's recipients are its own.
    return f"c{i}.{tag}@example.com"


def order_created(i: int, tag: str) -> dict[str, Any]:
    order = order_id(i, tag)
    return {
        "id": f"evt_bench_{tag}_{i}", "type": "order.created",
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "customer": {"id": f"cust-{order}", "email": recipient(i, tag), "phone": "+66812345678",
                     "first_name": "Nok", "locale": "en", "timezone": "Asia/Bangkok",
                     "consents": {"email": True, "sms": True}},
        "order": {"id": order, "number": f"#{order}", "currency": "THB", "total": "25900.00", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR camera", "quantity": 1, "price": "24900.00"},
            {"sku": "SD-64", "title": "64 GB SD card", "quantity": 1, "price": "1000.00"}]},
    }


async def post_events(url: str, secret: str, events: int, concurrency: int, tag: str,
                      rate: float | None = None) -> dict[str, Any]:
    """Post `events`, `concurrency` at a time; with `rate`, event i leaves at i/rate seconds (an open
    loop, as a store's webhooks come), so a slow answer does not slow the senders down."""
    import httpx

    from keepflow.http.signing import sign

    bodies = [json.dumps(order_created(i, tag)).encode() for i in range(events)]
    results: list[dict[str, Any]] = [{} for _ in range(events)]
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT, limits=limits) as http:
        async def one(i: int) -> None:
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - time.time()))
            async with gate:
                headers = {"content-type": "application/json", **sign(bodies[i], secret)}
                sent = time.time()
                try:
                    response = await http.post("/events", content=bodies[i], headers=headers)
                    status, error = response.status_code, None
                except httpx.HTTPError as err:
                    status, error = None, f"{type(err).__name__}: {err}"
                results[i] = {"i": i, "email": recipient(i, tag), "sent": sent, "done": time.time(),
                              "status": status, "error": error}

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(events)))
        finished = time.time()
    return {"started": started, "finished": finished, "results": results}


async def start_bare(address: str, task_queue: str, count: int, concurrency: int, tag: str) -> dict[str, Any]:
    from keepflow.runtime.client import connect
    from keepflow.settings import Settings

    client = await connect(Settings(), address=address)
    gate = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any]] = [{} for _ in range(count)]

    async def one(i: int) -> None:
        async with gate:
            sent = time.time()
            try:
                await asyncio.wait_for(client.start_workflow(NOOP_WORKFLOW, id=f"bench-noop/{tag}/{i}",
                                                             task_queue=task_queue), CLIENT_TIMEOUT)
                ok, error = True, None
            except Exception as err:  # noqa: BLE001 - counted and reported, not raised
                ok, error = False, f"{type(err).__name__}: {err}"
            results[i] = {"sent": sent, "done": time.time(), "ok": ok, "error": error}

    started = time.time()
    await asyncio.gather(*(one(i) for i in range(count)))
    return {"started": started, "finished": time.time(), "results": results}


def client_main() -> int:
    """`--client`: read a job line from stdin, get ready, answer `ready`, wait for `go`, run, print the results.

    The handshake keeps interpreter start-up and imports out of the measured window, so the CPU
    figures of all three processes cover the same seconds.
    """
    import httpx  # noqa: F401 - imported before `ready`, not inside the measured window

    from keepflow.http.signing import sign  # noqa: F401
    from keepflow.runtime.client import connect  # noqa: F401

    job = json.loads(sys.stdin.readline())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    cpu = sum(os.times()[:2])
    if job["kind"] == "events":
        out = asyncio.run(post_events(job["url"], job["secret"], job["count"], job["concurrency"], job["tag"],
                                      job.get("rate")))
    else:
        out = asyncio.run(start_bare(job["address"], job["task_queue"], job["count"], job["concurrency"], job["tag"]))
    out["cpu_seconds"] = sum(os.times()[:2]) - cpu
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


# -- this process: the stack ------------------------------------------------------------------

@workflow.defn(name=NOOP_WORKFLOW, sandboxed=False)
class NoopWorkflow:
    """The baseline: a workflow that does nothing, so a start costs only Temporal's own work."""

    @workflow.run
    async def run(self) -> None:
        return None


def _recording_fake():
    """FakeProviders that also notes, per recipient, when each accepted email arrived (time.time())."""
    from tests.fakes.provider_server import FakeProviders

    class RecordingFake(FakeProviders):
        def __init__(self) -> None:
            super().__init__()
            self.arrivals: dict[str, list[tuple[float, str | None]]] = {}
            self._arrivals_lock = threading.Lock()

        def _sendgrid(self, h, path, body):  # the fake's own handler, then a note of the arrival
            arrived = time.time()
            reply = super()._sendgrid(h, path, body)
            if reply.status == 202 and isinstance(body, dict):
                to = body["personalizations"][0]["to"][0]["email"]
                with self._arrivals_lock:
                    self.arrivals.setdefault(to, []).append((arrived, body.get("subject")))
            return reply

        def first_arrival(self, recipient: str) -> float | None:
            with self._arrivals_lock:
                times = self.arrivals.get(recipient)
                return min(t for t, _ in times) if times else None

        def arrived_count(self, recipients: set[str]) -> int:
            with self._arrivals_lock:
                return sum(1 for r in recipients if r in self.arrivals)

    return RecordingFake()


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), or None where that is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_busy_seconds() -> float | None:
    """Core-seconds the whole machine has spent busy since boot (Linux /proc/stat): beside our own
    processes' figures it shows how much of the machine something else took during a run."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        # guest time is already counted in user time
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, however deep (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                with contextlib.suppress(OSError):
                    children = [int(c) for c in (task / "children").read_text().split()]
                    found += children
                    todo += children
    return found


def _group_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `keepflow serve --workers N`: uvicorn's supervisor and every process it started
    (the app processes, multiprocessing's helpers), so no process that serves requests goes uncounted."""
    total = _proc_cpu_seconds(pid)
    if total is None:
        return None
    return total + sum(_proc_cpu_seconds(child) or 0.0 for child in _descendants(pid))


def _stop_group(child) -> None:
    """SIGTERM to the whole process group, so uvicorn's supervisor and its app processes shut down as
    in production; then SIGKILL whatever of the group is left and reap the supervisor, so no app
    process outlives the run."""
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(15)
    child.reap()


def _tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process and its direct children (the dev server runs as one child process)."""
    total = _proc_cpu_seconds(pid)
    if total is None:
        return None
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += _proc_cpu_seconds(int(child)) or 0.0
    return total


# What --no-breakdown leaves out: timers around the engine's own steps, put on at run time in this
# process only (no file changes). Each is (module, object name or None, attribute, label).
TIMED = (
    ("keepflow.http.app", None, "_ingest", "POST /events after verify+parse (store + route + answer)"),
    ("keepflow.runtime.routing", None, "accept", "router.accept (one transaction: delivery, customer, order, event, rescore, run rows; then the rows of runs to signal)"),
    ("keepflow.runtime.routing", None, "route", "router.route (signals + start + settle + catch-up)"),
    ("keepflow.runtime.routing", None, "_deliver", "router._deliver (signal a run; NOT_FOUND if none)"),
    ("temporalio.client", "Client", "start_workflow", "Client.start_workflow (in route)"),
    ("keepflow.runtime.routing", None, "_settle_unless_missed", "router: find earlier events and, when none was missed, note runs + mark routed (store, one transaction)"),
    ("keepflow.runtime.routing", None, "_settle", "router._settle: note runs + mark routed after a catch-up (store, one transaction)"),
    ("keepflow.runtime.routing", None, "_catch_up", "router._catch_up (signal earlier events)"),
    ("activities.builtin.send", "MessageSender", "_claim", "send_message: claim row + profile + suppressions (store)"),
    ("keepflow.language.rendering", "Renderer", "render", "send_message: render template"),
    ("activities.builtin.send", "MessageSender", "_mark_sending", "send_message: mark sending (store)"),
    ("keepflow.sending.providers.sendgrid", "SendGridEmail", "send_email", "send_message: SendGrid call to the fake"),
    ("activities.builtin.send", "MessageSender", "_finish", "send_message: finish row (store)"),
)


@contextlib.contextmanager
def instrument(enabled: bool, steps=None, thread_waits: bool = True):
    """Time the engine steps in `steps` (default TIMED: (module, class or None, attribute, label)
    each), and with `thread_waits` how long `asyncio.to_thread` work waits for a thread.

    Yields {label: [seconds, ...]}. Steps the engine no longer has are skipped; everything is put
    back on exit.
    """
    import functools
    import importlib

    timings: dict[str, list[float]] = {}
    lock = threading.Lock()
    undo: list[tuple[Any, str, Any]] = []

    def note(label: str, seconds: float) -> None:
        with lock:
            timings.setdefault(label, []).append(seconds)

    def timed(fn, label: str):
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    note(label, time.perf_counter() - start)
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    note(label, time.perf_counter() - start)
        return wrapper

    if enabled:
        for module_name, owner_name, attr, label in (TIMED if steps is None else steps):
            try:
                owner = importlib.import_module(module_name)
                owner = getattr(owner, owner_name) if owner_name else owner
                original = owner.__dict__[attr]
            except (ImportError, AttributeError, KeyError):
                continue
            undo.append((owner, attr, original))
            setattr(owner, attr, timed(original, label))

    if enabled and thread_waits:
        to_thread = asyncio.to_thread

        async def queued_to_thread(func, /, *args, **kwargs):
            asked = time.perf_counter()

            def run():
                note("waiting for a to_thread thread (HTTP side)", time.perf_counter() - asked)
                return func(*args, **kwargs)

            return await to_thread(run)

        undo.append((asyncio, "to_thread", to_thread))
        asyncio.to_thread = queued_to_thread
    try:
        yield timings
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


async def run_client(job: dict[str, Any], timeout: float, on_go=None, on_done=None) -> dict[str, Any]:
    """Run this file with --client in a second process, bounded by `timeout` seconds.

    `on_go` / `on_done` are called right before the job starts and right after its results
    arrive (the parent samples CPU there).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--client",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
        limit=64 * 1024 * 1024,  # the results come back as one JSON line
    )
    stderr = asyncio.create_task(proc.stderr.read())

    async def talk() -> dict[str, Any]:
        proc.stdin.write(json.dumps(job).encode() + b"\n")
        await proc.stdin.drain()
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("client process did not get ready")
        if on_go:
            on_go()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if on_done:
            on_done()
        return json.loads(line) if line.strip() else {}

    try:
        out = await asyncio.wait_for(talk(), timeout)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:  # timed out, failed or cancelled: end the child we started
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    err = await stderr
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"client process exited with {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}")
    return out


async def wait_for_http(url: str, server: asyncio.Task, timeout: float = 30.0, path: str = "/healthz") -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            if server.done():
                server.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped before it answered")
            try:
                if (await http.get(path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP app did not answer on {url} within {timeout:.0f} s")
            await asyncio.sleep(0.1)


if TYPE_CHECKING:
    from keepflow.settings import Settings


def settings_for(data_dir: Path, temporal_address: str, fake, task_queue: str) -> Settings:
    """The real sequences and templates, a fresh SQLite store in `data_dir` (or the empty database
    DATABASE_URL names), and the real SendGrid and Twilio SDKs aimed at the fake providers."""
    from pydantic import SecretStr

    from keepflow.runtime.payload_keys import new_payload_key
    from keepflow.settings import Settings

    # Payloads sealed as in production: the codec's cost is part of the figure.
    return Settings(payload_keys=SecretStr(new_payload_key()),
        data_dir=data_dir, sequences_path=ROOT / "sequences.yaml", templates_dir=ROOT / "templates",
        database_url=os.environ.get("DATABASE_URL") or None, temporal_address=temporal_address, task_queue=task_queue,
        sendgrid_api_key=fake.sendgrid_api_key, sendgrid_host=fake.url, email_provider="sendgrid",
        twilio_account_sid=fake.twilio_account_sid, twilio_auth_token=fake.twilio_auth_token,
        twilio_from="+15005550006", twilio_base_url=fake.url, sms_provider="twilio",
    )


class HandwrittenWorker:
    """`python bench/handwritten.py worker`: the baseline's worker, in its own process as Keepflow's is."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 60.0) -> HandwrittenWorker:
        import handwritten

        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, str(Path(handwritten.__file__).resolve()), "worker"],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while handwritten.READY_LINE not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the hand-written worker did not start:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


async def bench(events: int, concurrency: int, wait_timeout: float, breakdown: bool = True,
                worker_process: bool = False, rate: float | None = None,
                handwritten_first: bool = False, http_processes: int = 1, workers: int = 1) -> dict[str, Any]:
    from temporalio.worker import Worker

    import handwritten
    from keepflow.http.app import create_app
    from keepflow.http.serving import serve_http
    from keepflow.runtime.registry import load_catalog
    from keepflow.settings import new_secret
    from keepflow.store import Database, upgrade
    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from worker import build_worker

    tag = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-bench-"))
    fake = _recording_fake()
    server = DevServer(data_dir / "temporal", port=free_port(), ui_port=None)
    stop = asyncio.Event()
    http_tasks: list[asyncio.Task] = []
    db: Database | None = None
    try:
        fake.start()
        server.start()
        task_queue = f"bench-{tag}"
        settings = settings_for(data_dir, server.address, fake, task_queue)
        client = await server.wait_ready(settings)
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        secret = new_secret()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        app = (create_app(settings, catalog=catalog, db=db, client=client, webhook_secrets=[secret])
               if http_processes == 1 else None)
        noop_queue = f"bench-noop-{tag}"
        noop_worker = Worker(client, task_queue=noop_queue, workflows=[NoopWorkflow])
        # The baseline: its own app, table, task queue and worker process, on the same server, fake and
        # kind of database (a file of its own beside Keepflow's, or the database DATABASE_URL names).
        hw_secret = new_secret()
        hw_port = free_port()
        hw_url = f"http://127.0.0.1:{hw_port}"
        hw_queue = f"bench-handwritten-{tag}"
        hw_app = handwritten.create_app(hw_secret, os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir / 'handwritten.db'}",
                                        server.address, hw_queue)

        async with contextlib.AsyncExitStack() as running:
            worker_pids: list[int] = []
            serving = None  # `keepflow serve --workers N`, when the app runs out of this process
            if worker_process or http_processes > 1:
                from tests.faults.stack import AppProcess, WorkerProcess, worker_env

                env = worker_env(data_dir, settings.resolved_database_url, server.address, task_queue, fake.url)
                assert settings.payload_keys is not None
                env["KEEPFLOW_PAYLOAD_KEYS"] = settings.payload_keys.get_secret_value()  # the keys this client seals with
            if http_processes > 1:
                serving = AppProcess({**env, "KEEPFLOW_WEBHOOK_SECRET": secret}, data_dir / "serve.log", port,
                                     http_processes)
                running.callback(_stop_group, serving)
                serving.start()
            if worker_process:
                # As production runs it: `worker.py` in its own process, its own interpreter and GIL;
                # several of them poll the one task queue, as a deployment scales its workers out.
                procs = [WorkerProcess(env, data_dir / (f"worker-{n + 1}.log" if workers > 1 else "worker.log"))
                         for n in range(workers)]
                for proc in procs:
                    running.callback(proc.reap)
                    running.callback(proc.terminate)
                    proc.start()
                await asyncio.gather(*(proc.ready() for proc in procs))
                worker_pids = [proc.pid for proc in procs]
            else:
                await running.enter_async_context(build_worker(client, settings, db, task_queue=task_queue))
            hw_worker = HandwrittenWorker(handwritten.worker_env(server.address, hw_queue, fake.sendgrid_api_key, fake.url),
                                          data_dir / "handwritten-worker.log")
            running.callback(hw_worker.stop)
            await hw_worker.start()
            await running.enter_async_context(noop_worker)
            # Both apps served alike (uvicorn in this process, beside the fake), so the server is no difference;
            # with --http-processes the difference is the point, and the figures say which variant ran.
            if app is not None:
                http_tasks.append(asyncio.create_task(serve_http(app, "127.0.0.1", port, stop)))
            http_tasks.append(hw_task := asyncio.create_task(serve_http(hw_app, "127.0.0.1", hw_port, stop)))

            async def stop_http() -> None:  # before the workers stop (the exit stack unwinds in reverse)
                stop.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.gather(*http_tasks), 15)

            running.push_async_callback(stop_http)
            if serving is not None:
                await serving.ready()
            else:
                await wait_for_http(url, http_tasks[0])
            await wait_for_http(hw_url, hw_task)
            order = ORDER_HANDWRITTEN_FIRST if handwritten_first else ORDER
            print(f"stack up: Temporal {server.address}, Keepflow {url}, hand-written {hw_url}, fake providers "
                  f"{fake.url}; phases {', '.join(order)}, {events} events each, {concurrency} in flight"
                  + (f", {http_processes} HTTP processes" if serving is not None else "")
                  + (f", {workers} worker processes" if workers > 1 else "")
                  + (f", {rate:g} per second" if rate else "") + " ...", flush=True)

            side_workers = {"keepflow": worker_pids, "handwritten": [hw_worker.pid]}

            def sample(into: dict[str, float | None], side: str) -> None:
                """CPU seconds so far of the processes one side runs on, and the machine's."""
                into.update(keepflow=_proc_cpu_seconds(os.getpid()), temporal=_tree_cpu_seconds(server.process.pid),
                            machine=_machine_busy_seconds(), wall=time.time())
                if side_workers[side]:
                    cpus = [_proc_cpu_seconds(pid) for pid in side_workers[side]]
                    into["worker"] = None if None in cpus else sum(cpus)  # type: ignore[arg-type]
                if side == "keepflow" and serving is not None:
                    into["http"] = _group_cpu_seconds(serving.pid)

            target = {"keepflow": (url, secret), "handwritten": (hw_url, hw_secret)}
            # Unmeasured: the first requests and runs of each side pay for connections, caches and first
            # imports (the sandbox's among them), which would otherwise count against whichever goes first.
            warmed: set[str] = set()
            for side in order[:2]:
                warm = min(events, WARMUP)
                await run_client({"kind": "events", "url": target[side][0], "secret": target[side][1], "count": warm,
                                  "concurrency": concurrency, "tag": f"{tag}w{side[0]}", "rate": None},
                                 timeout=wait_timeout + 60)
                warm_recipients = {recipient(i, f"{tag}w{side[0]}") for i in range(warm)}
                warmed |= warm_recipients
                deadline = time.monotonic() + wait_timeout
                while fake.arrived_count(warm_recipients) < warm and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            # What the stack burns with nothing to do (pollers, timers), sampled once the warm-up's work
            # has settled: the share of the CPU per event below that is waiting, not work.
            await asyncio.sleep(IDLE_SETTLE)
            idle_before: dict[str, dict[str, float | None]] = {side: {} for side in side_workers}
            idle_after: dict[str, dict[str, float | None]] = {side: {} for side in side_workers}
            for side, into in idle_before.items():
                sample(into, side)
            await asyncio.sleep(IDLE_SAMPLE)
            for side, into in idle_after.items():
                sample(into, side)
            idle_cores = {side: _per_second(_spent(idle_before[side], idle_after[side])) for side in side_workers}
            phases: list[dict[str, Any]] = []
            steps: dict[str, list[float]] = {}
            for n, side in enumerate(order):
                phase_tag = f"{tag}{n}"
                recipients = {recipient(i, phase_tag) for i in range(events)}
                cpu_before: dict[str, float | None] = {}
                cpu_after: dict[str, float | None] = {}

                # The timers only while Keepflow is posting: they would tax the baseline's to_thread calls too.
                with instrument(breakdown and side == "keepflow" and serving is None) as timings:
                    posted = await run_client({"kind": "events", "url": target[side][0], "secret": target[side][1],
                                               "count": events, "concurrency": concurrency, "tag": phase_tag,
                                               "rate": rate},
                                              timeout=wait_timeout + 60 + (events / rate if rate else 0),
                                              on_go=lambda: sample(cpu_before, side), on_done=lambda: sample(cpu_after, side))
                    deadline = time.monotonic() + wait_timeout
                    while fake.arrived_count(recipients) < events and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    # Through the last email as well: what the phase cost in all, the runs' work that
                    # came after the answers included.
                    cpu_drained: dict[str, float | None] = {}
                    sample(cpu_drained, side)
                for label, values in timings.items():
                    steps.setdefault(label, []).extend(values)
                arrivals = {r: fake.first_arrival(r) for r in recipients}  # what came later counts as lost
                print(f"phase {n + 1} ({side}): {fake.arrived_count(recipients)}/{events} emails arrived", flush=True)
                phases.append({
                    "side": side, "tag": phase_tag, "posted": posted, "arrivals": arrivals,
                    "cpu": _spent(cpu_before, cpu_after) | {"client": posted.get("cpu_seconds")},
                    "cpu_drained": _spent(cpu_before, cpu_drained),
                })

            print("reading the runs' histories ...", flush=True)
            stages = await stage_times(client, [f"fulfilment/{order_id(i, p['tag'])}" for p in phases
                                                if p["side"] == "keepflow" for i in range(events)])
            print(f"now {events} bare start_workflow calls ...", flush=True)
            bare = await run_client({"kind": "bare", "address": server.address, "task_queue": noop_queue,
                                     "count": events, "concurrency": concurrency, "tag": tag},
                                    timeout=wait_timeout + 60)
            everyone = warmed | {r for p in phases for r in p["arrivals"]}
            for p in phases:
                p["duplicates"] = {r: len(fake.arrivals.get(r, [])) - 1 for r in p["arrivals"]
                                   if len(fake.arrivals.get(r, [])) > 1}
                # Missing at the end of its phase's wait but here by now: late (a busy machine), not lost.
                p["late"] = sorted(r for r, at in p["arrivals"].items() if at is None and fake.first_arrival(r) is not None)
            return {
                "events": events, "concurrency": concurrency, "rate": rate, "phases": phases, "bare": bare,
                "order": order, "stages": stages, "worker_process": worker_process, "steps": steps, "idle_cores": idle_cores,
                "http_processes": http_processes, "workers": workers,
                "heard_by": [q.id for q in catalog.interested_in("order.created")],
                "started_by": [q.id for q in catalog.triggered_by("order.created")],
                "unrelated_emails": sum(len(v) for k, v in fake.arrivals.items() if k not in everyone),
            }
    finally:
        stop.set()
        for task in http_tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        if db is not None:
            db.dispose()
        server.stop()
        fake.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


IDLE_SETTLE, IDLE_SAMPLE = 2.0, 3.0  # seconds


def _spent(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """What each counter of two samples moved by (None where either could not be read)."""
    return {k: None if v is None or after.get(k) is None else after[k] - v for k, v in before.items()}  # type: ignore[operator]


def _per_second(spent: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds moved, as cores over the wall time between the samples."""
    wall = spent["wall"]
    return {k: None if v is None or not wall else v / wall for k, v in spent.items() if k != "wall"}


STAGES = (
    ("request → run started", "sent", "run_started"),
    ("run started → first workflow task picked up", "run_started", "wft_started"),
    ("first workflow task (worker)", "wft_started", "wft_completed"),
    ("workflow task done → send_message picked up", "wft_completed", "activity_started"),
    ("send_message picked up → email at fake", "activity_started", "arrived"),
)


async def stage_times(client, workflow_ids: list[str], concurrency: int = 8) -> dict[str, dict[str, Any]]:
    """From each run's history (server clock, same machine): when it started, when its first workflow
    task was picked up and completed, and when the first send_message activity was picked up."""
    from temporalio.api.enums.v1 import EventType, TimeoutType

    gate = asyncio.Semaphore(concurrency)
    out: dict[str, dict[str, Any]] = {}

    async def one(workflow_id: str) -> None:
        async with gate:
            try:
                history = await asyncio.wait_for(client.get_workflow_handle(workflow_id).fetch_history(), 30)
            except Exception:  # noqa: BLE001 - a run that never started has no history
                return
        times: dict[str, Any] = {"wft_timeouts": 0, "wft_sticky_timeouts": 0, "wft_failures": 0}
        for e in history.events:
            at = e.event_time.seconds + e.event_time.nanos / 1e9
            kind = e.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                times["run_started"] = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                times.setdefault("wft_started", at)
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                times.setdefault("wft_completed", at)
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                # START_TO_CLOSE: the worker took longer than the task timeout (10 s) and the task ran again;
                # SCHEDULE_TO_START: a sticky task waited 5 s for its worker and went back to the shared queue.
                sticky = e.workflow_task_timed_out_event_attributes.timeout_type == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
                times["wft_sticky_timeouts" if sticky else "wft_timeouts"] += 1
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                times["wft_failures"] += 1
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                times.setdefault("activity_started", at)
        out[workflow_id] = times

    await asyncio.gather(*(one(w) for w in workflow_ids))
    return out


def side_figures(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over its phases: events/s is all answers over all posting time, the
    percentiles are over every request of both phases together."""
    results, arrivals = [], {}
    for p in phases:
        results += [{**r, "tag": p["tag"]} for r in p["posted"]["results"]]
        arrivals.update(p["arrivals"])
    ok = [r for r in results if r["status"] is not None and 200 <= r["status"] < 300]
    walls = [p["posted"]["finished"] - p["posted"]["started"] for p in phases]
    http_lat = [r["done"] - r["sent"] for r in ok]
    first = [arrivals[r["email"]] - r["sent"] for r in results if arrivals.get(r["email"]) is not None]
    late = {r for p in phases for r in p.get("late", ())}
    lost = [r["email"] for r in results if arrivals.get(r["email"]) is None and r["email"] not in late]
    statuses: dict[str, int] = {}
    for r in results:
        if not (r["status"] is not None and 200 <= r["status"] < 300):
            key = str(r["status"]) if r["status"] is not None else (r["error"] or "error").split(":")[0]
            statuses[key] = statuses.get(key, 0) + 1
    all_in = [max(a for a in p["arrivals"].values() if a is not None) - p["posted"]["started"]
              for p in phases if any(a is not None for a in p["arrivals"].values())]
    cpu: dict[str, float | None] = {}
    for k in ("keepflow", "temporal", "worker", "client", "machine", "wall", "http"):
        values = [p["cpu"].get(k) for p in phases]
        cpu[k] = None if None in values else sum(values)
    ours = [cpu[k] for k in ("keepflow", "temporal", "worker", "client")]
    if any("http" in p["cpu"] for p in phases):  # `keepflow serve --workers N`'s processes are ours too
        ours.append(cpu["http"])
    # Not ours: what other programs on the machine took while this side posted (cores on average).
    cpu["others_cores"] = (None if None in ours or cpu["machine"] is None or not cpu["wall"]
                           else max(0.0, cpu["machine"] - sum(ours)) / cpu["wall"])  # type: ignore[arg-type]
    # Each process's CPU per accepted event from the first request to the last email: the whole cost
    # of an event, the run's work done after the answer included (the load generator left out). A
    # process not sampled has no share of its own: the worker, when it runs in the app's process.
    per_event: dict[str, float | None] = {}
    for k in ("temporal", "keepflow", "http", "worker"):
        values = [p["cpu_drained"].get(k, 0.0) for p in phases]
        known = [v for v in values if v is not None]
        per_event[k] = sum(known) / len(ok) if ok and len(known) == len(values) else None
    # How much of that came after the phase's last answer: work the answers did not wait for.
    drained = [sum(p["cpu_drained"].get(k) or 0.0 for k in ("temporal", "keepflow", "http", "worker")) for p in phases]
    posting = [sum(p["cpu"].get(k) or 0.0 for k in ("temporal", "keepflow", "http", "worker")) for p in phases]
    return {
        "cpu_per_event_s": per_event,
        "cpu_per_event_total_s": None if None in per_event.values() else sum(per_event.values()),
        "cpu_after_answers_share": 1 - sum(posting) / sum(drained) if sum(drained) > 0 else None,
        "results": results, "arrivals": arrivals, "accepted": len(ok), "non_2xx": len(results) - len(ok),
        "non_2xx_by_status": statuses, "post_wall_s": sum(walls),
        "per_s": len(ok) / sum(walls) if sum(walls) > 0 else 0.0,
        "phase_per_s": [sum(1 for r in p["posted"]["results"] if r["status"] is not None and 200 <= r["status"] < 300) / w
                        if w > 0 else 0.0 for p, w in zip(phases, walls)],
        "http_p50_s": percentile(http_lat, 50), "http_p99_s": percentile(http_lat, 99),
        "http_mean_s": sum(http_lat) / len(http_lat) if http_lat else None,
        "http_max_s": max(http_lat, default=None), "http_over_2s": sum(1 for t in http_lat if t > 2),
        "first_msg_p50_s": percentile(first, 50), "first_msg_p99_s": percentile(first, 99),
        "first_msg_max_s": max(first, default=None), "delivered": len(first), "lost": lost, "late": len(late),
        "all_emails_in_s": max(all_in) if all_in else None,
        # Events out (their email at the provider) per second of the phases, first request to last email.
        "handled_per_s": len(first) / sum(all_in) if all_in and len(all_in) == len(phases) and sum(all_in) > 0 else None,
        "duplicate_emails": sum(sum(p["duplicates"].values()) for p in phases), "cpu": cpu,
    }


def _cpu_ratio(hw: dict[str, Any], kf: dict[str, Any]) -> float | None:
    """The hand-written side's CPU per event over Keepflow's: the ratio of the rates the two would
    sustain on a machine that has no CPU to spare, whatever a burst's answers outran."""
    hw_cpu, kf_cpu = hw["cpu_per_event_total_s"], kf["cpu_per_event_total_s"]
    return hw_cpu / kf_cpu if hw_cpu is not None and kf_cpu else None


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    bare = raw["bare"]
    kf = side_figures([p for p in raw["phases"] if p["side"] == "keepflow"])
    hw = side_figures([p for p in raw["phases"] if p["side"] == "handwritten"])
    results, arrivals = kf["results"], kf["arrivals"]
    bare_ok = [r for r in bare["results"] if r["ok"]]
    bare_wall = bare["finished"] - bare["started"]
    ingest_rate = kf["per_s"]
    bare_rate = len(bare_ok) / bare_wall if bare_wall > 0 else 0.0
    cpu = kf["cpu"]
    stages: dict[str, tuple[float | None, float | None]] = {}
    runs = raw["stages"]
    for label, start, end in STAGES:
        spans = []
        for r in results:
            t = {**runs.get(f"fulfilment/{order_id(r['i'], r['tag'])}", {}), "sent": r["sent"],
                 "arrived": arrivals.get(r["email"])}
            if t.get(start) is not None and t.get(end) is not None:
                spans.append(t[end] - t[start])
        stages[label] = (percentile(spans, 50), percentile(spans, 99))
    steps = {label: (len(v), percentile(v, 50), percentile(v, 99), sum(v)) for label, v in raw["steps"].items()}
    post_wall = kf["post_wall_s"]
    # At a steady rate the events/s is the rate asked for, not what the stack can take: no ratios.
    steady = bool(raw.get("rate"))
    hw_cpu = hw["cpu"]
    return {
        "heard_by": raw["heard_by"], "started_by": raw["started_by"], "database": database(),
        "worker_process": raw["worker_process"], "cpu_worker_s": cpu.get("worker"),
        "http_processes": raw.get("http_processes", 1), "workers": raw.get("workers", 1),
        "cpu_http_s": cpu.get("http"),
        "order": raw["order"], "steps": steps,
        "stages": stages, "runs_found": len(runs),
        "wft_timeouts": sum(t["wft_timeouts"] for t in runs.values()),
        "wft_sticky_timeouts": sum(t["wft_sticky_timeouts"] for t in runs.values()),
        "wft_failures": sum(t["wft_failures"] for t in runs.values()),
        "events": raw["events"], "concurrency": raw["concurrency"], "rate": raw.get("rate"),
        "http_max_s": kf["http_max_s"], "http_over_2s": kf["http_over_2s"],
        "accepted": kf["accepted"], "non_2xx": kf["non_2xx"], "non_2xx_by_status": kf["non_2xx_by_status"],
        "post_wall_s": post_wall, "ingest_per_s": ingest_rate, "phase_per_s": kf["phase_per_s"],
        "http_p50_s": kf["http_p50_s"], "http_p99_s": kf["http_p99_s"], "http_mean_s": kf["http_mean_s"],
        "first_msg_p50_s": kf["first_msg_p50_s"], "first_msg_p99_s": kf["first_msg_p99_s"],
        "first_msg_max_s": kf["first_msg_max_s"],
        "delivered": kf["delivered"], "lost": len(kf["lost"]), "lost_examples": kf["lost"][:5], "late": kf["late"],
        "all_emails_in_s": kf["all_emails_in_s"],
        "duplicate_emails": kf["duplicate_emails"], "unrelated_emails": raw["unrelated_emails"],
        "hw": {k: v for k, v in hw.items() if k not in ("results", "arrivals")} | {
            "lost": len(hw["lost"]), "lost_examples": hw["lost"][:5],
            "cpu_available_s": (os.cpu_count() or 1) * (hw_cpu.get("wall") or hw["post_wall_s"])},
        "ratio_to_handwritten": ingest_rate / hw["per_s"] if hw["per_s"] and not steady else None,
        "cpu_per_event_s": kf["cpu_per_event_s"], "cpu_per_event_total_s": kf["cpu_per_event_total_s"],
        "cpu_ratio_to_handwritten": _cpu_ratio(hw, kf),
        "handled_per_s": kf["handled_per_s"], "idle_cores": raw.get("idle_cores", {}),
        "cpu_after_answers_share": kf["cpu_after_answers_share"],
        "handled_ratio_to_handwritten": (kf["handled_per_s"] / hw["handled_per_s"]
                                         if kf["handled_per_s"] and hw["handled_per_s"] and not steady else None),
        "bare_ok": len(bare_ok), "bare_failed": len(bare["results"]) - len(bare_ok),
        "bare_errors": sorted({r["error"].split(":")[0] for r in bare["results"] if r["error"]}),
        "bare_wall_s": bare_wall, "bare_per_s": bare_rate,
        "bare_p50_s": percentile([r["done"] - r["sent"] for r in bare_ok], 50),
        "bare_p99_s": percentile([r["done"] - r["sent"] for r in bare_ok], 99),
        "ratio": ingest_rate / bare_rate if bare_rate and not steady else None,
        "hw_ratio_to_bare": hw["per_s"] / bare_rate if bare_rate and not steady else None,
        "cpu_keepflow_s": cpu.get("keepflow"), "cpu_temporal_s": cpu.get("temporal"), "cpu_client_s": cpu.get("client"),
        "cpu_window_s": cpu.get("wall"), "cpu_available_s": (os.cpu_count() or 1) * (cpu.get("wall") or post_wall),
        "others_cores": cpu.get("others_cores"),
    }


def comparison(s: dict[str, Any]) -> str:
    """Keepflow beside the hand-written baseline, with the bare start as the ceiling of both."""
    hw = s["hw"]

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def cpu(c: dict[str, float | None]) -> str:
        if None in (c.get("temporal"), c.get("keepflow"), c.get("worker"), c.get("wall")) or not c["wall"]:
            return "-"
        return " / ".join(f"{c[k] / c['wall']:.2f}" for k in ("temporal", "keepflow", "worker"))

    # Out of this process the app's processes and this one (the fake) together stand where the
    # default's one app process (with the fake) stands, so the column means the same in every variant.
    app_cpu = (s["cpu_keepflow_s"] if s["http_processes"] == 1 else
               None if None in (s["cpu_keepflow_s"], s["cpu_http_s"]) else s["cpu_keepflow_s"] + s["cpu_http_s"])
    kf_cpu = {"temporal": s["cpu_temporal_s"], "keepflow": app_cpu, "worker": s["cpu_worker_s"],
              "wall": s["cpu_window_s"]}

    def idle(c: dict[str, float | None]) -> str:
        app = None if c.get("keepflow") is None else c["keepflow"] + (c.get("http") or 0.0)  # type: ignore[operator]
        return " / ".join("-" if v is None else f"{v:.3f}" for v in (c.get("temporal"), app, c.get("worker")))

    def rate1(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def per_event(side: dict[str, Any], worker_in_app: bool = False) -> str:
        c, total = side["cpu_per_event_s"], side["cpu_per_event_total_s"]
        if total is None:
            return "-"
        return (f"{1000 * c['temporal']:.1f} / {1000 * (c['keepflow'] + c['http']):.1f}"
                + (" (worker in it) / -" if worker_in_app else f" / {1000 * c['worker']:.1f}") + f" ({1000 * total:.1f})")

    def others(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"
    rows = [
        ("events posted / accepted (2xx)", f"{2 * s['events']} / {s['accepted']}", f"{2 * s['events']} / {hw['accepted']}",
         f"{s['events']} / {s['bare_ok']} started"),
        ("**accepted events/s** (bare: starts/s)", f"**{s['ingest_per_s']:.1f}**", f"**{hw['per_s']:.1f}**",
         f"**{s['bare_per_s']:.1f}**"),
        ("events/s, phase by phase", ", ".join(f"{v:.1f}" for v in s["phase_per_s"]),
         ", ".join(f"{v:.1f}" for v in hw["phase_per_s"]), "-"),
        ("HTTP latency p50 / p99 (bare: start_workflow)", f"{ms(s['http_p50_s'])} / {ms(s['http_p99_s'])}",
         f"{ms(hw['http_p50_s'])} / {ms(hw['http_p99_s'])}", f"{ms(s['bare_p50_s'])} / {ms(s['bare_p99_s'])}"),
        ("request → email at the fake p50 / p99", f"{ms(s['first_msg_p50_s'])} / {ms(s['first_msg_p99_s'])}",
         f"{ms(hw['first_msg_p50_s'])} / {ms(hw['first_msg_p99_s'])}", "-"),
        ("emails lost / duplicated", f"{s['lost']} / {s['duplicate_emails']}", f"{hw['lost']} / {hw['duplicate_emails']}", "-"),
        ("cores while posting: dev server / app " + ("processes" if s["http_processes"] > 1 else "process")
         + " (and fake) / " + ("workers" if s["workers"] > 1 else "worker"), cpu(kf_cpu), cpu(hw["cpu"]), "-"),
        ("events/s handled, first request to last email (every phase)", rate1(s["handled_per_s"]),
         rate1(hw["handled_per_s"]), "-"),
        ("ratio of events/s handled", rate(s["handled_ratio_to_handwritten"]), "1", "-"),
        ("CPU per event, first request to last email, ms: dev server / app / worker (all)",
         per_event(s, not s["worker_process"]), per_event(hw), "-"),
        ("cores taken idle, before the phases: dev server / app process (both apps, the fake) / worker",
         idle(s["idle_cores"].get("keepflow", {})), idle(s["idle_cores"].get("handwritten", {})), "-"),
        ("ratio of CPU per event, hand-written / Keepflow (what a busy machine sustains)",
         rate(s["cpu_ratio_to_handwritten"]), "1", "-"),
        (f"cores other programs took meanwhile (of {os.cpu_count()})", others(s["others_cores"]),
         others(hw["cpu"]["others_cores"]), "-"),
        ("**ratio to hand-written**", f"**{rate(s['ratio_to_handwritten'])}**", "1", "-"),
        ("ratio to bare start (the ceiling)", rate(s["ratio"]), rate(s["hw_ratio_to_bare"]), "1"),
    ]
    out = ["| | Keepflow | hand-written | bare start_workflow |", "|---|---|---|---|"]
    return "\n".join(out + [f"| {' | '.join(r)} |" for r in rows])


def report(s: dict[str, Any]) -> str:
    ratio = f"{s['ratio']:.2f}" if s["ratio"] is not None else "-"
    rows = [
        ("events posted / accepted (2xx)", f"{2 * s['events']} / {s['accepted']}"),
        ("non-2xx answers", f"{s['non_2xx']}" + (f" {s['non_2xx_by_status']}" if s["non_2xx_by_status"] else "")),
        ("posting phases (wall, both together)", f"{s['post_wall_s']:.2f} s"),
        ("**accepted events/s**", f"**{s['ingest_per_s']:.1f}**"),
        ("HTTP latency p50 / p99 (max; answers over 2 s)",
         f"{ms(s['http_p50_s'])} / {ms(s['http_p99_s'])} ({ms(s['http_max_s'])}; {s['http_over_2s']})"),
        ("**request → first email at the fake p50 / p99** (max)",
         f"**{ms(s['first_msg_p50_s'])} / {ms(s['first_msg_p99_s'])}** ({ms(s['first_msg_max_s'])})"),
        ("every event's email in, after the first request (the slower phase)",
         f"{s['all_emails_in_s']:.2f} s" if s["all_emails_in_s"] is not None else "-"),
        ("events whose email never arrived", f"{s['lost']}"),
        ("duplicate order_confirmed emails", f"{s['duplicate_emails']}"),
        (f"bare start_workflow: {s['events']} calls", f"{s['bare_ok']} ok, {s['bare_failed']} failed in {s['bare_wall_s']:.2f} s"),
        ("**bare starts/s**", f"**{s['bare_per_s']:.1f}**"),
        ("bare start latency p50 / p99", f"{ms(s['bare_p50_s'])} / {ms(s['bare_p99_s'])}"),
        ("**ratio ingest / bare**", f"**{ratio}**"),
        ("workflow tasks: timed out running / waited out on the sticky queue / failed",
         f"{s['wft_timeouts']} / {s['wft_sticky_timeouts']} / {s['wft_failures']}"),
    ]
    if s["cpu_temporal_s"] is not None and s["http_processes"] > 1 and s["cpu_http_s"] is not None:
        rows.append((f"CPU while posting: dev server / {s['http_processes']} HTTP processes (uvicorn's supervisor and "
                     f"all its children) / this process (the fake provider) / {s['workers']} worker"
                     + ("s" if s["workers"] > 1 else "") + " / client",
                     f"{s['cpu_temporal_s']:.1f} / {s['cpu_http_s']:.1f} / {s['cpu_keepflow_s']:.1f} / "
                     f"{s['cpu_worker_s'] or 0:.1f} / {s['cpu_client_s']:.1f} s of {s['cpu_available_s']:.1f} core-s "
                     f"({os.cpu_count()} cores × {s['cpu_window_s']:.2f} s)"))
    elif s["cpu_temporal_s"] is not None and s["worker_process"]:
        rows.append(("CPU while posting: dev server / HTTP app (and fake) / worker / client",
                     f"{s['cpu_temporal_s']:.1f} / {s['cpu_keepflow_s']:.1f} / {s['cpu_worker_s']:.1f} / "
                     f"{s['cpu_client_s']:.1f} s of {s['cpu_available_s']:.1f} core-s "
                     f"({os.cpu_count()} cores × {s['cpu_window_s']:.2f} s)"))
    elif s["cpu_temporal_s"] is not None:
        rows.append(("CPU while posting: dev server / Keepflow process (app, worker, fake) / client",
                     f"{s['cpu_temporal_s']:.1f} / {s['cpu_keepflow_s']:.1f} / {s['cpu_client_s']:.1f} s "
                     f"of {s['cpu_available_s']:.1f} core-s ({os.cpu_count()} cores × {s['cpu_window_s']:.2f} s)"))
    out = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    out += ["", "Request → email, stage by stage (run histories, server clock, same machine; each stage has its own "
            "percentiles, so they do not add up to the end-to-end ones):", "",
            "| stage | p50 | p99 |", "|---|---|---|"]
    out += [f"| {label} | {ms(p50)} | {ms(p99)} |" for label, (p50, p99) in s["stages"].items()]
    if s["steps"]:
        out += ["", "Engine steps while posting (timers put on at run time by the script; `--no-breakdown` leaves them off):",
                "", "| step | calls | p50 | p99 | total |", "|---|---|---|---|---|"]
        order = {label: i for i, (_, _, _, label) in enumerate(TIMED)}
        for label, (n, p50, p99, total) in sorted(s["steps"].items(), key=lambda kv: order.get(kv[0], 99)):
            out.append(f"| {label} | {n} | {ms(p50)} | {ms(p99)} | {total:.1f} s |")
    return "\n".join(out)


def interpretation(s: dict[str, Any]) -> str:
    """Three sentences drawn from the figures themselves, so a rerun elsewhere stays honest."""
    out = []
    if s["cpu_temporal_s"] is not None and s["cpu_window_s"]:
        window = s["cpu_window_s"]
        worker = s["cpu_worker_s"] or 0.0
        http = s["cpu_http_s"] or 0.0
        used = s["cpu_temporal_s"] + s["cpu_keepflow_s"] + worker + http + (s["cpu_client_s"] or 0)
        share = used / s["cpu_available_s"]
        # One interpreter runs Python on one core at a time: near 1.0 core a process is at its limit.
        # Several processes of a kind are read by their average, a fair guess when they share the load.
        gil_bound = max(s["cpu_keepflow_s"], worker / s["workers"], http / s["http_processes"]) / window >= 0.9
        if s["http_processes"] > 1:
            where = (f"the {s['http_processes']} HTTP processes ran at {http / window:.2f} cores together, the "
                     f"{s['workers']} worker process" + ("es" if s["workers"] > 1 else "")
                     + f" at {worker / window:.2f}, this process (the fake provider) at "
                     f"{s['cpu_keepflow_s'] / window:.2f}")
        elif s["workers"] > 1:
            where = (f"the HTTP app (with the fake provider) ran at {s['cpu_keepflow_s'] / window:.2f} cores, the "
                     f"{s['workers']} worker processes at {worker / window:.2f} together")
        elif s["worker_process"]:
            where = (f"the HTTP app (with the fake provider) ran at {s['cpu_keepflow_s'] / window:.2f} cores, the "
                     f"worker process at {worker / window:.2f}")
        else:
            where = (f"the Keepflow process (HTTP app, worker and fake provider in one interpreter) ran at "
                     f"{s['cpu_keepflow_s'] / window:.2f} cores")
        limit = (": the machine is busy, so CPU is the limit." if share >= 0.9 else
                 ": one interpreter at its one-core limit (the GIL) is what holds it back." if gil_bound else
                 ": no process is pegged, so much of the time is waiting (for threads, for the store's write "
                 "locks, for the disk) rather than computing.")
        if s["database"] != "SQLite":
            limit = (f" (not counting the {s['database']} server on the same machine, whose CPU this script does "
                     f"not read){limit}")
        out.append(f"While posting, {where} and the Temporal dev server at {s['cpu_temporal_s'] / window:.2f}, "
                   f"{share:.0%} of the machine in all{limit}")
    if s["ratio"] is not None:
        heard = ", ".join(f"`{q}`" for q in s["heard_by"])
        signals = (f"looks up which runs that listen for order.created exist ({heard}; here none, so it "
                   "signals none), " if heard else "")
        started = ", ".join(f"`{q}`" for q in s["started_by"]) or "no run"
        out.append(f"An accepted event costs about {1 / s['ratio']:.1f} bare workflow starts (those measured on the "
                   f"quiet stack afterwards): before it answers, the request stores the event, {signals}starts "
                   f"{started}, looks up stored events to catch up and marks the event routed, while the worker"
                   + (" processes run the new workflows and send their emails." if s["workers"] > 1 else
                      (" process" if s["worker_process"] else " in the same process")
                      + " runs the new workflows and sends their emails."))
    detail = []
    waits = s["steps"].get("waiting for a to_thread thread (HTTP side)")
    if waits:
        detail.append(f"each of the HTTP side's {waits[0] / max(s['accepted'], 1):.0f} `asyncio.to_thread` calls per "
                      f"event waited {ms(waits[1])} at p50 ({ms(waits[2])} at p99) for a thread of asyncio's default "
                      f"executor ({min(32, (os.cpu_count() or 1) + 4)} threads here)")
    writes = {k: v for k, v in s["steps"].items() if "(store" in k}
    if writes:
        label, (_, p50, p99, _) = max(writes.items(), key=lambda kv: kv[1][2] or 0)
        kind = "SQLite writes, one writer at a time," if s["database"] == "SQLite" else f"{s['database']} writes"
        detail.append(f"Keepflow's own {kind} have long tails "
                      f"({label.split(' (')[0]}: {ms(p50)} at p50, {ms(p99)} at p99)")
    if s["stages"] and s["first_msg_p50_s"] is not None:
        label, (p50, _) = max(s["stages"].items(), key=lambda kv: kv[1][0] or 0)
        out.append(f"Of the {ms(s['first_msg_p50_s'])} median from request to email the largest stage is "
                   f"'{label}' ({ms(p50)})" + ("; and " + " and ".join(detail) + "." if detail else "."))
    return " ".join(out)


TARGET = 0.8  # issue 16: Keepflow's accepted events/s at least this share of the hand-written integration's


def baseline_note(s: dict[str, Any]) -> str:
    """What the ratio to the hand-written integration says, and what it does not."""
    hw = s["hw"]
    if s["ratio_to_handwritten"] is None and not s["rate"]:
        head = "The hand-written integration accepted no event, so there is no ratio."
    elif s["ratio_to_handwritten"] is None:
        head = (f"At a steady {s['rate']:g} events/s both sides take what is sent, so there is no ratio; the "
                f"difference is in the latencies: HTTP p99 {ms(s['http_p99_s'])} for Keepflow, "
                f"{ms(hw['http_p99_s'])} for the hand-written integration.")
    else:
        r = s["ratio_to_handwritten"]
        head = (f"Keepflow accepted {s['ingest_per_s']:.1f} events/s, {r:.2f} of the hand-written integration's "
                f"{hw['per_s']:.1f} (the target is {TARGET:g}: {'met' if r >= TARGET else 'not met'}); the bare "
                f"start, the ceiling of both, made {s['bare_per_s']:.1f}/s"
                + ("." if hw["per_s"] <= s["bare_per_s"] else
                   f" (the hand-written side beat it: the bare starts come last, on a server that holds every "
                   f"phase's runs, and {s['events']} of them are over in {s['bare_wall_s']:.1f} s, where a little noise "
                   "moves the rate most)."))
        spread = [v for side in (s["phase_per_s"], hw["phase_per_s"]) for v in side]
        if len(spread) == 4 and min(spread) > 0:
            head += (f" Phase by phase the rates moved by up to "
                     f"{max(max(s['phase_per_s']) / min(s['phase_per_s']), max(hw['phase_per_s']) / min(hw['phase_per_s'])) - 1:.0%}"
                     " between a side's two phases, a measure of how noisy the machine was.")
        busy = (s["others_cores"], hw["cpu"]["others_cores"])
        if None not in busy and max(busy) >= 0.1:  # type: ignore[type-var]
            head += (f" Other programs took {busy[0]:.2f} of the {os.cpu_count()} cores while Keepflow posted "
                     f"and {busy[1]:.2f} while the hand-written side did: both sides shared the machine, so both "
                     "figures are lower than a quiet machine gives, and the mirrored order shares that between the "
                     "sides only on average.")
    if s["ratio_to_handwritten"] is not None and s["http_mean_s"] and hw["http_mean_s"]:
        c = s["concurrency"]
        head += (f" With {c} requests in flight, events/s follows the time one request takes: {c} / the mean HTTP "
                 f"latency gives {c / s['http_mean_s']:.0f} for Keepflow and {c / hw['http_mean_s']:.0f} for the "
                 f"hand-written side (measured {s['ingest_per_s']:.0f} and {hw['per_s']:.0f}).")
        signal, start = s["steps"].get(TIMED[3][3]), s["steps"].get(TIMED[4][3])
        hops = s["steps"].get("waiting for a to_thread thread (HTTP side)")
        if signal and start and hops and s["accepted"]:
            head += (f" Keepflow's request makes two Temporal calls one after the other (the signal, {ms(signal[1])} "
                     f"at p50, then the start, {ms(start[1])}) and {hops[0] / s['accepted']:.0f} trips to a thread "
                     "for its store, where the hand-written one makes one start and one insert.")
    hw_all, kf_all = hw["cpu_per_event_total_s"], s["cpu_per_event_total_s"]
    if s["handled_ratio_to_handwritten"] is not None and s["cpu_ratio_to_handwritten"] is not None and hw_all and kf_all:
        head += (f" The answers are not the whole of an event: from each phase's first request to its last email "
                 f"Keepflow handled {s['handled_per_s']:.1f} events/s and the hand-written side "
                 f"{hw['handled_per_s']:.1f} ({s['handled_ratio_to_handwritten']:.2f}), and an event cost "
                 f"{1000 * kf_all:.1f} ms of CPU in all against {1000 * hw_all:.1f} "
                 f"({s['cpu_ratio_to_handwritten']:.2f}, the ratio of the rates each could keep up on a machine "
                 f"with no CPU to spare). Of the hand-written side's CPU, {hw['cpu_after_answers_share']:.0%} came "
                 f"after its last answer (its worker runs its workflows in the SDK's sandbox, and most of them "
                 f"after the burst); of Keepflow's, {s['cpu_after_answers_share']:.0%}, since it stores and "
                 "routes an event before it answers.")
    return (head + " The two do not do the same work. For each event the hand-written one verifies the signature, "
            "inserts one row and starts one workflow whose activity sends one fixed email. Keepflow, before it "
            "answers, also stores the customer, the order and the event, signals the runs that listen for the event "
            "type, records the runs it started, looks for earlier events to catch up and marks the event routed; its "
            "workflow interprets the sequence, and its send checks consent and suppressions, renders the template in "
            "the customer's locale and records the send before and after the provider call, so a retry does not send "
            "twice (the hand-written activity may); its payloads are encrypted. The ratio is the price of that work on "
            "this machine, not overhead for nothing.")


def machine() -> dict[str, str]:
    from keepflow.tools.temporal_dev_server import SQLITE_PRAGMAS, TEMPORAL_BIN

    version = "?"
    with contextlib.suppress(Exception):
        version = subprocess.run([str(TEMPORAL_BIN), "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip() or "?"
    commit = "?"
    with contextlib.suppress(Exception):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        changed = sorted(line[3:] for line in dirty if line.strip())
        commit = head + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")
    return {"commit": commit, "nproc": str(os.cpu_count()), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "temporal": version, "pragmas": ", ".join(SQLITE_PRAGMAS)}


def database() -> str:
    url = os.environ.get("DATABASE_URL") or ""
    return "PostgreSQL" if url.startswith("postgresql") else "SQLite"


def provenance(command: str, pragmas: bool = False, after: str = "") -> list[str]:
    """The lines under a RESULTS.md section's title: when and with what command, machine and code."""
    m = machine()
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}`{after}.", "",
             f"- Machine: {m['nproc']} CPUs (nproc), {m['os']}, Python {m['python']}, {m['temporal']}",
             f"- Code: {m['commit']}"]
    if pragmas:
        lines.append(f"- Temporal dev server SQLite pragmas (keepflow/tools/temporal_dev_server.py SQLITE_PRAGMAS): {m['pragmas']}")
    return lines


def write_results(s: dict[str, Any]) -> None:
    # Runs on PostgreSQL (DATABASE_URL) or with the worker in its own process get sections of their
    # own beside the default one (SQLite, one process, as `keepflow dev` runs).
    variant = ([f"{s['database']} store"] if s["database"] != "SQLite" else []) + (
        [f"{s['http_processes']} HTTP processes"] if s["http_processes"] > 1 else []) + (
        [f"{s['workers']} worker processes"] if s["workers"] > 1 else
        ["worker in its own process"] if s["worker_process"] else []) + (
        [f"steady {s['rate']:g} events/s"] if s["rate"] else []) + (
        ["hand-written first"] if s["order"][0] == "handwritten" else [])
    title = ", ".join([SECTION, *variant])
    command = (f"python bench/ingest.py --events {s['events']} --concurrency {s['concurrency']}"
               + (f" --rate {s['rate']:g}" if s["rate"] else "")
               + (" --worker-process" if s["worker_process"] and s["workers"] == 1 else "")
               + (f" --http-processes {s['http_processes']}" if s["http_processes"] > 1 else "")
               + (f" --workers {s['workers']}" if s["workers"] > 1 else "")
               + (" --handwritten-first" if s["order"][0] == "handwritten" else "") + " --write-results")
    section = "\n".join([
        title, "",
        *provenance(command, pragmas=True,
                    after="" if s["database"] == "SQLite" else
                    " with DATABASE_URL set (`.ci/postgres` starts a throwaway server)"),
        f"- Parameters: {s['events']} distinct signed `order.created` events, {s['concurrency']} requests in flight"
        + (f" at most, sent at a steady {s['rate']:g} per second (an open loop)" if s["rate"] else "") + ", "
        f"posted by a second process over loopback (httpx); "
        + (f"the Keepflow app as `keepflow serve --workers {s['http_processes']}` ({s['http_processes']} processes on "
           "one port, in a process group of their own; no engine-step timers, they cannot reach it), "
           if s["http_processes"] > 1 else "the Keepflow app in this process, " if s["worker_process"] else "")
        + (f"{s['workers']} `worker.py` processes on one task queue; " if s["workers"] > 1 else
           "`worker.py` in its own; " if s["worker_process"] else "Keepflow app + worker in one process; ")
        + f"{s['database']} store; "
        "the fake SendGrid from tests/fakes; every order starts `fulfilment`, whose first step sends order_confirmed",
        f"- Against: the hand-written integration of bench/handwritten.py (verify, record the delivery id, start a "
        f"workflow whose one activity sends through the SendGrid SDK; its app in this process"
        f"{' too' if s['http_processes'] == 1 else ' (one process whatever --http-processes says)'}, its worker in its "
        f"own), {s['events']} events per phase, in one run on one dev server, phases mirrored "
        f"({', '.join(SIDE_NAMES[side] for side in s['order'])}); the bare starts come last, as the ceiling",
        "",
        comparison(s), "",
        baseline_note(s), "",
        "Keepflow's side in detail (both its phases together):", "",
        report(s), "",
        interpretation(s), "",
    ])
    write_section(title, section)
    # The default run (SQLite, one process, as fast as it goes) gives the plain keys; a variant's
    # keys say which it is, e.g. ingest.worker_process.keepflow_per_s.
    key = ".".join(["ingest", *(["postgresql"] if s["database"] != "SQLite" else []),
                    *([f"http_{s['http_processes']}"] if s["http_processes"] > 1 else []),
                    *([f"workers_{s['workers']}"] if s["workers"] > 1 else
                      ["worker_process"] if s["worker_process"] else []),
                    *([f"steady_{s['rate']:g}_per_s".replace('.', '_')] if s["rate"] else []),
                    *(["handwritten_first"] if s["order"][0] == "handwritten" else [])])
    figures = {f"{key}.keepflow_per_s": round(s["ingest_per_s"], 1), f"{key}.p99_ms": round(s["http_p99_s"] * 1000),
               f"{key}.bare_start_per_s": round(s["bare_per_s"], 1),
               f"{key}.handwritten_per_s": round(s["hw"]["per_s"], 1)}
    if s["ratio_to_handwritten"] is not None:
        figures[f"{key}.ratio_to_handwritten"] = round(s["ratio_to_handwritten"], 2)
    if s["handled_ratio_to_handwritten"] is not None:
        figures[f"{key}.handled_per_s"] = round(s["handled_per_s"], 1)
        figures[f"{key}.handwritten_handled_per_s"] = round(s["hw"]["handled_per_s"], 1)
        figures[f"{key}.handled_ratio_to_handwritten"] = round(s["handled_ratio_to_handwritten"], 2)
    if s["cpu_ratio_to_handwritten"] is not None:
        figures[f"{key}.cpu_ratio_to_handwritten"] = round(s["cpu_ratio_to_handwritten"], 2)
    write_figures(figures, command, machine())


def write_section(title: str, section: str) -> None:
    """Replace (or add) one script's `## title` section of RESULTS.md, leaving the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nFigures from the scripts in bench/ (see bench/README.md).\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="events to post (default 300)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the emails after the last answer (default 120)")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="do not time the engine's steps (the timers are put on at run time, never in files)")
    parser.add_argument("--worker-process", action="store_true",
                        help="run worker.py in its own process, as production does (default: in this process)")
    parser.add_argument("--rate", type=float, default=None,
                        help="send at this many events per second, whatever the answers (default: as fast as --concurrency allows)")
    parser.add_argument("--handwritten-first", action="store_true",
                        help="mirror the other way: hand-written, Keepflow, Keepflow, hand-written")
    parser.add_argument("--http-processes", type=int, default=1, metavar="N",
                        help="serve Keepflow's app as `keepflow serve --workers N` in its own processes (default 1: in this process)")
    parser.add_argument("--workers", type=int, default=1, metavar="M",
                        help="run M worker.py processes on the one task queue (default 1; more implies --worker-process)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        code = client_main()
        sys.stdout.flush()
        # Skip interpreter shutdown: the Temporal client's native threads can still call into Python
        # while it finalizes, which aborts the process ("PyGILState_Release ... finalizing") after the
        # results were already written.
        os._exit(code)
    if args.events < 1 or args.concurrency < 1:
        parser.error("--events and --concurrency must be at least 1")
    if args.http_processes < 1 or args.workers < 1:
        parser.error("--http-processes and --workers must be at least 1")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = asyncio.run(bench(args.events, args.concurrency, args.timeout, breakdown=not args.no_breakdown,
                            worker_process=args.worker_process or args.workers > 1, rate=args.rate,
                            handwritten_first=args.handwritten_first, http_processes=args.http_processes,
                            workers=args.workers))
    s = summarize(raw)
    print()
    print(comparison(s))
    print()
    print(baseline_note(s))
    print()
    print(report(s))
    print()
    print(interpretation(s))
    for name, side in (("Keepflow", s), ("hand-written", s["hw"])):
        if side["lost"]:
            print(f"\nLOST ({name}): {side['lost']} events' emails never arrived, e.g. {', '.join(side['lost_examples'])}")
        if side.get("late"):
            print(f"\nLATE ({name}): {side['late']} emails came after their phase's wait, before the run ended "
                  "(not counted in that phase's delivery times)")
    if args.write_results:
        write_results(s)
    return 1 if s["lost"] or s["hw"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
