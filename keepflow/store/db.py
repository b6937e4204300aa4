"""Engine, sessions and schema upgrades for whichever database `DATABASE_URL` names."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from keepflow.settings import private_dir

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


# How long a statement waits for another writer's lock before it fails (OperationalError).
LOCK_TIMEOUT = timedelta(seconds=30)


def make_engine(url: str, lock_timeout: timedelta = LOCK_TIMEOUT, pooled: bool = True) -> Engine:
    parsed = make_url(url)
    pool = {} if pooled else {"poolclass": NullPool}
    wait_ms = int(lock_timeout.total_seconds() * 1000)
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_backend_name() == "postgresql":
            return create_engine(url, pool_pre_ping=True, connect_args={"options": f"-c lock_timeout={wait_ms}"}, **pool)
        return create_engine(url, pool_pre_ping=True, **pool)
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        _private_file(Path(parsed.database))
    engine = create_engine(url, connect_args={"timeout": lock_timeout.total_seconds()}, **pool)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - exercised by every test
        cursor = dbapi_connection.cursor()
        # WAL lets the worker's threads read while one writes; busy_timeout waits out the writer.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={wait_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _private_file(path: Path) -> None:
    """The database holds customers' names, addresses and messages: only this user may read it.
    SQLite creates the -wal and -shm files with the database file's mode, so they follow."""
    private_dir(path.parent)
    # O_CREAT with 0600, not a chmod afterwards: no moment where another user could open it.
    # O_EXCL: an existing file is never opened here. Closing any descriptor of a file drops every
    # POSIX lock this process holds on it, those of its open SQLite connections too; a process
    # that then looked alone would checkpoint and delete the WAL under the others' writes.
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    if path.stat().st_mode & 0o077:
        # A file from before this release, created with the umask's 0644.
        path.chmod(0o600)


def alembic_config(url: str) -> Config:
    # Alembic loads on first use: most commands (validate, preview) never migrate.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision; safe to call on every start."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


class Database:
    """`pooled=False`: a connection per use, closed after it, for a process's rare side uses of a
    store it has no Database of its own for (nothing left open to close)."""

    def __init__(self, url: str, lock_timeout: timedelta = LOCK_TIMEOUT, *, pooled: bool = True):
        self.url = url
        self.engine = make_engine(url, lock_timeout, pooled)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in one transaction that commits on success and rolls back on error.
        For hot paths that read and write plain rows: no ORM objects, no unit of work."""
        with self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


def insert_new(connection: Connection, table: Table, rows: Sequence[dict[str, Any]], key: list[str]) -> int:
    """Insert the `rows` whose `key` the table does not hold yet, the others left as they are; how
    many it inserted. One statement that yields to a concurrent insert of the same key, where a
    read and then a write would fail on it."""
    if not rows:
        return 0
    statement = _insert_new(connection.dialect.name, table, tuple(key))
    # preserve_rowcount: psycopg forgets an INSERT's row count once SQLAlchemy has closed its
    # cursor, and the count read -1 on PostgreSQL (sqlite3 keeps it).
    result = connection.execute(statement, list(rows), execution_options={"preserve_rowcount": True})
    return result.rowcount


@lru_cache(maxsize=None)
def _insert_new(dialect: str, table: Table, key: tuple[str, ...]) -> Insert:
    """The rows go in as parameters, not in the statement: SQLAlchemy caches its compiled form
    (one with `.values(rows)` has no cache key and was compiled again on every call)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=list(key))


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything Keepflow stores is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
