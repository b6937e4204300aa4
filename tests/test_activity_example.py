"""The activity with a table of its own in docs/activities.md (examples/loyalty/): the doc shows
the files as they are, the migration creates what the model maps, `keepflow db revision` writes
that migration, and the activity gives points once per step on the time-skipping server."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from keepflow.runtime.registry import ActivityContext, discover, reset
from keepflow.store import Base
from keepflow.store.db import MIGRATIONS, alembic_config
from keepflow.tools.db_revision import new_revision
from tests.engine import running_worker
from tests.helpers import snapshot, start

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "loyalty"
ACTIVITY = EXAMPLE / "activities" / "loyalty.py"
MIGRATION = EXAMPLE / "versions" / "loyalty_awards.py"


@pytest.fixture(scope="module")
def loyalty():
    """The example module, imported as the worker would import activities/loyalty.py."""
    spec = importlib.util.spec_from_file_location("loyalty_example", ACTIVITY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SQLAlchemy resolves the model's annotations through it
    spec.loader.exec_module(module)
    yield module
    reset()
    discover()
    Base.metadata.remove(module.LoyaltyAward.__table__)
    del sys.modules[spec.name]


def with_example_migration(url: str):
    config = alembic_config(url)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join([str(MIGRATIONS / "versions"), str(MIGRATION.parent)]))
    # "heads": the example is a branch beside the engine's own migrations, whose head it follows (`keepflow db revision` writes that for you).
    command.upgrade(config, "heads")


def test_the_doc_shows_the_example_files_as_they_are():
    doc = (ROOT / "docs" / "activities.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    for path in (ACTIVITY, MIGRATION):
        assert path.read_text() in blocks, f"docs/activities.md does not show {path.relative_to(ROOT)} as it is"


def test_the_migration_creates_what_the_model_maps(db, loyalty):
    with_example_migration(db.url)
    with db.engine.connect() as connection:
        assert "loyalty_awards" in inspect(connection).get_table_names()
        with warnings.catch_warnings():  # SQLite cannot reflect ix_events_message_id, nor compare it
            warnings.filterwarnings("ignore", message=".*expression-based index")
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in differences if "loyalty_awards" in repr(d)] == []


def _body(text: str) -> str:
    """upgrade() and downgrade(), without Alembic's reminder comments and blank lines."""
    code = text[text.index("def upgrade"):]
    return "\n".join(line for line in code.splitlines() if line.strip() and not line.strip().startswith("# ###"))


def test_db_revision_writes_that_migration(tmp_path, loyalty):
    written = new_revision("loyalty awards", version_path=tmp_path)
    assert written is not None and written.name.endswith("_loyalty_awards.py")
    assert _body(written.read_text()) == _body(MIGRATION.read_text())
    # With it in place the models and the schema agree: nothing more to write.
    assert new_revision("again", version_path=tmp_path) is None


async def test_the_activity_gives_points_once_per_step(env, settings, db, loyalty):
    with_example_migration(db.url)
    snap = snapshot("""
sequences:
  - id: loyal
    category: transactional
    steps:
      - do: add_loyalty_points
        with: {points: 200}
        as: loyalty
      - do: add_loyalty_points
        with: {points: 50}
""")
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        assert [s.outcome for s in (await handle.result()).steps_done] == ["done", "done"]
    results = [e.activity_task_completed_event_attributes.result for e in (await handle.fetch_history()).events
               if e.HasField("activity_task_completed_event_attributes")]
    assert [(await env.client.data_converter.decode(r.payloads, [dict]))[0] for r in results] == [
        {"balance": 200}, {"balance": 250}]
    # A retry of the first step (same run, same step: same ctx.key) gives nothing more.
    ctx = ActivityContext(handle.id, "loyal", "0", {"customer": {"id": "c-1"}}, settings, db)
    assert loyalty.add_loyalty_points(loyalty.AddPointsArgs(points=200), ctx).balance == 250
    with db.session() as session:
        awards = session.execute(select(loyalty.LoyaltyAward.key, loyalty.LoyaltyAward.points)).all()
    assert sorted(awards) == [(f"{handle.id}:0", 200), (f"{handle.id}:1", 50)]
