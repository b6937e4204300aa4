"""Personal data as an operator must keep it: files only this user reads, and a customer forgotten
on request (`keepflow customers forget`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus

from keepflow.runtime.routing import ingest
from keepflow.sending import suppressions
from keepflow.settings import dev_secret
from keepflow.store import Base, Customer, Database, upgrade
from keepflow.tools.forget import forget
from tests.engine import CATALOG, running_worker, until_quiet
from tests.helpers import messages
from tests.test_journey import order_event


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_sqlite_store_and_its_folder_are_for_this_user_only(tmp_path):
    folder = tmp_path / "var"
    url = f"sqlite:///{folder / 'keepflow.db'}"
    upgrade(url)
    db = Database(url)
    try:
        with db.session() as session:
            session.add(Customer(id="c1", email="nok@example.com"))
        with db.session() as session:  # a second connection: the WAL and its index exist now
            assert session.get(Customer, "c1") is not None
            files = [p for p in folder.iterdir() if p.name.startswith("keepflow.db")]
            assert {p.name for p in files} >= {"keepflow.db", "keepflow.db-wal", "keepflow.db-shm"}
            assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        db.dispose()
    assert mode(folder) == 0o700


def test_a_store_file_from_before_is_made_private(tmp_path):
    path = tmp_path / "keepflow.db"
    path.touch()
    os.chmod(path, 0o644)
    Database(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o600


def test_the_dev_secret_is_private_from_the_start(tmp_path):
    dev_secret(tmp_path / "var")
    assert mode(tmp_path / "var" / "webhook-secret") == 0o600 and mode(tmp_path / "var") == 0o700


# --- keepflow customers forget -------------------------------------------------------------------

PERSONAL = ("nok@example.com", "+66812345678", "812345678", "นก", "Lumen D200", "KEX123")


def everything_stored(db: Database) -> str:
    with db.session() as session:
        return "\n".join(repr(row) for table in Base.metadata.sorted_tables
                         for row in session.execute(select(table)).all())


async def test_forget_erases_the_customer_keeps_the_opt_out_and_ends_their_runs(env, settings, db, fake):
    order_id = f"9{uuid.uuid4().int % 10**6:06d}"
    customer_id = f"forget-{uuid.uuid4().hex[:8]}"
    async with running_worker(env, settings, db) as tq:
        await ingest(db, env.client, CATALOG, order_event("order.created", order_id, customer_id), tq)
        await ingest(db, env.client, CATALOG, order_event("order.shipped", order_id, customer_id,
                                                          tracking_number="KEX123"), tq)
        for _ in range(200):  # the confirmation goes out at once
            if any(m.status == "sent" for m in messages(db)):
                break
            await asyncio.sleep(0.05)
        with db.session() as session:
            suppressions.suppress(session, channel="email", address="nok@example.com", scope="marketing",
                                  reason="unsubscribe", source="unsubscribe_link", customer_id=customer_id,
                                  detail="clicked in the mail to nok@example.com")
            suppressions.suppress(session, channel="sms", address="+66812345678", scope="marketing",
                                  reason="sms_stop", source="twilio")
        assert all(word in everything_stored(db) for word in PERSONAL)
        handle = env.client.get_workflow_handle(f"fulfilment/{order_id}")
        # Terminated mid-send, a run would hold the shared test server's clock for good (engine.end_leftover_runs).
        assert await until_quiet(handle)

        done = await forget(db, env.client, "  NOK@Example.com ")

        assert done.customer_ids == [customer_id] and done.terminated == [f"fulfilment/{order_id}"]
        assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    stored = everything_stored(db)
    assert not [word for word in PERSONAL if word in stored]
    # What stays: the message rows (for the reports) and the opt-outs, which still hold.
    assert messages(db) and all(m.recipient is None and m.body is None for m in messages(db))
    with db.transaction() as connection:
        for channel, address in (("email", "Nok@example.com"), ("sms", "+66812345678")):
            assert suppressions.blocking_reason(connection, channel=channel, address=address, category="marketing",
                                                group="education") is not None
    # A second opt-out of the forgotten address re-arms the hashed row; it adds no readable one.
    with db.session() as session:
        suppressions.suppress(session, channel="email", address="nok@example.com", scope="marketing",
                              reason="spam_report", source="sendgrid")
    assert "nok@example.com" not in everything_stored(db)


def test_forget_says_so_when_it_names_nobody(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEPFLOW_", "DATABASE_URL"))}
    env["KEEPFLOW_DATA_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "keepflow.cli", "customers", "forget", "nobody-at-all", "--yes"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no customer has the id 'nobody-at-all'" in result.stderr


async def test_forget_erases_a_line_user_id_and_its_friendship_and_keeps_the_block(db):
    from datetime import datetime, timezone

    from keepflow.sending import line_friends

    line_id = "U" + uuid.uuid4().hex
    with db.session() as session:
        session.add(Customer(id="c-line", line_user_id=line_id, line_user_id_problem=None, consents={"line": True},
                             attributes={}))
        session.flush()
        line_friends.apply(session, "follow", line_id, datetime(2026, 12, 1, tzinfo=timezone.utc))
        line_friends.apply(session, "unfollow", line_id, datetime(2026, 12, 2, tzinfo=timezone.utc))
    assert line_id in everything_stored(db)

    done = await forget(db, None, line_id)  # type: ignore[arg-type]  # no runs: Temporal is not asked

    assert done.customer_ids == ["c-line"]
    assert line_id not in everything_stored(db)
    with db.session() as session:
        assert session.get(Customer, "c-line").line_user_id is None
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="line", address=line_id, category="marketing",
                                            group="t") is not None
    # A follow from before the unfollow, delivered late (after the erasure): the friendship's row
    # is gone, but the hashed block is newer than the follow, so the follow changes nothing.
    with db.session() as session:
        assert not line_friends.apply(session, "follow", line_id, datetime(2026, 12, 1, 12, tzinfo=timezone.utc))
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="line", address=line_id, category="marketing",
                                            group="t") is not None
    # A follow after the unfollow is the customer's own new act, and lifts it.
    with db.session() as session:
        assert line_friends.apply(session, "follow", line_id, datetime(2026, 12, 3, tzinfo=timezone.utc))
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="line", address=line_id, category="marketing",
                                            group="t") is None
