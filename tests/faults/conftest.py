"""Fault tests: the real stack in separate processes (see stack.py). Run by `make faults`, not `make test`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.stack import Stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with Stack(tmp_path / "stack") as stack:
        yield stack


# `make faults` runs a file per runner, handing out the next when one finishes (--dist loadfile):
# longest first, so the last to start is a short one. Seconds each took alone, 2 cores.
LONGEST_FIRST = ["test_intake_faults.py", "test_kill9.py", "test_slow_provider.py", "test_server_restart.py",
                 "test_continue_as_new.py", "test_scale_out.py", "test_rolling_restart.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
