"""`insert_new`, the insert that yields to a row already there: what it counts, on SQLite and on
PostgreSQL (`make test-postgres`), and that SQLAlchemy compiles it once, not on every event."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from keepflow.store import Database, Run
from keepflow.store.db import insert_new


def run_row(run_id: str) -> dict:
    return {"id": run_id, "sequence_id": "s", "customer_id": "c", "started_at": datetime.now(timezone.utc),
            "definition_hash": "h"}


def test_it_counts_the_rows_it_inserted_and_leaves_the_others(db):
    with db.transaction() as connection:
        assert insert_new(connection, Run.__table__, [run_row("s/a")], ["id"]) == 1
        assert insert_new(connection, Run.__table__, [run_row("s/a")], ["id"]) == 0
        assert insert_new(connection, Run.__table__, [run_row("s/a"), run_row("s/b"), run_row("s/c")], ["id"]) == 2
        assert insert_new(connection, Run.__table__, [], ["id"]) == 0
    with db.session() as session:
        assert sorted(session.get(Run, i).id for i in ("s/a", "s/b", "s/c")) == ["s/a", "s/b", "s/c"]


def test_its_statement_is_compiled_once(db: Database, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine.Engine")
    fresh = Database(db.url)  # an engine made after the level is set logs its statements
    try:
        for run_id in ("s/x", "s/y"):
            with fresh.transaction() as connection:
                insert_new(connection, Run.__table__, [run_row(run_id)], ["id"])
    finally:
        fresh.dispose()
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert any(m.startswith("[cached since") for m in compiled), compiled
    assert not any(m.startswith("[no key") for m in compiled), compiled
