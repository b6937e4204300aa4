"""The real stack, split into processes that can fail: for the fault tests and bench/kill.py.

* Temporal's dev server (keepflow/tools/temporal_dev_server.py), headless, with its SQLite file in the folder, so
  it can be stopped and started again on the same port with the same state;
* worker.py in its own OS process (`python worker.py`, configured through the environment as in
  production), so it can be SIGKILLed or SIGTERMed and replaced;
* the fake SendGrid/Twilio (tests/fakes/provider_server.py) in this process, which the worker's
  real SDKs call, and which counts what each message key cost at the provider;
* on request, the public app (`keepflow serve`) in its own OS process on a fixed port, so events
  can come in over HTTP and the app can be SIGKILLed and started again.

The sequence is written into the folder: two emails and two texts with a wait between the pairs,
transactional (no quiet hours, no cap), so every step sends whatever the hour. It is keyed on the
order, so an `order.created` for order `r00007` starts the run `faults/r00007`, the same id
`start_run(7)` gives. Each run's `event.id` is its workflow id and each text's body starts with
its message key, because Twilio has no field to carry one. With `shipment=True` a run ends by
waiting for its order's `order.shipped`, so events that arrive out of order have a run to reach.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle

from keepflow.runtime.payloads import RunInput, RunStatus
from keepflow.runtime.payload_keys import new_payload_key
from keepflow.runtime.registry import load_catalog
from keepflow.settings import Settings
from keepflow.store import Database, Message, upgrade
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.fakes.provider_server import (
    FAKE_LINE_CHANNEL_ACCESS_TOKEN,
    FAKE_SENDGRID_API_KEY,
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FakeProviders,
)

ROOT = Path(__file__).resolve().parents[2]
SEQUENCE_ID = "faults"
STEPS = {"first_email": "email", "first_sms": "sms", "second_email": "email", "second_sms": "sms"}
WAIT_PATH = "2"  # the wait step has no id: its path is its index
SHIPMENT_PATH = str(len(STEPS) + 1)  # the `wait_for: order.shipped` step, last, when there is one
READY_LINE = "worker listening on task queue"

SEQUENCES_YAML = """\
sequences:
  - id: faults
    description: Two emails and two texts with a wait between the pairs, for the fault tests.
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: email
        template: note
        id: first_email
      - send: sms
        template: first
        id: first_sms
      - wait: {wait}
      - send: email
        template: note
        id: second_email
      - send: sms
        template: second
        id: second_sms
{shipment}"""

# A run that never hears of its shipment ends as an exit, not as completed: a lost event shows.
SHIPMENT_STEP = """\
      - wait_for: order.shipped
        timeout: 10m
        on_timeout: exit
"""

TEMPLATES = {
    "email/note.en.html": "{% block subject %}Note for {{ customer.first_name }}{% endblock %}\n<p>{{ event.id }}</p>\n",
    # Curly quotes and a dash: what Twilio's Smart Encoding rewrites, so a lookup must still match them.
    "sms/first.en.txt": "{{ event.id }}:first_sms Hello {{ customer.first_name }} \u2014 it\u2019s on its way\n",
    "sms/second.en.txt": "{{ event.id }}:second_sms Bye {{ customer.first_name }}, \u201cthanks\u201d\n",
}

# Another writer on Keepflow's SQLite file that takes the write lock for `burst` seconds, lets go for
# `gap`, and takes it again, for `seconds` in all: a bulk job committing large transactions.
LOCK_HOLDER = """\
import sqlite3, sys, time
path, seconds, burst, gap = sys.argv[1], *map(float, sys.argv[2:])
db = sqlite3.connect(path, timeout=60, isolation_level=None)
until = time.monotonic() + seconds
while time.monotonic() < until:
    db.execute("BEGIN IMMEDIATE")
    time.sleep(burst)
    db.execute("ROLLBACK")
    time.sleep(gap)
"""

# Variables the worker reads that must come from here, not from whoever runs the tests.
# Workers and the stack's own client seal payloads as production does, with one key for the run.
PAYLOAD_KEYS = new_payload_key()
# What the public app verifies signed events with (Standard Webhooks' whsec_<base64>).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
_OURS = ("KEEPFLOW_", "TEMPORAL_", "SENDGRID_", "TWILIO_", "LINE_", "DATABASE_URL")


def write_project(folder: Path, wait: str, shipment: bool = False) -> Path:
    """The sequences file and its templates; returns the sequences file (checked by the real loader)."""
    for relative, text in TEMPLATES.items():
        path = folder / "templates" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    sequences = folder / "sequences.yaml"
    sequences.write_text(SEQUENCES_YAML.format(wait=wait, shipment=SHIPMENT_STEP if shipment else ""),
                         encoding="utf-8")
    load_catalog(sequences, folder / "templates")
    return sequences


def key_of(api: str, body_or_record: Any) -> str | None:
    """The message key a provider request (parsed body) or accepted record is for."""
    if not isinstance(body_or_record, dict):
        return None
    if api == "sendgrid":
        if body_or_record.get("keepflow_key"):  # an accepted record
            return body_or_record["keepflow_key"]
        args = dict(body_or_record.get("custom_args") or {})
        for p in body_or_record.get("personalizations") or []:
            args.update(p.get("custom_args") or {})
        return args.get("keepflow_key")
    text = body_or_record.get("Body") or body_or_record.get("body") or ""
    return text.split(" ", 1)[0] or None


def worker_env(data_dir: Path, database_url: str, temporal_address: str, task_queue: str, fake_url: str, *,
               provider_timeout: float = 10.0, sequences: Path = ROOT / "sequences.yaml",
               templates: Path = ROOT / "templates") -> dict[str, str]:
    """The environment of a `worker.py` process aimed at the fake providers (none of ours inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update({
        "KEEPFLOW_DATA_DIR": str(data_dir), "DATABASE_URL": database_url,
        "KEEPFLOW_SEQUENCES": str(sequences), "KEEPFLOW_TEMPLATES": str(templates),
        "TEMPORAL_ADDRESS": temporal_address, "KEEPFLOW_TASK_QUEUE": task_queue,
        "KEEPFLOW_EMAIL_PROVIDER": "sendgrid", "SENDGRID_API_KEY": FAKE_SENDGRID_API_KEY, "SENDGRID_HOST": fake_url,
        "KEEPFLOW_SMS_PROVIDER": "twilio", "TWILIO_ACCOUNT_SID": FAKE_TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": FAKE_TWILIO_AUTH_TOKEN, "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_BASE_URL": fake_url, "KEEPFLOW_PROVIDER_TIMEOUT": str(provider_timeout),
        # The shipped sequences send on LINE too; the fake answers LINE's push as well.
        "LINE_CHANNEL_ACCESS_TOKEN": FAKE_LINE_CHANNEL_ACCESS_TOKEN, "LINE_CHANNEL_SECRET": "fault-tests-line-secret",
        "LINE_API_BASE": fake_url,
        # What production refuses to start without (keepflow/production.py).
        "KEEPFLOW_PUBLIC_URL": "https://mail.shop.example", "KEEPFLOW_EMAIL_FROM": "Shop <hello@shop-fault-tests.com>",
        "KEEPFLOW_UNSUBSCRIBE_SECRET": "fault-tests-unsubscribe-secret",
        "KEEPFLOW_PAYLOAD_KEYS": PAYLOAD_KEYS, "PYTHONUNBUFFERED": "1",
    })
    return env


class ChildProcess:
    """One of the stack's OS processes, started from `command` with `env`, its output in its own log file."""

    name = "process"

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path):
        self.command, self.env, self.log_path = command, env, log_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, in-flight work simply stops. Safe from any thread.
        The whole process group: `keepflow serve --workers N`'s processes die with their supervisor."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown (worker.py gives in-flight activities time to finish)."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    async def exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process is not None and self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} {self.pid} still running after {timeout:.0f} s")
            await asyncio.sleep(0.05)
        return self.process.returncode if self.process is not None else 0

    def reap(self) -> None:
        """Make sure the process is gone and waited for (no zombie, no ResourceWarning)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # its children too (it was started in a session of its own)
        self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _check_running(self, deadline: float, timeout: float) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")


class WorkerProcess(ChildProcess):
    """`python worker.py` with the given environment."""

    name = "worker"

    def __init__(self, env: dict[str, str], log_path: Path):
        super().__init__([sys.executable, str(ROOT / "worker.py")], env, log_path)

    @property
    def identity(self) -> str:
        """What Temporal records as the worker of its tasks (the Python SDK's default identity)."""
        return f"{self.pid}@{socket.gethostname()}"

    async def ready(self, timeout: float = 90.0) -> WorkerProcess:
        """Wait until it polls its task queue (it logs that line just before)."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log():
            self._check_running(deadline, timeout)
            await asyncio.sleep(0.1)
        return self


class AppProcess(ChildProcess):
    """`keepflow serve` (the public app: /events, the webhooks, /healthz) on 127.0.0.1:`port`."""

    name = "public app"

    def __init__(self, env: dict[str, str], log_path: Path, port: int, processes: int = 1):
        super().__init__([sys.executable, "-m", "keepflow.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                          "--workers", str(processes)], env, log_path)
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self, timeout: float = 90.0) -> AppProcess:
        """Wait until /healthz says the database and Temporal answer."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=3.0) as http:
            while True:
                self._check_running(deadline, timeout)
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.2)


@dataclass
class Row:
    key: str
    channel: str
    status: str
    error: str | None
    attempts: int


class Stack:
    """Dev server + fake providers + any number of worker processes (and public apps, one at a
    time), all on 127.0.0.1, in `folder`.

        async with Stack(folder) as stack:
            worker = await stack.start_worker()
            handles = await stack.start_runs(10)
    """

    def __init__(self, folder: Path, *, wait: str = "2s", provider_timeout: float = 10.0,
                 twilio_sent_on_accept: bool = True, shipment: bool = False):
        self.folder = folder
        self.wait = wait
        self.shipment = shipment
        self.provider_timeout = provider_timeout
        # False: Twilio's list shows accepted texts as still queued (DateSent null), which the
        # lookup before a resend must also find.
        self.fake = FakeProviders(twilio_sent_on_accept=twilio_sent_on_accept)
        self.server = DevServer(folder / "temporal", port=free_port(), ui_port=None)
        self.task_queue = f"faults-{uuid.uuid4().hex[:8]}"
        self.database_url = f"sqlite:///{folder / 'keepflow.db'}"
        self.workers: list[WorkerProcess] = []
        # One port for every public app this stack starts: a sender keeps one address.
        self.app_port = free_port()
        self.apps: list[AppProcess] = []
        self.client: Client | None = None
        self.snapshot = None

    async def __aenter__(self) -> Stack:
        self.folder.mkdir(parents=True, exist_ok=True)
        sequences = write_project(self.folder, self.wait, self.shipment)
        self.snapshot = load_catalog(sequences, self.folder / "templates").snapshot(SEQUENCE_ID)
        upgrade(self.database_url)  # so the rows can be read even if no worker ever starts
        self.fake.start()
        try:
            self.server.start()
            self.client = await self.server.wait_ready(self.settings())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for process in [*self.apps, *self.workers]:
            process.reap()
        self.server.stop()
        self.fake.on_accept = None
        self.fake.stop()

    # -- the Temporal server -------------------------------------------------------------------

    async def restart_server(self, down_for: float) -> None:
        """Stop the dev server (SIGTERM), stay down `down_for` seconds, start it on the same port and file."""
        self.server.stop()
        await asyncio.sleep(down_for)
        self.server.start()
        self.client = await self.server.wait_ready(self.settings())

    async def kill_server(self, down_for: float) -> None:
        """SIGKILL the dev server (no shutdown: whatever it had not committed to its file is gone),
        stay down `down_for` seconds, start it on the same port and file."""
        process = self.server.process
        assert process is not None and process.poll() is None, "the dev server is not running"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        await asyncio.sleep(down_for)
        self.server.start()
        self.client = await self.server.wait_ready(self.settings())

    # -- workers -------------------------------------------------------------------------------

    def settings(self) -> Settings:
        # The stack's store: the client writes the definitions and contexts of the runs it starts
        # there, and the worker processes read them back (keepflow/runtime/payload_parts.py).
        return Settings(payload_keys=SecretStr(PAYLOAD_KEYS), database_url=self.database_url)

    def worker_env(self) -> dict[str, str]:
        return worker_env(self.folder, self.database_url, self.server.address, self.task_queue, self.fake.url,
                          provider_timeout=self.provider_timeout, sequences=self.folder / "sequences.yaml",
                          templates=self.folder / "templates")

    async def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.worker_env(), self.folder / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return await worker.start().ready()

    # -- the public app ------------------------------------------------------------------------

    def app_env(self) -> dict[str, str]:
        return {**self.worker_env(), "KEEPFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET}

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    async def start_public_app(self, processes: int = 1) -> AppProcess:
        """`keepflow serve [--workers N]` on the stack's app port, once its /healthz answers 200."""
        assert not any(app.alive() for app in self.apps), "one public app at a time: they share a port"
        app = AppProcess(self.app_env(), self.folder / f"app-{len(self.apps) + 1}.log", self.app_port, processes)
        self.apps.append(app)
        return await app.start().ready()

    # -- the database ------------------------------------------------------------------------

    async def hold_database_lock(self, seconds: float, burst: float, gap: float) -> None:
        """Another process takes the write lock on Keepflow's database again and again for `seconds`
        (see LOCK_HOLDER); returns once it has let go for good."""
        path = self.database_url.removeprefix("sqlite:///")
        holder = ChildProcess([sys.executable, "-c", LOCK_HOLDER, path, str(seconds), str(burst), str(gap)],
                              self.worker_env(), self.folder / "lock-holder.log").start()
        try:
            if await holder.exited(seconds + 60) != 0:
                raise RuntimeError(f"the lock holder failed:\n{holder.log()[-3000:]}")
        finally:
            holder.reap()

    # -- runs ----------------------------------------------------------------------------------

    def run_id(self, i: int) -> str:
        return f"{SEQUENCE_ID}/r{i:05d}"

    def expected_keys(self, runs: int) -> dict[str, str]:
        """Every message key `runs` runs send, with its channel."""
        return {f"{self.run_id(i)}:{step}": channel for i in range(runs) for step, channel in STEPS.items()}

    async def start_run(self, i: int) -> WorkflowHandle:
        workflow_id = self.run_id(i)
        customer = {"id": f"cust-{i:05d}", "email": f"r{i}@example.com", "phone": f"+66812{i:06d}",
                    "first_name": f"R{i}", "locale": "en", "timezone": "Asia/Bangkok",
                    "consents": {"email": True, "sms": True}}
        run = RunInput(snapshot=self.snapshot, key=f"r{i:05d}",
                       context={"customer": customer, "brand": {"name": "Fault Shop"},
                                "event": {"id": workflow_id, "type": "order.created", "occurred_at": ""}},
                       step_attribute=False)
        return await self.client.start_workflow("sequence", run, id=workflow_id, task_queue=self.task_queue,
                                                result_type=RunStatus)

    async def start_runs(self, count: int, over: float = 0.0, first: int = 0) -> list[WorkflowHandle]:
        """Start `count` runs, spread evenly over `over` seconds."""
        handles = []
        for n in range(count):
            handles.append(await self.start_run(first + n))
            if over and n < count - 1:
                await asyncio.sleep(over / count)
        return handles

    async def results(self, handles: list[WorkflowHandle], timeout: float) -> tuple[dict[str, RunStatus], dict[str, str]]:
        """Each run's result, waited for (bounded); and each run that failed or did not finish, with why."""
        done: dict[str, RunStatus] = {}
        failed: dict[str, str] = {}

        async def one(handle: WorkflowHandle) -> None:
            try:
                done[handle.id] = await handle.result()
            except Exception as err:  # noqa: BLE001 - reported per run
                failed[handle.id] = f"{type(err).__name__}: {err}"

        try:
            await asyncio.wait_for(asyncio.gather(*(one(h) for h in handles)), timeout)
        except asyncio.TimeoutError:
            for handle in handles:
                if handle.id not in done and handle.id not in failed:
                    failed[handle.id] = f"not finished after {timeout:.0f} s"
        return done, failed

    # -- what happened -------------------------------------------------------------------------

    def requests_per_key(self) -> Counter[str]:
        """Send requests (POSTs) the fake received for each message key."""
        counts: Counter[str] = Counter()
        for request in self.fake.requests:
            if request["method"] == "POST" and request["api"] in ("sendgrid", "twilio"):
                counts[key_of(request["api"], request["body"]) or "?"] += 1
        return counts

    def rows(self) -> dict[str, Row]:
        db = Database(self.database_url)
        try:
            with db.session() as session:
                return {m.key: Row(m.key, m.channel, m.status, m.error, m.attempts)
                        for m in session.scalars(select(Message))}
        finally:
            db.dispose()


async def history_events(client: Client, workflow_id: str) -> list[Any]:
    return [e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
