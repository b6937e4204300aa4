"""Where a test keeps its data: a SQLite file in its temp dir, or, when KEEPFLOW_TEST_DATABASE_URL
names a PostgreSQL server (`.ci/postgres` sets it), a database of its own on that server.

The second mode exists so that SQL only SQLite accepts fails a test instead of a deployment;
each test gets a fresh database so tests stay as independent as they are with files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SERVER_URL = os.environ.get("KEEPFLOW_TEST_DATABASE_URL") or None


@contextmanager
def fresh_database(tmp_path: Path, *, template: str | None = None) -> Iterator[str]:
    """The URL of an empty database (or of a copy of `template`'s), removed afterwards."""
    if SERVER_URL is None:
        if template is not None:
            shutil.copyfile(make_url(template).database, tmp_path / "keepflow.db")
        yield f"sqlite:///{tmp_path / 'keepflow.db'}"
        return
    server = make_url(SERVER_URL)
    name = f"keepflow_test_{uuid.uuid4().hex}"
    # CREATE and DROP DATABASE cannot run inside a transaction; no pool, so the admin connection
    # is gone as soon as each statement is.
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            source = f' TEMPLATE "{make_url(template).database}"' if template else ""
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"{source}')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                # A test may leave a pool or a worker thread connected; FORCE ends those sessions.
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
