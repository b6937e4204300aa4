"""Small helpers for tests that run sequences on the time-skipping server."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from ruamel.yaml import YAML
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle

from keepflow.http.serving import serve_http
from keepflow.language.dsl import QuietHours, Rules, SequencesFile, Snapshot
from keepflow.runtime.payloads import EventSignal, RunInput, RunStatus, SendRequest
from keepflow.settings import new_secret
from keepflow.store import Database, Message
from keepflow.tools.temporal_dev_server import free_port
from workflows.sequence import SequenceWorkflow

CUSTOMER = {"id": "c-1", "email": "nok@example.com", "phone": "+66812345678", "first_name": "Nok",
            "locale": "en", "timezone": "Asia/Bangkok", "consents": {"email": True, "sms": True}}


# Step tests check what each step does, at any hour the suite runs: no quiet hours, no cap, unless
# the YAML has its own `rules:` (tests/test_compliance.py checks the rules themselves).
NO_LIMITS = Rules(quiet_hours=QuietHours(channels=[]), frequency_cap={})


def snapshot(yaml_text: str, root: str | None = None) -> Snapshot:
    data = YAML(typ="safe").load(yaml_text)
    file = SequencesFile.model_validate(data)
    return Snapshot.of(root or file.sequences[0].id, file.by_id(), file.rules if "rules" in data else NO_LIMITS)


async def start(client: Client, task_queue: str, snap: Snapshot, context: dict[str, Any] | None = None,
                key: str | None = None) -> WorkflowHandle:
    key = key or uuid.uuid4().hex[:8]
    from tests.engine import CATALOG  # engine imports this module

    # As the router does: the brand of the sequences file the settings name.
    context = {"customer": CUSTOMER, "brand": dict(CATALOG.file.brand), **(context or {})}
    return await client.start_workflow(
        SequenceWorkflow.run, RunInput(snapshot=snap, key=key, context=context, step_attribute=False),
        id=f"{snap.root}/{key}", task_queue=task_queue,
    )


def messages(db: Database) -> list[Message]:
    with db.session() as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


@dataclass(frozen=True)
class Scheduled:
    at: datetime
    workflow_id: str
    step: str
    channel: str
    template: str


async def sends(client: Client, *workflow_ids: str) -> list[Scheduled]:
    """Every send_message the given runs scheduled, with the (skipped) server time it happened."""
    found: list[Scheduled] = []
    for workflow_id in workflow_ids:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            if not event.HasField("activity_task_scheduled_event_attributes"):
                continue
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name != "send_message":
                continue
            [request] = await client.data_converter.decode(attrs.input.payloads, [SendRequest])
            found.append(Scheduled(event.event_time.ToDatetime(timezone.utc), workflow_id, request.step, request.channel, request.template))
    return sorted(found, key=lambda s: s.at)


async def to_local_hour(env, hour: int = 10, zone: str = "Asia/Bangkok") -> datetime:
    """Skip the server's clock to the next `hour`:00 in `zone`, so quiet hours (21:00-08:00) do not
    depend on when the suite runs. Returns that moment."""
    from zoneinfo import ZoneInfo

    now = (await env.get_current_time()).astimezone(ZoneInfo(zone))
    target = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    await env.sleep(target - now)
    return target


def days(start: datetime, at: datetime) -> float:
    return round((at - start) / timedelta(days=1), 2)


async def result_of(env, workflow_id: str) -> RunStatus:
    """Await a run we did not start ourselves (a child, or one the router started), skipping time.

    The test environment skips time by itself only for handles its own start_workflow returned.
    """
    handle = env.client.get_workflow_handle(workflow_id, result_type=RunStatus)
    async with env.time_skipping_unlocked():
        return await handle.result()


async def until_step(env, workflow_id: str, path: str, attempts: int = 200) -> None:
    """Wait (in real time) until the run is at step `path`: its earlier activities are done."""
    handle = env.client.get_workflow_handle(workflow_id)
    for _ in range(attempts):
        if (await handle.query("status", result_type=RunStatus)).current_step == path:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{workflow_id} never reached step {path}")


class serving:
    """The public app on a real port, as a store or a mail client reaches it (redirects are not
    followed): `async with serving(settings, db) as http: ...`. No Temporal behind it unless
    `client` is given; `.app` is the app. With `live=True` it serves the deployed version of the
    settings' sequences file, as a real process does, instead of the frozen shop's catalog."""

    def __init__(self, settings, db, *, client=None, secrets: tuple[str, ...] | None = None, catalog=None,
                 live: bool = False, reconcile_every: float = 3600):
        from keepflow.http.app import create_app
        from tests.engine import CATALOG

        self.app = create_app(settings, catalog=None if live else catalog or CATALOG, db=db, client=client,
                              webhook_secrets=list(secrets or (new_secret(),)), reconcile_every=reconcile_every)
        self.port, self.stop = free_port(), asyncio.Event()

    async def __aenter__(self) -> httpx.AsyncClient:
        self.server = asyncio.create_task(serve_http(self.app, "127.0.0.1", self.port, self.stop))
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        for _ in range(100):
            try:
                await self.client.get("/")  # any answer (this one is a 404) means it listens
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        self.stop.set()
        await self.server


# Every local dashboard user the tests add has this password.
PASSWORD = "correct horse battery staple"


class serving_admin(serving):
    """The admin app (dashboard, API docs) on a real port, its client signed in as a local user
    with `role` (added to `db` as `name`), or not signed in with role=None."""

    def __init__(self, settings, db, *, role: str | None = "admin", name: str | None = None, client=None,
                 port: int | None = None, catalog=None):
        from keepflow.http.admin import create_admin_app
        from tests.engine import CATALOG

        self.app = create_admin_app(settings, catalog=catalog or CATALOG, db=db, client=client,
                                    session_secret=new_secret())
        self.port, self.stop = port or free_port(), asyncio.Event()
        self.db, self.role, self.name = db, role, name or f"{role}-{uuid.uuid4().hex[:6]}"

    async def __aenter__(self) -> httpx.AsyncClient:
        from keepflow.store import access

        http = await super().__aenter__()
        if self.role is not None:
            access.add_user(self.db, self.name, PASSWORD, self.role)
            answer = await sign_in(http, self.name, PASSWORD)
            assert answer.status_code == 303, answer.text
        return http


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    """Fill in the sign-in form as a person would: its page first (the session and its token)."""
    form = await http.get("/signin")
    return await http.post("/signin", data={"name": name, "password": password, "next": "/",
                                            "csrf_token": csrf_of(form.text)})


def write_project(directory: Path, text: str, templates: dict[str, str]) -> Path:
    """`sequences.yaml` with `text` and the given templates (relative path: body) in `directory`."""
    for relative, body in templates.items():
        file = directory / "templates" / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(body, encoding="utf-8")
    path = directory / "sequences.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# A marketing tip on LINE that goes by SMS to a customer LINE cannot reach (`fallback:`), with its
# templates on both channels: the sequence preview, simulate and production's checks each read.
LINE_TIP_OR_SMS = """\
sequences:
  - id: tips
    category: marketing
    trigger: customer.created
    steps:
      - send: line
        template: tip
        fallback: sms
"""
LINE_TIP_TEMPLATES = {"line/tip.en.txt": "LINE tip for {{ customer.first_name }}", "sms/tip.en.txt": "SMS tip"}


# A run that waits 30 days for a delivery inside a branch: the continue-as-new tests flood it.
PATIENT = """
sequences:
  - id: patient
    category: marketing
    steps:
      - if: "customer.first_name == 'Nok'"
        then:
          - wait_for: order.delivered
            timeout: 30d
            on_timeout:
              - send: email
                template: note
                id: nudge
      - send: sms
        template: ping
"""


def event_signal(event_type: str, event_id: str | None = None) -> EventSignal:
    return EventSignal(id=event_id or str(uuid.uuid4()), type=event_type, occurred_at="2026-11-23T00:00:00+00:00")


async def flood(client: Client, workflow_id: str, count: int) -> None:
    """`count` order.updated events, four in flight, in rounds of 250 that the run catches up on.

    Paced, as events reaching one run are: the server hands a worker every signal that arrived
    while the previous workflow task ran, and a task holding thousands of them (about 0.5 ms each
    here) would run past the SDK's 2-second deadlock detector.
    """
    handle = client.get_workflow_handle(workflow_id)
    gate = asyncio.Semaphore(4)

    async def one(event_id: str) -> None:
        async with gate:
            await handle.signal("event", event_signal("order.updated", event_id))

    for start_at in range(0, count, 250):
        await asyncio.gather(*(one(f"upd-{n}") for n in range(start_at, min(start_at + 250, count))))
        heard = (await handle.query("status", result_type=RunStatus)).events_count
        assert heard == min(start_at + 250, count), heard
