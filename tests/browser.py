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
    if os.environ.get("KEEPFLOW_SKIP_BROWSER") == "1":
        pytest.skip("KEEPFLOW_SKIP_BROWSER=1: the browser test is switched off")
    pytest.fail("Chromium is not installed, so the dashboard cannot be checked in a browser. Install Debian's "
                "`chromium` package (.ci/run does), or set KEEPFLOW_SKIP_BROWSER=1 to skip this test on purpose.")


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
