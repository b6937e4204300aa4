"""Shared fixtures: one time-skipping Temporal server for the session, the rest per test.
The helpers they use live in tests/engine.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from keepflow.settings import Settings, get_settings
from keepflow.store import Database, upgrade
from tests.databases import SERVER_URL, fresh_database
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES, SharedServer, make_settings, time_skipping_server
from tests.fakes.provider_server import FakeProviders

# Every workflow a test runs runs in Temporal's sandbox, which fails a workflow task that reads the
# clock, a file or the environment: the check on workflows/ that production workers do without.
os.environ["KEEPFLOW_WORKFLOW_SANDBOX"] = "true"


@pytest.fixture(autouse=True)
def shop_files(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A command run with its defaults (`keepflow graph winback`) reads the frozen shop, except in
    tests/content, whose tests are about the shipped files."""
    if "content" not in request.node.path.parts:
        monkeypatch.setenv("KEEPFLOW_SEQUENCES", str(SHOP_SEQUENCES))
        monkeypatch.setenv("KEEPFLOW_TEMPLATES", str(SHOP_TEMPLATES))
    # The CLI reads its settings once per process: each test's commands read its own environment.
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# Each time the shared server was replaced, and after which test: the session's summary says so.
_REPLACED: list[str] = []


@pytest.fixture(scope="session")
async def shared_server() -> AsyncIterator[SharedServer]:
    server = SharedServer(await time_skipping_server(), replaced=_REPLACED)
    try:
        yield server
    finally:
        await server.env.shutdown()


@pytest.fixture
async def env(shared_server: SharedServer, request: pytest.FixtureRequest) -> WorkflowEnvironment:
    return await shared_server.ready(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPLACED:
        terminalreporter.section("time-skipping server replaced")
        for line in _REPLACED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviders]:
    with FakeProviders() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeProviders) -> FakeProviders:
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database at the newest schema, migrated once: each test's database is a copy of it."""
    with fresh_database(tmp_path_factory.mktemp("migrated")) as url:
        upgrade(url)
        yield url


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated: str) -> Iterator[Database]:
    with fresh_database(tmp_path, template=migrated) as url:
        if SERVER_URL:
            # Anything in the test that opens the store from Settings (DATABASE_URL) rather than
            # through this fixture must reach the same PostgreSQL database, not a SQLite file.
            monkeypatch.setenv("DATABASE_URL", url)
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture
def settings(tmp_path: Path, fake: FakeProviders) -> Settings:
    return make_settings(tmp_path, fake)


