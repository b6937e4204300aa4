"""`keepflow impact`: runs started on an older definition, counted per step, on the time-skipping server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from sqlalchemy import select

from keepflow.language.catalog import Catalog
from keepflow.language.dsl import SequencesFile
from keepflow.runtime.payloads import EventSignal, RunStatus
from keepflow.runtime.starts import record_run
from keepflow.store import Run
from keepflow.tools.impact import compute_impact, runs_in_flight
from tests.engine import TEST_TEMPLATES, make_settings, running_worker
from tests.helpers import CUSTOMER, NO_LIMITS, start, until_step

BEFORE = """\
sequences:
  - id: nurture
    category: marketing
    steps:
      - wait_for: order.shipped
        timeout: 7d
        id: shipped
      - wait: 3d
        id: pause
      - send: email
        template: note
  - id: other
    category: marketing
    steps:
      - wait: 3d
        id: pause
      - send: email
        template: note
"""
# The marketer shortens the pause of `nurture`; `other` stays as it was.
AFTER = BEFORE.replace("      - wait: 3d\n        id: pause\n      - send: email\n        template: note\n  - id: other",
                       "      - wait: 1d\n        id: pause\n      - send: email\n        template: note\n  - id: other")


def catalog(text: str) -> Catalog:
    data = YAML(typ="safe").load(text)
    # The rules the test runs use (no quiet hours, no cap), so only the steps differ.
    file = SequencesFile.model_validate({**data, "rules": NO_LIMITS.model_dump(mode="json")})
    return Catalog(path=Path("sequences.yaml"), templates_dir=TEST_TEMPLATES, file=file)


@pytest.fixture
def settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES)


def shipped() -> EventSignal:
    return EventSignal(id=str(uuid.uuid4()), type="order.shipped", occurred_at="2026-11-23T00:00:00+00:00")


async def test_runs_on_the_old_definition_are_counted_per_step(env, settings, db):
    assert AFTER != BEFORE
    old, new = catalog(BEFORE), catalog(AFTER)
    assert old.snapshot("nurture").hash != new.snapshot("nurture").hash
    assert old.snapshot("other").hash == new.snapshot("other").hash

    async with running_worker(env, settings, db) as tq:
        ids = []
        for n, (sequence, ship) in enumerate([("nurture", False), ("nurture", True), ("nurture", True),
                                              ("nurture", True), ("other", False)]):
            handle = await start(env.client, tq, old.snapshot(sequence), key=f"k{n}-{uuid.uuid4().hex[:6]}")
            # in the runs table, as the router records them, so the worker fixture ends them after
            record_run(db, handle.id, {"customer": CUSTOMER})
            if ship:
                await until_step(env, handle.id, "shipped")
                await handle.signal("event", shipped())
            ids.append(handle.id)
        for run_id, step in zip(ids, ["shipped", "pause", "pause", "pause", "pause"]):
            await until_step(env, run_id, step)

        def from_runs_table() -> list[str]:
            with db.session() as session:
                return list(session.scalars(select(Run.id)))

        # The time-skipping server has no visibility store: the ids come from the runs table.
        from_table, source = await runs_in_flight(env.client, from_runs_table)
        assert sorted(from_table) == sorted(ids) and "runs table" in source
        impact = await compute_impact(env.client, new, from_table)
        assert [(r.sequence_id, r.step, r.runs, r.still_defined) for r in impact.rows] == [
            ("nurture", "pause", 3, True), ("nurture", "shipped", 1, True)]
        assert (impact.runs_checked, impact.unchanged) == (5, 1)

        # Against the definitions they started with, nothing is affected.
        unchanged = await compute_impact(env.client, old, from_table)
        assert unchanged.rows == [] and unchanged.unchanged == 5

        # A sequence removed from the file: its runs are still shown, as removed.
        removed = catalog(BEFORE.split("  - id: other")[0])
        rows = (await compute_impact(env.client, removed, ids[-1:])).rows
        assert [(r.sequence_id, r.step, r.runs, r.still_defined) for r in rows] == [("other", "pause", 1, False)]


async def test_runs_listed_by_visibility_on_the_dev_server(tmp_path, settings, db):
    """The command's own path: Temporal's dev server lists running workflows (the time-skipping
    server cannot), and `impact` finds them without being told their ids."""
    import asyncio

    from keepflow.tools.temporal_dev_server import DevServer, free_port
    from worker import build_worker

    old, new = catalog(BEFORE), catalog(AFTER)
    # The client keeps definitions and contexts in the store the worker reads (PostgreSQL under .ci/postgres).
    settings = settings.model_copy(update={"database_url": db.url})
    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=None)
    server.start()
    try:
        client = await server.wait_ready(settings)
        task_queue = f"test-{uuid.uuid4()}"
        async with build_worker(client, settings, db, task_queue=task_queue, catalog=old):
            handles = [await start(client, task_queue, old.snapshot("other"), key=f"v{n}") for n in range(2)]
            for handle in handles:
                for _ in range(200):
                    if (await handle.query("status", result_type=RunStatus)).current_step == "pause":
                        break
                    await asyncio.sleep(0.05)
            changed = catalog(BEFORE.replace("  - id: other\n    category: marketing\n    steps:\n      - wait: 3d",
                                             "  - id: other\n    category: marketing\n    steps:\n      - wait: 2d"))
            assert changed.snapshot("other").hash != old.snapshot("other").hash
            for _ in range(100):  # visibility is eventually consistent
                impact = await compute_impact(client, changed)
                if impact.runs_checked == 2:
                    break
                await asyncio.sleep(0.1)
            assert [(r.sequence_id, r.step, r.runs) for r in impact.rows] == [("other", "pause", 2)]
            assert (await compute_impact(client, new)).rows == []
            for handle in handles:
                await handle.terminate("test finished")
    finally:
        server.stop()


PARENT_AND_CHILD = """\
sequences:
  - id: parent
    category: marketing
    steps:
      - start: child
      - wait: 3d
        id: pause
  - id: child
    category: marketing
    steps:
      - wait: 3d
        id: pause
      - send: email
        template: note
"""


async def test_a_run_started_by_a_start_step_is_current_against_the_unedited_file(env, settings, db):
    """A `start:` run carries its starter's snapshot (and so its hash): against the file it
    started from, it runs the current definition."""
    unedited = catalog(PARENT_AND_CHILD)
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, unedited.snapshot("parent").child("child"), key=uuid.uuid4().hex[:6])
        record_run(db, handle.id, {"customer": CUSTOMER})
        await until_step(env, handle.id, "pause")
        impact = await compute_impact(env.client, unedited, [handle.id])
        assert impact.rows == [] and (impact.runs_checked, impact.unchanged) == (1, 1)
        # The child edited: the run keeps its old steps, and says so.
        edited = catalog(PARENT_AND_CHILD.replace("      - wait: 3d\n        id: pause\n      - send", "      - wait: 1d\n        id: pause\n      - send"))
        assert [(r.sequence_id, r.step, r.runs) for r in (await compute_impact(env.client, edited, [handle.id])).rows] == [
            ("child", "pause", 1)]
