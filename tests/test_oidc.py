"""Signing in to the dashboard with OpenID Connect, against a real provider in its own process
(panva's oidc-provider under Node, tests/oidc/), in a real browser: the provider's own sign-in and
consent pages, the code flow with PKCE, the ID token checked against the provider's keys."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from keepflow.store.access import AuditEntry
from keepflow.tools.temporal_dev_server import free_port
from tests.browser import browser
from tests.helpers import serving_admin
from tests.test_admin import EMAIL, PHONE, shop

PROVIDER = Path(__file__).parent / "oidc"
CLIENT_ID, CLIENT_SECRET = "keepflow-dashboard", "test-client-secret-0123456789"


@pytest.fixture
async def provider(tmp_path):
    """The provider's issuer URL, and the admin port its one client may return to."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the OpenID Connect provider of this test runs on it")
    if not (PROVIDER / "node_modules" / "oidc-provider").is_dir():
        if shutil.which("npm") is None:  # the Makefile installs the provider only with npm
            pytest.skip("npm is not installed, so `make test` cannot install the OpenID Connect provider (tests/oidc)")
        pytest.fail("tests/oidc/node_modules is missing: `make test` installs it (npm ci --prefix tests/oidc)")
    port, admin_port = free_port(), free_port()
    log = (tmp_path / "provider.log").open("w+")
    process = subprocess.Popen(
        [node, "provider.mjs", str(port), CLIENT_ID, CLIENT_SECRET, f"http://127.0.0.1:{admin_port}/signin/oidc/callback"],
        cwd=PROVIDER, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert ready.strip() == "ready", (ready, log.seek(0) or log.read())
        yield f"http://127.0.0.1:{port}", admin_port
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
        log.close()


@pytest.mark.timeout(180)
async def test_sign_in_with_openid_connect(settings, db, provider):
    issuer, admin_port = provider
    shop(db)
    settings = settings.model_copy(update={
        "oidc_issuer": issuer, "oidc_client_id": CLIENT_ID, "oidc_client_secret": SecretStr(CLIENT_SECRET),
        "oidc_admins": "someone@shop.example, Ada@Shop.example unverified-boss@shop.example",
        "admin_url": f"http://127.0.0.1:{admin_port}"})
    seen = {}
    async with serving_admin(settings, db, role=None, port=admin_port) as http, browser() as chromium:
        base = str(http.base_url).rstrip("/")
        forged = await http.get("/signin/oidc/callback", params={"code": "made-up", "state": "made-up"})
        for login in ("ada@shop.example", "mia@shop.example", "unverified-boss@shop.example"):
            context = await chromium.new_context()
            page = await context.new_page()
            await page.goto(f"{base}/customers?q=c-42")
            await page.click("#oidc")
            await page.wait_for_url(f"{issuer}/**")
            await page.fill("input[name=login]", login)
            await page.fill("input[name=password]", "anything")
            await page.click("button[type=submit]")
            await page.click("button:has-text('Continue')")  # the provider asks to share the address
            await page.wait_for_url(f"{base}/customers?q=c-42")
            seen[login] = (await page.inner_text("#viewer"), await page.inner_text("#customer"))
            await context.close()
    assert forged.status_code == 401 and "Sign-in failed" in forged.text
    viewer, customer = seen["ada@shop.example"]
    assert viewer.startswith("ada@shop.example · admin") and EMAIL in customer and PHONE in customer
    for marketer in ("mia@shop.example", "unverified-boss@shop.example"):
        viewer, customer = seen[marketer]
        assert "· marketer" in viewer, viewer
        assert EMAIL not in customer and PHONE not in customer and "n•••@e•••.th" in customer
    # Only an address the provider vouches for makes an admin: unverified-boss is a marketer, by
    # the subject the provider gave.
    assert seen["unverified-boss@shop.example"][0].startswith("oidc:unverified-boss@shop.example")
    with db.session() as s:
        audited = [(e.who, e.view, e.customer_id) for e in s.scalars(select(AuditEntry))]
    assert audited == [("ada@shop.example", "customer", "c-42")]
