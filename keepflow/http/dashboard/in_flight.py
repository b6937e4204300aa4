"""Runs in flight per step: which runs are open, from Temporal; where each one waits, from the store.

Temporal lists the open runs (one call per thousand, at most LIST_LIMIT a page); the store says,
for those runs, the definition each started on (`runs`) and the latest message each recorded
(`messages`), in two statements per STORE_CHUNK runs. A run rests only where it waits: a `wait`, a
`wait_for`, or a send held by quiet hours or the frequency cap. So a run whose latest message is
held (or still going out) is at that send; otherwise it is at the first wait after that message
(after nothing, for a run with no message yet), walking its own definition. Runs do not report
where they wait any more: telling Temporal cost a billed Action per wait, and a patch marker per run.

What the store cannot tell, and the page says so:
- an event a `wait_for` took, or a `wait` that ended, leaves no row: a run that passed such a wait
  and rests at another before its next send is counted at the first (`passes_on` names those steps);
- where an `if` or a `split` reached since the latest message leads to different waits, the run
  is counted at the `if` or `split` itself, as "somewhere after it" (a branch that leads to a send
  instead only holds a run for the moment before that send's row is written, so it is not counted);
- a run between its last step and its end, or on a definition this process cannot read, is
  counted on a row of its own.
Runs started before this, which still set the `KeepflowStep` search attribute as they settle, are
counted where the attribute says. Where Temporal cannot list (the time-skipping test server has no
visibility store, Temporal down or slow), the page says why instead of showing numbers: it never
fails because of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import assert_never

from sqlalchemy import func, select
from temporalio.client import Client, WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from keepflow.language.catalog import Catalog
from keepflow.language.dsl import (
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    Sequence,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
    child_branches,
    step_path,
)
from keepflow.language.problems import InvalidSequences
from keepflow.runtime import deployments
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.search_attributes import STEP
from keepflow.store import Database, Message, Run

log = logging.getLogger("keepflow.http.dashboard")

# The whole of Temporal's part (connecting included) may take this long before the page gives up on it.
TIMEOUT = 2.0
# Open runs placed per page: ten list calls. Beyond, the rest are counted (one call per sequence)
# and shown as not placed.
LIST_LIMIT = 10_000
# Run ids per statement: within SQLite's limit on bound parameters (32,766).
STORE_CHUNK = 5_000
# Statuses of a message not out yet that still may go: the run is at that send.
WAITING = ("pending", "deferred", "sending")
# Where a run is counted besides its steps.
FINISHING = "finishing"  # past its last step, ending
UNPLACED = "unplaced"  # its definition is not readable here, or the page listed no more runs


@dataclass
class InFlight:
    """Open runs per (sequence, place); `note` instead when they could not be counted. A place is a
    step path, or FINISHING or UNPLACED."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    note: str | None = None
    # Open runs per sequence started since the page's period began (whatever step they are at).
    started_since: dict[str, int] = field(default_factory=dict)
    # Places that are an `if` or a `split`: runs somewhere after it, not known exactly where.
    uncertain: set[tuple[str, str]] = field(default_factory=set)
    # Why runs are unplaced, per sequence.
    unplaced_why: dict[str, str] = field(default_factory=dict)

    def at(self, sequence_id: str, path: str) -> int | None:
        return None if self.note else self.counts.get((sequence_id, path), 0)

    def total(self, sequence_id: str) -> int | None:
        return None if self.note else sum(n for (sid, _), n in self.counts.items() if sid == sequence_id)

    def open_since(self, sequence_id: str) -> int | None:
        return None if self.note or sequence_id not in self.started_since else self.started_since[sequence_id]

    def others(self, sequence_id: str, shown: Iterable[str]) -> list[tuple[str, str, int]]:
        """(place, what it means, runs) for the places of `sequence_id` not among the `shown` steps."""
        shown = set(shown)
        rows = []
        for (sid, place), n in sorted(self.counts.items()):
            if sid != sequence_id or place in shown or not n:
                continue
            if place == FINISHING:
                rows.append((place, "past their last step, ending", n))
            elif place == UNPLACED:
                rows.append((place, self.unplaced_why.get(sid, "not placed"), n))
            elif (sid, place) in self.uncertain:
                rows.append((place, "somewhere after this step: its branches lead to different waits, and no "
                                    "message says which one the run took yet", n))
            else:
                rows.append((place, "a step only an older version of the sequence has", n))
        return rows


def settles(step: Step) -> bool:
    """Whether a run can be found waiting at `step`."""
    match step:
        case SendStep() | WaitStep() | WaitForStep():
            return True
        case IfStep() | SplitStep() | DoStep() | StartStep() | ExitStep():
            return False
        case _:
            assert_never(step)


def settling_steps(sequence: Sequence) -> list[str]:
    """Paths of the steps a run of `sequence` can be waiting at."""
    return [path for path, step in sequence.walk() if settles(step)]


# -- where a run waits, from its latest message ------------------------------------------------

# What walking on from a point finds: ("rest", path) a wait; ("uncertain", path) an `if`/`split`
# whose branches lead to different waits; ("moving", path) the send the run goes on to (a moment:
# its row is written as it begins); ("finishing", "") the end of the run.
_Found = tuple[str, str]
_Frame = tuple[list[Step], str, int]  # a list of steps, its path prefix, the index to go on from


def _walk(frames: list[_Frame]) -> _Found:
    """The first place a run going on from the innermost frame comes to."""
    if not frames:
        return ("finishing", "")
    steps, prefix, start = frames[-1]
    for index in range(start, len(steps)):
        step = steps[index]
        path = step_path(prefix, index, step)
        match step:
            case WaitStep() | WaitForStep():
                return ("rest", path)
            case SendStep():
                return ("moving", path)
            case DoStep() | StartStep():
                continue
            case ExitStep():
                return ("finishing", "")
            case IfStep() | SplitStep():
                after = [*frames[:-1], (steps, prefix, index + 1)]
                return _merge(path, [_walk([*after, (children, f"{path}.{branch}", 0)])
                                     for branch, children in child_branches(step)])
            case _:
                assert_never(step)
    return _walk(frames[:-1])


def _merge(path: str, found: list[_Found]) -> _Found:
    """What the branches of the `if` or `split` at `path` lead to, as one place."""
    rests = {f for f in found if f[0] in ("rest", "uncertain")}
    if rests:
        return rests.pop() if len(rests) == 1 else ("uncertain", path)
    moving = {f for f in found if f[0] == "moving"}
    if moving:
        return moving.pop() if len(moving) == 1 else ("moving", path)
    return ("finishing", "")


def _frames_after(sequence: Sequence, path: str) -> list[_Frame] | None:
    """The frames to go on from just after the step at `path`; None if the definition has no such step."""
    frames: list[_Frame] = []
    steps, prefix = sequence.steps, ""
    segments = path.split(".")
    for n in range(0, len(segments), 2):
        wanted = f"{prefix}.{segments[n]}" if prefix else segments[n]
        index = next((i for i, s in enumerate(steps) if step_path(prefix, i, s) == wanted), None)
        if index is None:
            return None
        frames.append((steps, prefix, index + 1))
        if n + 1 == len(segments):
            return frames
        children = dict(child_branches(steps[index])).get(segments[n + 1])
        if children is None:
            return None
        steps, prefix = children, f"{wanted}.{segments[n + 1]}"
    return None


def place(sequence: Sequence, latest: tuple[str, str] | None) -> tuple[str, bool] | None:
    """Where a run of `sequence` whose latest message is `latest` (step, status) waits, and whether
    exactly; None when the definition has no such step."""
    if latest is not None and latest[1] in WAITING:
        return (latest[0], True)
    frames = [(sequence.steps, "", 0)] if latest is None else _frames_after(sequence, latest[0])
    if frames is None:
        return None
    kind, path = _walk(frames)
    if kind == "finishing":
        return (FINISHING, True)
    return (path, kind != "uncertain" and not (kind == "moving" and path not in _sends(sequence)))


def _sends(sequence: Sequence) -> set[str]:
    return {path for path, step in sequence.walk() if isinstance(step, SendStep)}


def passes_on(sequence: Sequence) -> dict[str, list[str]]:
    """Per wait, the waits a run may go on to from it without a message in between: the runs
    counted at the first may be at these already."""
    out: dict[str, list[str]] = {}
    for path, step in sequence.walk():
        if not isinstance(step, WaitStep | WaitForStep):
            continue
        frames = _frames_after(sequence, path) or []
        found = [_walk(frames)]
        if isinstance(step, WaitForStep) and isinstance(step.on_timeout, list):
            found.append(_walk([*frames, (step.on_timeout, f"{path}.on_timeout", 0)]))
        later = sorted({p for kind, p in found if kind in ("rest", "uncertain")})
        if later:
            out[path] = later
    return out


# -- the definitions runs started on -------------------------------------------------------------

Definitions = dict[tuple[str, str], Sequence]  # (sequence id, run's definition hash) -> its sequence
# Deployed versions never change: each is read once per process.
_versions: dict[tuple[str, int], Definitions] = {}


def _of(catalog: Catalog) -> Definitions:
    """Every (sequence, hash) a run started on `catalog` may carry: a run started by a `start:` step
    carries its starter's hash."""
    out: Definitions = {}
    for sequence_id in catalog.sequences:
        snapshot = catalog.snapshot(sequence_id)
        out.update({(sid, snapshot.hash): s for sid, s in snapshot.sequences.items()})
    return out


def definitions(db: Database, catalog: Catalog, wanted: set[tuple[str, str]]) -> Definitions:
    """The sequences the runs started on, for the (sequence id, definition hash) pairs `wanted`;
    those of versions this process cannot load are left out."""
    if not wanted:
        return {}
    found = {k: s for k, s in _of(catalog).items() if k in wanted}
    missing: list[tuple[str, str | None]] = [pair for pair in wanted if pair not in found]
    for number in sorted(set(deployments.versions_of(db, missing).values())):
        key = (str(catalog.path), number)
        if key not in _versions:
            version = deployments.version(db, number)
            try:
                _versions[key] = _of(load_catalog(catalog.path, catalog.templates_dir, version.source)) if version else {}
            except InvalidSequences as err:
                log.info("runs in flight: version %s does not load here: %s", number, err)
                _versions[key] = {}
        found.update({k: s for k, s in _versions[key].items() if k in wanted})
    return found


# -- counting ----------------------------------------------------------------------------------


def open_since(sequence_id: str, since: datetime) -> str:
    """The visibility query for the open runs of `sequence_id` started at or after `since`. A run
    continued as new counts from its continuation's start (the callers clamp to what the store
    says entered)."""
    return (f'{open_runs(sequence_id)} '
            f'AND StartTime >= "{since.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"')


def open_runs(sequence_id: str | None = None) -> str:
    """The visibility query for the open runs (of `sequence_id`)."""
    query = 'WorkflowType="sequence" AND ExecutionStatus="Running"'
    return f'{query} AND WorkflowId STARTS_WITH "{sequence_id}/"' if sequence_id else query


@dataclass
class _Listed:
    runs: list[WorkflowExecution]
    started_since: list[int]
    # Open runs per sequence when the list stopped at LIST_LIMIT; None when it listed them all.
    totals: list[int] | None


def latest_messages(db: Database, run_ids: list[str]) -> tuple[dict[str, str | None], dict[str, tuple[str, str]]]:
    """For the runs `run_ids`: each one's definition hash (runs with a row), and its latest message
    (step, status), through the primary key and the workflow id index."""
    hashes: dict[str, str | None] = {}
    latest: dict[str, tuple[str, str]] = {}
    with db.session() as session:
        for at in range(0, len(run_ids), STORE_CHUNK):
            chunk = run_ids[at:at + STORE_CHUNK]
            hashes.update(session.execute(select(Run.id, Run.definition_hash).where(Run.id.in_(chunk))).all())
            newest = select(func.max(Message.id)).where(Message.workflow_id.in_(chunk)).group_by(Message.workflow_id)
            latest.update((wid, (step, status)) for wid, step, status in session.execute(
                select(Message.workflow_id, Message.step, Message.status).where(Message.id.in_(newest))).all())
    return hashes, latest


async def count_waiting(client: Callable[[], Awaitable[Client]], db: Database, catalog: Catalog,
                        sequences: Iterable[Sequence], timeout: float = TIMEOUT,
                        since: datetime | None = None) -> InFlight:
    """Place every open run of `sequences`, Temporal's part within `timeout`; with `since`, also
    count each sequence's open runs started since then."""
    sequences = list(sequences)
    if not sequences:
        return InFlight()
    ids = {s.id for s in sequences}
    listing = open_runs(sequences[0].id if len(sequences) == 1 else None)

    async def ask() -> _Listed:
        temporal = await client()
        rpc_timeout = timedelta(seconds=timeout)
        async def listed() -> list[WorkflowExecution]:
            return [run async for run in temporal.list_workflows(listing, limit=LIST_LIMIT, rpc_timeout=rpc_timeout)]

        runs, counted = await asyncio.gather(listed(), asyncio.gather(
            *(temporal.count_workflows(open_since(s.id, since), rpc_timeout=rpc_timeout)
              for s in sequences if since is not None)))
        totals = None
        if len(runs) >= LIST_LIMIT:  # more than a page places: the rest are counted
            totals = [a.count for a in await asyncio.gather(
                *(temporal.count_workflows(open_runs(s.id), rpc_timeout=rpc_timeout) for s in sequences))]
        return _Listed([run for run in runs if run.id.split("/", 1)[0] in ids], [a.count for a in counted], totals)

    try:
        listed = await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        return InFlight(note=f"Temporal did not list the runs in flight within {timeout:g} s; reload to try again.")
    except RPCError as err:
        log.info("runs in flight not listed: %s %s", err.status.name, err.message)
        if err.status == RPCStatusCode.UNIMPLEMENTED:
            return InFlight(note="This Temporal server cannot list workflows (it has no visibility store, as "
                                 "Temporal's time-skipping test server), so runs in flight per step are not shown.")
        return InFlight(note=f"Temporal could not list the runs in flight ({err.status.name}: {err.message}).")
    except Exception as err:  # unreachable, refused, ...: the rest of the page still stands
        log.info("runs in flight not listed: %r", err)
        return InFlight(note=f"Temporal could not be reached to list the runs in flight ({type(err).__name__}).")

    found = InFlight(started_since={s.id: n for s, n in zip(sequences, listed.started_since)} if since else {})
    by_attribute = {run.id: run.typed_search_attributes.get(STEP) for run in listed.runs}
    unreported = [run for run in listed.runs if not by_attribute[run.id]]
    if not unreported:
        hashes: dict[str, str | None] = {}
        latest: dict[str, tuple[str, str]] = {}
    else:
        hashes, latest = await asyncio.to_thread(latest_messages, db, [run.id for run in unreported])
    for run in unreported:  # no row yet (the router notes it just after starting it): the memo says
        if not hashes.get(run.id):
            hashes[run.id] = await run.memo_value("definition_hash", None)
    wanted = {(run.id.split("/", 1)[0], digest) for run in unreported if (digest := hashes.get(run.id))}
    known = await asyncio.to_thread(definitions, db, catalog, wanted) if wanted else {}

    def count(sequence_id: str, where: str) -> None:
        found.counts[(sequence_id, where)] = found.counts.get((sequence_id, where), 0) + 1

    for run in listed.runs:
        sequence_id = run.id.split("/", 1)[0]
        attribute = by_attribute[run.id]
        if attribute:  # a run from before: where it said it settled
            count(sequence_id, attribute.split("/", 1)[1])
            continue
        sequence = known.get((sequence_id, hashes.get(run.id) or ""))
        at = place(sequence, latest.get(run.id)) if sequence else None
        if at is None:
            count(sequence_id, UNPLACED)
            found.unplaced_why[sequence_id] = "on a definition this page cannot read (not a deployed version it can load)"
            continue
        count(sequence_id, at[0])
        if not at[1]:
            found.uncertain.add((sequence_id, at[0]))
    if listed.totals is not None:
        for s, total in zip(sequences, listed.totals):
            rest = total - sum(n for (sid, _), n in found.counts.items() if sid == s.id)
            if rest > 0:
                found.counts[(s.id, UNPLACED)] = found.counts.get((s.id, UNPLACED), 0) + rest
                found.unplaced_why[s.id] = f"not placed: a page places the first {LIST_LIMIT:,} open runs"
    return found
