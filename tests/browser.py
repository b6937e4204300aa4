"""A real browser for the dashboard's tests: Debian's Chromium, driven by Playwright.

Playwright's own browser builds are downloaded from the internet, which CI cannot reach; it drives
the Chromium that .ci/run installs instead (`executable_path`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, async_playwright


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "Chromium is not installed, so the dashboard is not checked in a browser: install Debian's `chromium`"
    # `make test` needs only Python and make; CI (.ci/run) installs Chromium and sets this, so the
    # browser test fails there rather than disappear into a skip.
    if os.environ.get("KEEPFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (KEEPFLOW_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    binary = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            await launched.close()
