"""`keepflow impact`: which runs in flight an edit of sequences.yaml will not reach.

A run interprets the snapshot it started with (its hash travels with it), so after an edit the
runs already waiting keep the old steps. This asks Temporal which runs are open, asks each for
its status (`definition_hash`, `current_step`), and counts, per sequence whose definition changed,
how many runs sit at each step.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from keepflow.language.catalog import Catalog
from keepflow.runtime.payloads import RunStatus

RUNNING = 'WorkflowType="sequence" AND ExecutionStatus="Running"'


@dataclass(frozen=True)
class StepImpact:
    sequence_id: str
    step: str  # "(starting)" before the first step
    runs: int
    # False when the sequence is gone from the file: its runs still finish the old way.
    still_defined: bool


@dataclass(frozen=True)
class Impact:
    rows: list[StepImpact]
    runs_checked: int
    unchanged: int


class VisibilityUnavailable(Exception):
    """This Temporal cannot list runs (the time-skipping test server has no visibility store)."""


async def running_run_ids(client: Client) -> list[str]:
    """Open sequence runs, from Temporal's visibility."""
    try:
        return [w.id async for w in client.list_workflows(RUNNING)]
    except RPCError as err:
        if err.status == RPCStatusCode.UNIMPLEMENTED:
            raise VisibilityUnavailable(str(err)) from err
        raise


async def runs_in_flight(client: Client, fallback: Callable[[], list[str]]) -> tuple[list[str], str]:
    """Run ids from visibility, or from `fallback` (the `runs` table) where this Temporal cannot
    list them; with where they came from, to tell the marketer."""
    try:
        return await running_run_ids(client), "Temporal's list of running workflows"
    except VisibilityUnavailable:
        return fallback(), "the runs table (this Temporal server cannot list workflows)"


async def compute_impact(client: Client, catalog: Catalog, run_ids: Iterable[str] | None = None) -> Impact:
    """Runs whose definition differs from `catalog`, counted per sequence and current step.

    `run_ids` (e.g. from the `runs` table) replaces the visibility listing; closed runs in it
    are skipped.
    """
    ids = list(run_ids) if run_ids is not None else await running_run_ids(client)
    statuses = await asyncio.gather(*(_status(client, run_id) for run_id in ids))
    # A run started by a `start:` step carries its starter's snapshot and hash, so a run is current
    # when its hash is that of any current snapshot holding its sequence.
    current: dict[str, set[str]] = {}
    for root in catalog.sequences:
        snapshot = catalog.snapshot(root)
        for seq_id in snapshot.sequences:
            current.setdefault(seq_id, set()).add(snapshot.hash)
    counts: Counter[tuple[str, str]] = Counter()
    checked = unchanged = 0
    for status in statuses:
        if status is None:
            continue
        checked += 1
        if status.definition_hash in current.get(status.sequence_id, ()):
            unchanged += 1
            continue
        counts[(status.sequence_id, status.current_step or "(starting)")] += 1
    rows = [StepImpact(seq, step, n, seq in catalog.sequences) for (seq, step), n in sorted(counts.items())]
    return Impact(rows, checked, unchanged)


async def _status(client: Client, run_id: str) -> RunStatus | None:
    handle = client.get_workflow_handle(run_id)
    try:
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return None
        return await handle.query("status", result_type=RunStatus)
    except RPCError:
        return None  # gone, or finished between the listing and the question


def print_impact(impact: Impact, deploying: bool = False) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    console = Console()
    if not impact.rows:
        console.print(f"{impact.runs_checked} run(s) in flight; none is affected: every one already runs the "
                      "current definition of its sequence.")
        return
    table = Table("sequence", "step the run is at", Column("runs", justify="right"),
                  title="Runs in flight that will keep their old definition")
    for row in impact.rows:
        sequence = row.sequence_id if row.still_defined else f"{row.sequence_id} (removed from the file)"
        table.add_row(sequence, row.step, str(row.runs))
    console.print(table)
    affected = sum(r.runs for r in impact.rows)
    later = ("New runs start on the edited file once it is deployed."
             if deploying else "New runs start on the edited file once it is deployed (`keepflow deploy`; "
             "`keepflow dev` deploys it when you save); until then they too start on the live version.")
    console.print(f"{affected} of {impact.runs_checked} run(s) in flight started before the edit and finish the "
                  f"old way. {later}")


def run_impact(settings, from_runs_table: bool = False) -> int:
    """`keepflow impact`: 0 when it could look, 1 when the file or Temporal cannot be read."""
    from keepflow.language.problems import InvalidSequences
    from keepflow.runtime.client import TemporalUnreachable, connect
    from keepflow.runtime.registry import load_catalog

    try:
        catalog = load_catalog(settings.sequences_path, settings.templates_dir)
    except InvalidSequences as invalid:
        print(invalid)
        print("fix the problems above first (`keepflow validate` checks again)")
        return 1

    async def main() -> Impact:
        client = await connect(settings)
        if from_runs_table:
            run_ids, source = _runs_table_ids(settings), "the runs table"
        else:
            run_ids, source = await runs_in_flight(client, lambda: _runs_table_ids(settings))
        print(f"runs taken from {source}")
        return await compute_impact(client, catalog, run_ids)

    try:
        impact = asyncio.run(asyncio.wait_for(main(), timeout=300))
    except TemporalUnreachable as err:
        print(f"{err}. Is `keepflow dev` or the Temporal server running, and is TEMPORAL_ADDRESS right?")
        return 1
    except (RuntimeError, RPCError, OSError, asyncio.TimeoutError) as err:
        print(f"Temporal failed while listing runs: {err}")
        return 1
    print_impact(impact)
    return 0


def _runs_table_ids(settings) -> list[str]:
    from keepflow.store import Database

    db = Database(settings.resolved_database_url)
    try:
        return stored_run_ids(db)
    finally:
        db.dispose()


def stored_run_ids(db) -> list[str]:
    """Every run the `runs` table knows, for a Temporal that cannot list its runs."""
    from sqlalchemy import select

    from keepflow.store import Run

    with db.session() as session:
        return list(session.scalars(select(Run.id)))
