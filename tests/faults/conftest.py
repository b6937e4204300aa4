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
