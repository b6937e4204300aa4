"""Personal data as an operator must keep it: files only this user reads, and a customer forgotten
on request (`keepflow customers forget`)."""

from __future__ import annotations

import os
from pathlib import Path

from keepflow.settings import dev_secret
from keepflow.store import Customer, Database, upgrade


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
