"""`keepflow simulate`: what a sequence will really do to one customer, on the real engine.

The run is the production workflow and send activity on Temporal's time-skipping test server,
with the outbox provider and a throwaway SQLite store, so weeks pass in seconds while quiet
hours, the frequency cap, consent and branches behave as they will in production. A timeline
file scripts the store's events:

    - day 2: order.shipped
    - day 4: order.delivered
    - 6d12h: review.submitted          # any duration works too
    - do: notify_crm                   # a `do:` step's result, instead of running the activity
      result: {noted: true}

A `do:` activity runs on the throwaway store unless a sample result stands in for it (there or
with `--do`, keepflow/tools/sample_results.py): one that calls a CRM may not reach it from here.

What it prints comes from the runs' own histories: each message with its time (in the
customer's time zone), each hold and skip with its reason, each timeline event, each run's end.
"""

from __future__ import annotations

import json

import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, SecretStr, ValidationError
from ruamel.yaml import YAML
from sqlalchemy import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from keepflow.language.catalog import Catalog
from keepflow.language.durations import parse_duration
from keepflow.runtime.client import converter
from keepflow.runtime.events import CustomerIn, EventIn, OrderIn
from keepflow.runtime.payload_keys import new_payload_key
from keepflow.runtime.payloads import DoRequest, EventSignal, RunInput, RunStatus, SendRequest, SendResult
from keepflow.insights import rfm
from keepflow.runtime.registry import RESERVED
from keepflow.runtime.routing import rescore, store, with_scores, workflow_id
from keepflow.runtime.search_attributes import ensure_registered
from keepflow.runtime.starts import start_run
from keepflow.settings import Settings
from keepflow.store import Coupon, Database, Run, upgrade

_DAY = re.compile(r"^day\s+(\d+(?:\.\d+)?)$", re.IGNORECASE)


class SimulationError(Exception):
    """Bad input: said in a marketer's words, nothing was run."""


class TimelineEvent(BaseModel):
    after: timedelta
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    data: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    at: datetime
    run: str
    text: str
    # For a send's outcome: what was asked and what came of it (`keepflow demo` prints its own way).
    request: SendRequest | None = None
    result: SendResult | None = None


def read_timeline(path: Path | None) -> list[TimelineEvent]:
    """`- day 2: order.shipped` entries (or `- after: 2d` / `type:` / `data:` mappings)."""
    events = []
    for index, entry in _entries(path):
        try:
            if _is_result(entry):
                continue  # read_results' part
            if isinstance(entry, dict) and "type" in entry:
                events.append(TimelineEvent.model_validate({**entry, "after": _offset(str(entry.get("after", "0s")))}))
            elif isinstance(entry, dict) and len(entry) == 1:
                [(when, what)] = entry.items()
                events.append(TimelineEvent(after=_offset(str(when)), type=str(what)))
            else:
                raise ValueError("write it as `- day 2: order.shipped`")
        except (ValueError, ValidationError) as err:
            raise SimulationError(f"{path}: entry {index} ({entry!r}): {_first_error(err)}") from err
    return sorted(events, key=lambda e: e.after)


def read_results(path: Path | None) -> dict[str, Any]:
    """The `- do: NAME` / `result: {...}` entries of a timeline, by activity, not yet checked
    against what the activity returns (sample_results.checked_results does that)."""
    results: dict[str, Any] = {}
    for index, entry in _entries(path):
        if not _is_result(entry):
            continue
        if set(entry) != {"do", "result"} or not isinstance(entry["do"], str):
            raise SimulationError(f"{path}: entry {index} ({entry!r}): write a do: result as `- do: load_customer` "
                                  "with `result: {...}` on the next line, indented under it")
        results[entry["do"]] = entry["result"]
    return results


def _entries(path: Path | None) -> list[tuple[int, Any]]:
    if path is None:
        return []
    try:
        raw = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or []
    except Exception as err:  # ruamel's errors carry line and column in their text
        raise SimulationError(f"{path}: not valid YAML: {err}") from err
    if isinstance(raw, dict):
        raw = [{k: v} for k, v in raw.items()]
    return list(enumerate(raw if isinstance(raw, list) else [raw], start=1))


def _is_result(entry: Any) -> bool:
    return isinstance(entry, dict) and "do" in entry


def _offset(text: str) -> timedelta:
    match = _DAY.match(text.strip())
    if match:
        return timedelta(days=float(match.group(1)))
    try:
        return parse_duration(text.strip())
    except ValueError as err:
        raise ValueError(f"{text!r} is not a time: use `day 2` or a duration such as 2d12h") from err


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(err)


M = TypeVar("M", bound=BaseModel)


def read_json_model(path: Path, model: type[M], what: str) -> M:
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as err:
        raise SimulationError(f"{path}: not a valid {what}: {_first_error(err) if isinstance(err, ValidationError) else err}") from err


@dataclass
class Stage:
    """A throwaway engine: the production worker on a time-skipping server, a SQLite store and
    the outbox provider in a temporary folder. `simulate` and `keepflow demo` play events on it."""

    env: WorkflowEnvironment
    db: Database
    settings: Settings
    began: datetime  # the server's time when the stage was ready
    # Activities answered by a sample result instead of running.
    results: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def client(self) -> Client:
        return self.env.client

    async def sleep_until(self, when: datetime) -> None:
        """Skip the server's clock to `when`; every timer due by then fires on the way."""
        await _sleep_until(self.env, when)

    async def finish(self) -> list[Line]:
        """Let every run end (those started meanwhile too), then what each did, from its history."""
        # Runs started by the router or another run: the environment skips time by itself only
        # for handles its own start_workflow returned. Only the time-skipping environment has
        # this, and the base class it is typed as does not declare it.
        async with self.env.time_skipping_unlocked():  # type: ignore[attr-defined]
            for run in _runs_until_done(self.db):
                await _ended(self.client, run)
        lines: list[Line] = []
        for run in _runs(self.db):
            lines += await _history_lines(self.client, run, self.results)
        return lines


@asynccontextmanager
async def stage(catalog: Catalog, start_at: datetime | None = None,
                results: Mapping[str, dict[str, Any]] | None = None) -> AsyncIterator[Stage]:
    """A Stage whose clock starts at `start_at` (or now); removed with everything in it afterwards.
    `results`: sample results of activities, which then do not run."""
    from worker import build_worker  # the worker module sits at the project root, beside the CLI's callers

    folder = Path(tempfile.mkdtemp(prefix="keepflow-simulate-"))
    settings = Settings(data_dir=folder, sequences_path=catalog.path, templates_dir=catalog.templates_dir,
                        database_url=None, email_provider="outbox", sms_provider="outbox",
                        task_queue=f"simulate-{uuid.uuid4().hex[:8]}",
                        # Sealed as in production, with a key that lives and dies with the stage.
                        payload_keys=SecretStr(new_payload_key()))
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    server = Path(sys.executable).parent / "temporal-test-server"
    try:
        async with await WorkflowEnvironment.start_time_skipping(
                data_converter=converter(settings),
                test_server_existing_path=str(server) if server.exists() else None) as env:
            await ensure_registered(env.client, env.client.namespace)
            if start_at is not None:
                await _sleep_until(env, start_at)
            began = await env.get_current_time()
            async with build_worker(env.client, settings, db, task_queue=settings.task_queue, catalog=catalog,
                                    results=results):
                yield Stage(env, db, settings, began, dict(results or {}))
    finally:
        db.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def read_scores(text: str | None) -> dict[str, Any] | None:
    """`--rfm '{"segment": "champions"}'`: the fields checked against the values RFM can take."""
    if text is None:
        return None
    try:
        scores = json.loads(text)
    except json.JSONDecodeError as err:
        raise SimulationError(f"--rfm is not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(scores, dict):
        raise SimulationError('--rfm takes a JSON object, e.g. \'{"segment": "champions"}\'')
    allowed = {"segment": rfm.SEGMENTS, "level": rfm.LEVELS, "fit": rfm.FITS}
    for name, value in scores.items():
        if name in allowed and value not in allowed[name]:
            raise SimulationError(f"--rfm {name} {value!r} is not one RFM gives; one of: {', '.join(sorted(allowed[name]))}")
    return scores


async def simulate(catalog: Catalog, sequence_id: str, customer: CustomerIn, order: OrderIn | None,
                   timeline: list[TimelineEvent], start_at: datetime | None = None,
                   scores: dict[str, Any] | None = None,
                   results: Mapping[str, dict[str, Any]] | None = None) -> list[Line]:
    """Run the sequence for the customer on a time-skipping server; return what happened, in order.
    `scores`: RFM fields (`segment`, `level`, ...) that replace those the store computes from the order.
    `results`: sample results of `do:` activities by name (checked already), which then do not run."""
    if sequence_id not in catalog.sequences:
        raise SimulationError(f"no sequence {sequence_id!r}; sequences: {', '.join(catalog.sequences)}")
    sequence = catalog.sequences[sequence_id]
    if order is None and isinstance(sequence.trigger, str) and sequence.trigger.startswith("order."):
        # Whatever its key, each of its runs has the order its trigger is about, and its
        # templates may use it: without one the simulation would fail sends production never fails.
        raise SimulationError(f"{sequence_id} starts on {sequence.trigger}, so its runs have that order; "
                              "pass --order FILE.json")
    if isinstance(sequence.trigger, str):
        trigger_type = sequence.trigger
    else:  # the inactivity scan's event, or (started only by another sequence) a profile update
        trigger_type = "customer.inactive" if sequence.inactivity is not None else "customer.updated"
    async with stage(catalog, start_at, results) as on:
        began = on.began
        trigger = EventIn(id=f"simulate-{uuid.uuid4().hex[:8]}", type=trigger_type,
                          occurred_at=began, customer=customer, order=order)
        store(on.db, trigger, default_region=catalog.file.rules.default_region)
        if results and "create_coupon" in results:
            _keep_sample_coupon(on.db, results["create_coupon"], customer.id, began)
        if order is not None:
            rescore(on.db, customer.id)
        context = {**trigger.context(), "brand": catalog.file.brand}
        # As the router gives it: the scores the store holds now, with the ones asked for on top.
        context["customer"] = with_scores(on.db, context["customer"])
        context["customer"]["rfm"].update(scores or {})
        run_id = workflow_id(sequence, context)
        if run_id is None:
            raise SimulationError(f"{sequence_id} is keyed on {sequence.key!r}, which this customer and order do not "
                                  "provide; pass --order FILE.json")
        first = RunInput(snapshot=catalog.snapshot(sequence_id), key=run_id.split("/", 1)[1], context=context)
        await start_run(on.client, first, on.settings.task_queue, db=on.db, started_at=began)
        handle = on.client.get_workflow_handle(run_id, result_type=RunStatus)
        lines = [Line(began, run_id, f"start {sequence_id} for customer {customer.id}")]
        for event in timeline:
            await on.sleep_until(began + event.after)
            signal = EventSignal(id=f"timeline-{uuid.uuid4().hex[:8]}", type=event.type,
                                 occurred_at=(began + event.after).isoformat(), data=event.data)
            lines.append(Line(began + event.after, "timeline", f"event {event.type}"))
            for listening in _runs(on.db):
                if event.type in catalog.sequences[listening.split("/", 1)[0]].events_heard():
                    await _signal(on.client, listening, signal)
        lines += await on.finish()
        await _ended(on.client, handle.id)
    return sorted(lines, key=lambda line: line.at)


def _keep_sample_coupon(db: Database, coupon: dict[str, Any], customer_id: str, now: datetime) -> None:
    """Store a sample coupon as create_coupon would: a message offering a code the store lacks is
    dropped, and the sample stands in for the activity, not for the coupons table."""
    with db.session() as session:
        session.add(Coupon(code=coupon["code"], key=f"simulate-sample:{coupon['code']}", customer_id=customer_id,
                           percent=coupon["percent"], created_at=now,
                           # Its days are fixed by the sample, not started by the first offer.
                           expires_at=datetime.fromisoformat(coupon["expires_at"]), valid_for_seconds=None))


async def _ended(client: Client, run_id: str) -> None:
    """Wait for the run to end; one that failed says why in its history, which the output shows."""
    try:
        await client.get_workflow_handle(run_id, result_type=RunStatus).result()
    except WorkflowFailureError:
        pass


async def _sleep_until(env: WorkflowEnvironment, when: datetime) -> None:
    now = await env.get_current_time()
    if when > now:
        await env.sleep(when - now)


async def _signal(client: Client, run_id: str, signal: EventSignal) -> None:
    from temporalio.service import RPCError

    try:
        await client.get_workflow_handle(run_id).signal("event", signal)
    except RPCError:
        pass  # that run has ended: nothing listens any more


def _runs(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(Run.id).order_by(Run.started_at)))


def _runs_until_done(db: Database):
    """Every run, including those started while we wait for earlier ones (`start:` steps)."""
    seen: set[str] = set()
    while True:
        pending = [r for r in _runs(db) if r not in seen]
        if not pending:
            return
        for run in pending:
            seen.add(run)
            yield run


async def _history_lines(client: Client, run_id: str, samples: Mapping[str, Any]) -> list[Line]:
    lines: list[Line] = []
    requests: dict[int, SendRequest] = {}
    # `do:` activities by their scheduled event: name and step.
    done: dict[int, tuple[str, str]] = {}
    unfinished: list[str] = []
    async for event in client.get_workflow_handle(run_id).fetch_history_events():
        at = event.event_time.ToDatetime(timezone.utc)
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled = event.activity_task_scheduled_event_attributes
            name = scheduled.activity_type.name
            if name == "send_message":
                [requests[event.event_id]] = await client.data_converter.decode(scheduled.input.payloads, [SendRequest])
            elif name not in RESERVED:  # the engine's own; any other is a `do:` step's
                [asked] = await client.data_converter.decode(scheduled.input.payloads, [DoRequest])
                done[event.event_id] = (name, asked.step)
                unfinished.append(name)
        elif event.HasField("activity_task_completed_event_attributes"):
            completed = event.activity_task_completed_event_attributes
            request = requests.get(completed.scheduled_event_id)
            if request is not None:
                [result] = await client.data_converter.decode(completed.result.payloads, [SendResult])
                lines.append(Line(at, run_id, _describe(request, result), request, result))
            elif completed.scheduled_event_id in done:
                name, step = done[completed.scheduled_event_id]
                unfinished.remove(name)
                [returned] = await client.data_converter.decode(completed.result.payloads, [dict])
                source = f"the sample given for {name}" if name in samples else "ran on the simulated store"
                lines.append(Line(at, run_id, f"do {name} (step {step}) → {json.dumps(returned)} ({source})"))
        elif event.HasField("workflow_execution_completed_event_attributes"):
            [status] = await client.data_converter.decode(
                event.workflow_execution_completed_event_attributes.result.payloads, [RunStatus])
            branches = [f"{s.path} → {s.outcome}" for s in status.steps_done if s.kind in ("if", "split")]
            lines.append(Line(at, run_id, f"end: {status.exit_reason}"
                              + (f" (branches taken: {', '.join(branches)})" if branches else "")))
        elif event.HasField("workflow_execution_failed_event_attributes"):
            # Failure messages are sealed like payloads: decoded, with the cause that says what went wrong.
            error: BaseException | None = await client.data_converter.decode_failure(
                event.workflow_execution_failed_event_attributes.failure)
            reasons = []
            while error is not None:
                reasons.append(getattr(error, "message", None) or str(error))
                error = error.__cause__
            reason = ": ".join(dict.fromkeys(r for r in reasons if r))
            # An activity that cannot work here (its CRM is out of reach) need not stop the simulation.
            hint = "".join(f"; to go on without it, give a result: --do {name}='{{...}}' or a `- do: {name}` "
                           "entry in the timeline" for name in dict.fromkeys(unfinished))
            lines.append(Line(at, run_id, f"failed: {reason}{hint}"))
    return lines


def _describe(request: SendRequest, result: SendResult) -> str:
    what = f"{request.channel} {request.template} ({request.category}, step {request.step})"
    if result.status == "sent":
        # On the step's `fallback:`, the reason says so: "on sms (fallback: no LINE account)".
        return f"{what}: sent{f' {result.reason}' if result.channel else ''}"
    if result.status == "deferred":
        return f"{what}: held{f' on {result.channel}' if result.channel else ''}, {result.reason}"
    return f"{what}: {result.status}{f', {result.reason}' if result.reason else ''}"


def format_lines(lines: list[Line], zone: str | None) -> list[str]:
    tz = ZoneInfo(zone) if zone else timezone.utc
    if not lines:
        return []
    began = lines[0].at
    out = []
    for line in lines:
        day = (line.at - began) / timedelta(days=1)
        local = line.at.astimezone(tz)
        run = line.run.split("/", 1)[0]
        out.append(f"day {day:5.2f}  {local:%a %d %b %H:%M}  {run:<15} {line.text}")
    return out
