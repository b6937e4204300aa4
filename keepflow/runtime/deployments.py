"""Deployed versions of `sequences.yaml`, and the catalog a running process serves from.

`keepflow deploy` (or `keepflow dev`, when the file is saved) records the checked file as a new
version in the store. Every long-running process (public app, dashboard, worker) reads the newest
version number every FOLLOW_EVERY and, on a new one, loads that text, checks it against its own
activities and templates, and switches to it: new runs start on it from then on, runs in flight
keep the snapshot they started with. A version this process cannot load (an activity its code
does not have yet) is logged and skipped; it keeps what it had.

At start a process runs the live version. Only when none has been deployed yet does it deploy
the file it was given, so a first `keepflow serve` works without a separate step, while a
restart never silently undoes what `keepflow deploy` made live.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from keepflow.language.catalog import Catalog
from keepflow.language.problems import InvalidSequences
from keepflow.runtime.registry import load_catalog
from keepflow.store import Database, utc
from keepflow.store import definitions
from keepflow.store.definitions import Definition, DefinitionSequence

log = logging.getLogger("keepflow.runtime.deployments")

# How stale a process's definitions may be after a deploy: one indexed read per second per process.
FOLLOW_EVERY = 1.0


@dataclass(frozen=True)
class Version:
    number: int
    hash: str
    deployed_at: datetime
    origin: str
    diff: str = field(repr=False)
    source: str = field(repr=False)

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @property
    def changed_lines(self) -> tuple[int, int]:
        """Lines added and removed against the version before."""
        lines = self.diff.splitlines()
        added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
        return added, removed


def text_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _version(row: Definition) -> Version:
    return Version(row.version, row.hash, utc(row.deployed_at), row.origin, row.diff, row.source)


def live(db: Database) -> Version | None:
    """The version new runs start on: the newest deployed."""
    with db.session() as session:
        row = definitions.newest(session)
        return _version(row) if row else None


def live_number(db: Database) -> int | None:
    with db.session() as session:
        return session.scalar(select(func.max(Definition.version)))


def version(db: Database, number: int) -> Version | None:
    with db.session() as session:
        row = session.get(Definition, number)
        return _version(row) if row else None


def versions(db: Database) -> list[Version]:
    """Every deployed version, newest first."""
    with db.session() as session:
        return [_version(row) for row in session.scalars(select(Definition).order_by(Definition.version.desc()))]


def record(db: Database, catalog: Catalog, source: str, origin: str) -> tuple[Version, bool]:
    """Make `source` (already checked: `catalog` is what it loads to) the live version.

    The version and whether it is new: the text already live is not recorded again."""
    digest = text_hash(source)
    with db.session() as session:
        newest = definitions.newest(session)
        if newest is not None and newest.hash == digest:
            return _version(newest), False
        before = f"v{newest.version}" if newest else "(nothing deployed)"
        diff = "".join(difflib.unified_diff(
            (newest.source if newest else "").splitlines(keepends=True), source.splitlines(keepends=True),
            fromfile=f"{catalog.path.name} {before}", tofile=f"{catalog.path.name} deployed"))
        row = Definition(hash=digest, source=source, diff=diff, deployed_at=datetime.now(timezone.utc), origin=origin)
        session.add(row)
        session.flush()  # its number, for the sequences' rows
        session.add_all(DefinitionSequence(version=row.version, sequence_id=sequence_id,
                                           snapshot_hash=catalog.snapshot(sequence_id).hash)
                        for sequence_id in catalog.sequences)
        return _version(row), True


def sequence_hashes(db: Database, number: int) -> dict[str, str]:
    """Each sequence's definition hash in version `number`."""
    with db.session() as session:
        rows = session.execute(select(DefinitionSequence.sequence_id, DefinitionSequence.snapshot_hash)
                               .where(DefinitionSequence.version == number)).all()
    return {seq: digest for seq, digest in rows}


def versions_of(db: Database, runs: list[tuple[str, str | None]]) -> dict[tuple[str, str], int]:
    """For (sequence id, definition hash) pairs of runs: the first version that ran that definition.

    A run started by a `start:` step carries its starter's snapshot hash, so a pair is also matched
    through the starter's sequences of the same version."""
    wanted = {(seq, digest) for seq, digest in runs if digest}
    if not wanted:
        return {}
    with db.session() as session:
        rows = session.execute(
            select(DefinitionSequence.snapshot_hash, func.min(DefinitionSequence.version))
            .where(DefinitionSequence.snapshot_hash.in_({digest for _, digest in wanted}))
            .group_by(DefinitionSequence.snapshot_hash)).all()
    first = {digest: number for digest, number in rows}
    return {(seq, digest): first[digest] for seq, digest in wanted if digest in first}


@dataclass
class LiveCatalog:
    """The catalog a process serves from, switched in place when a new version is deployed."""

    catalog: Catalog
    version: int | None = None


def load_live(db: Database, path: Path, templates_dir: Path | None, origin: str) -> LiveCatalog:
    """What a process starts on: the live version, or, with none yet, the file at `path` deployed.

    Raises InvalidSequences when the file is needed and invalid, and VersionDoesNotLoad when the
    live version does not load here (an activity or template this process does not have)."""
    current = live(db)
    if current is None:
        catalog = load_catalog(path, templates_dir)
        deployed, _ = record(db, catalog, path.read_text(encoding="utf-8"), origin)
        log.info("no version was deployed yet: deployed %s as %s", path, deployed.label)
        return LiveCatalog(catalog, deployed.number)
    catalog = _load_version(current, path, templates_dir)
    try:
        on_disk = path.read_text(encoding="utf-8")
    except OSError:
        on_disk = None
    if on_disk is not None and text_hash(on_disk) != current.hash:
        log.warning("%s differs from the live version %s (deployed %s by %s): running %s; "
                    "`keepflow deploy` makes the file live", path, current.label, f"{current.deployed_at:%Y-%m-%d %H:%M UTC}",
                    current.origin, current.label)
    return LiveCatalog(catalog, current.number)


class VersionDoesNotLoad(Exception):
    """A deployed version this process cannot run (an activity or template it does not have)."""


def _load_version(current: Version, path: Path, templates_dir: Path | None) -> Catalog:
    try:
        return load_catalog(path, templates_dir, current.source)
    except InvalidSequences as invalid:
        errors = [p for p in invalid.problems if p.severity == "error"] or invalid.problems
        first = f" ({errors[0].format()})" if errors else ""
        raise VersionDoesNotLoad(f"the live version {current.label} of {path.name} does not load in this "
                                 f"process{first}: deploy a version it can run, or run the release that has "
                                 "what it needs") from None


async def follow(db: Database, live_catalog: LiveCatalog, path: Path, templates_dir: Path | None,
                 switched: Callable[[Catalog], Awaitable[None]] | None = None, every: float = FOLLOW_EVERY) -> None:
    """Switch `live_catalog` to each newly deployed version, until cancelled."""
    skipped: int | None = None
    while True:
        await asyncio.sleep(every)
        try:
            newest = await asyncio.to_thread(live_number, db)
        except SQLAlchemyError as err:
            log.warning("cannot read the deployed versions (%s); trying again", err.__class__.__name__)
            continue
        if newest is None or newest == live_catalog.version or newest == skipped:
            continue
        current = await asyncio.to_thread(version, db, newest)
        if current is None:
            continue
        try:
            catalog = await asyncio.to_thread(_load_version, current, path, templates_dir)
        except VersionDoesNotLoad as err:
            log.error("%s; still running v%s", err, live_catalog.version)
            skipped = newest
            continue
        live_catalog.catalog, live_catalog.version = catalog, newest
        log.info("switched to %s of %s: new runs start on it", current.label, path.name)
        if switched is not None:
            await switched(catalog)
