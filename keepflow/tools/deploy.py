"""`keepflow deploy` and `keepflow versions`: make an edit of sequences.yaml live, safely, and see
every version that was.

A deploy checks the file exactly as validate does (nothing changes when it has an error), says
which sequences changed and which runs in flight keep their old definition, then records the text
as a new version. The running app, dashboard and workers switch to it within a second
(keepflow/runtime/deployments.py). `keepflow dev` does the same whenever the file is saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client
from temporalio.service import RPCError

from keepflow.language.catalog import Catalog
from keepflow.language.problems import Problem
from keepflow.runtime import deployments
from keepflow.runtime.client import TemporalUnreachable, connect
from keepflow.runtime.deployments import Version
from keepflow.runtime.registry import check_catalog
from keepflow.settings import Settings
from keepflow.store import Database, upgrade
from keepflow.tools.impact import Impact, compute_impact, print_impact, runs_in_flight, stored_run_ids

log = logging.getLogger("keepflow.tools.deploy")

# Asking Temporal about every open run can take a while on a big shop; a deploy does not wait longer.
IMPACT_WITHIN = 60.0


@dataclass
class Outcome:
    problems: list[Problem]
    source_hash: str  # of the text deployed
    catalog: Catalog | None = None
    live: Version | None = None  # what was live before
    deployed: Version | None = None  # set when a new version was recorded
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    impact: Impact | None = None
    impact_unknown: str | None = None  # why the runs in flight could not be counted

    @property
    def valid(self) -> bool:
        return self.catalog is not None

    @property
    def already_live(self) -> bool:
        return self.valid and self.live is not None and self.live.hash == self.source_hash


async def deploy(settings: Settings, db: Database, source: str, origin: str, *, client: Client | None = None,
                 apply: bool = True, impact: bool = True) -> Outcome:
    """Check `source` as the sequences file; unless it has an error (or `apply` is off), make it live."""
    path, templates = settings.sequences_path, settings.templates_dir
    catalog, problems = await asyncio.to_thread(check_catalog, path, templates, source)
    outcome = Outcome(problems, deployments.text_hash(source), catalog)
    outcome.live = await asyncio.to_thread(deployments.live, db)
    if catalog is None:
        return outcome
    if outcome.already_live:
        return outcome
    before = await asyncio.to_thread(deployments.sequence_hashes, db, outcome.live.number) if outcome.live else {}
    now = {seq: catalog.snapshot(seq).hash for seq in catalog.sequences}
    outcome.added = sorted(now.keys() - before.keys())
    outcome.removed = sorted(before.keys() - now.keys())
    outcome.changed = sorted(seq for seq in now.keys() & before.keys() if now[seq] != before[seq])
    if impact and (outcome.changed or outcome.removed):
        outcome.impact, outcome.impact_unknown = await _impact(settings, db, catalog, client)
    if apply:
        version, new = await asyncio.to_thread(deployments.record, db, catalog, source, origin)
        outcome.deployed = version if new else None
    return outcome


async def _impact(settings: Settings, db: Database, catalog: Catalog, client: Client | None) -> tuple[Impact | None, str | None]:
    try:
        async def count() -> Impact:
            nonlocal client
            client = client or await connect(settings)
            run_ids, _ = await runs_in_flight(client, lambda: stored_run_ids(db))
            return await compute_impact(client, catalog, run_ids)
        return await asyncio.wait_for(count(), IMPACT_WITHIN), None
    except TemporalUnreachable as err:
        return None, f"Temporal cannot be reached ({err})"
    except (RuntimeError, RPCError, OSError, asyncio.TimeoutError, ValueError) as err:
        # ValueError: a run's answer sealed with a payload key this command was not given.
        return None, f"Temporal failed while listing runs ({err or err.__class__.__name__})"


def describe(outcome: Outcome) -> list[str]:
    """What changed, in lines for a person (the impact table is printed apart)."""
    lines = []
    for label, names in (("new", outcome.added), ("changed", outcome.changed), ("removed", outcome.removed)):
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    if not lines:
        lines.append("no sequence's steps changed (comments, layout or brand only)")
    if outcome.impact_unknown:
        lines.append(f"runs in flight not counted: {outcome.impact_unknown}; they keep the definition they "
                     "started with either way")
    return lines


def run_deploy(settings: Settings, path: Path | None, check_only: bool) -> int:
    """`keepflow deploy`: 0 when the file is live (or would be, with --check), 1 when it is not."""
    path = Path(path or settings.sequences_path)
    settings = settings.model_copy(update={"sequences_path": path})
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as err:
        print(f"cannot read {path}: {err.strerror or err}", file=sys.stderr)
        return 1
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        outcome = asyncio.run(deploy(settings, db, source, "keepflow deploy", apply=not check_only))
    finally:
        db.dispose()
    for problem in outcome.problems:
        print(problem.format(), file=sys.stderr)
    live = outcome.live.label if outcome.live else "nothing"
    if not outcome.valid:
        print(f"{path}: not deployed: fix the problems above (`keepflow validate` checks again); "
              f"{live} stays live", file=sys.stderr)
        return 1
    if outcome.already_live:
        assert outcome.live is not None
        print(f"{path} is already live as {outcome.live.label}: nothing to deploy")
        return 0
    for line in describe(outcome):
        print(line)
    if outcome.impact is not None:
        print_impact(outcome.impact, deploying=True)
    if check_only:
        print(f"checked, not deployed (--check): {live} stays live")
        return 0
    assert outcome.deployed is not None
    added, removed = outcome.deployed.changed_lines
    print(f"deployed {path} as {outcome.deployed.label} (+{added} -{removed} lines against {live}): the running "
          "app, dashboard and workers switch to it within seconds; new runs start on it")
    return 0


def run_versions(settings: Settings, show: int | None) -> int:
    """`keepflow versions`: the deployed versions, or one version's diff and text."""
    from rich.console import Console
    from rich.table import Column, Table

    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        if show is not None:
            chosen = deployments.version(db, show)
            if chosen is None:
                print(f"no version v{show}: `keepflow versions` lists them", file=sys.stderr)
                return 1
            print(f"{chosen.label}  {chosen.hash[:12]}  deployed {chosen.deployed_at:%Y-%m-%d %H:%M:%S} UTC by {chosen.origin}")
            sys.stdout.write(chosen.diff or "(the first version: no diff)\n")
            return 0
        kept = deployments.versions(db)
    finally:
        db.dispose()
    if not kept:
        print("nothing deployed yet: `keepflow deploy` (or starting `keepflow dev` or `keepflow serve`) deploys the file")
        return 0
    table = Table("version", "hash", "deployed (UTC)", "by", Column("lines", justify="right"),
                  title="Deployed versions of sequences.yaml (newest first; the first row is live)")
    for kept_version in kept:
        added, removed = kept_version.changed_lines
        table.add_row(kept_version.label, kept_version.hash[:12], f"{kept_version.deployed_at:%Y-%m-%d %H:%M:%S}",
                      kept_version.origin, f"+{added} -{removed}")
    Console().print(table)
    print("`keepflow versions --show N` prints a version's diff")
    return 0


async def deploy_on_save(settings: Settings, db: Database, stop: asyncio.Event, every: float = 1.0) -> None:
    """`keepflow dev`: deploy the sequences file each time it is saved with a change, until `stop`."""
    path = settings.sequences_path
    client: Client | None = None
    seen = _stamp(path)
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        stamp = _stamp(path)
        if stamp == seen:
            continue
        seen = stamp
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            log.error("cannot read %s (%s): the live version keeps running", path, err)
            continue
        if client is None:
            with contextlib.suppress(TemporalUnreachable):
                client = await connect(settings)
        outcome = await deploy(settings, db, source, "keepflow dev (file saved)", client=client)
        if not outcome.valid:
            for problem in outcome.problems:
                log.error("%s", problem.format())
            log.error("%s not deployed: %s keeps running; fix it and save again", path,
                      outcome.live.label if outcome.live else "the last version")
            continue
        if outcome.deployed is None:
            continue  # saved without a change
        for problem in outcome.problems:
            log.warning("%s", problem.format())
        for line in describe(outcome):
            log.info("%s", line)
        if outcome.impact is not None and outcome.impact.rows:
            kept = ", ".join(f"{row.sequence_id} at {row.step} ({row.runs})" for row in outcome.impact.rows)
            log.info("runs in flight that keep their old definition: %s", kept)
        added, removed = outcome.deployed.changed_lines
        log.info("deployed %s as %s (+%d -%d lines): new runs start on it", path, outcome.deployed.label, added, removed)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
