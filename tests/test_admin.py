"""Two faces, and who may see what: the public app serves only what customers, stores and
providers reach; the admin app asks who you are, masks contact details from marketers, and
records every unmasked view. Each app runs on a real port; the sign-in goes through a real
browser where it matters."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from keepflow.cli import app as cli
from keepflow.http.dashboard.masking import mask_contact, mask_text
from keepflow.settings import get_settings
from keepflow.store import Customer, Database, Message, access
from keepflow.store.access import AuditEntry
from tests.browser import browser
from tests.helpers import PASSWORD, csrf_of, serving, serving_admin, sign_in

EMAIL, PHONE = "nok.somchai@example.co.th", "+66812345678"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def shop(db: Database, pixel: str = "http://127.0.0.1:9/pixel.gif") -> None:
    """One customer, one email that names her address and number and has a tracking pixel."""
    body = (f'<p>Hello Nok, we will write to {EMAIL} or text {PHONE}.</p>'
            f'<img id="pixel" src="{pixel}" width="1" height="1"><p><a href="mailto:{EMAIL}">me</a></p>')
    with db.session() as s:
        s.add(Customer(id="c-42", email=EMAIL, phone=PHONE, first_name="Nok", consents={"email": True}, attributes={}))
        s.flush()
        s.add(Message(id=1, key="fulfilment/o1:0", workflow_id="fulfilment/o1", sequence_id="fulfilment", step="0",
                      channel="email", category="transactional", template="order_confirmed", customer_id="c-42",
                      recipient=EMAIL, status="failed", error=f"Twilio 21211: the 'To' number {PHONE} is not valid",
                      created_at=NOW - timedelta(hours=2), subject=f"Your order, {EMAIL}", body=body))


def audit(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


# -- the public face --------------------------------------------------------------------------


async def test_the_public_app_serves_neither_dashboard_nor_docs(settings, db):
    shop(db)
    async with serving(settings, db) as http:
        hidden = {path: (await http.get(path)).status_code
                  for path in ("/", "/customers", "/customers?q=c-42", "/messages", "/messages/1",
                               "/sequences/fulfilment", "/docs", "/redoc", "/openapi.json", "/signin")}
        events = await http.post("/events", content=b"{}")
    assert hidden == dict.fromkeys(hidden, 404)
    assert events.status_code == 401  # still there, still signed


# -- signing in -------------------------------------------------------------------------------


async def test_every_admin_page_asks_who_you_are_first(settings, db):
    shop(db)
    async with serving_admin(settings, db, role=None) as http:
        away = {path: await http.get(path) for path in ("/", "/customers?q=c-42", "/messages/1", "/docs", "/openapi.json")}
        access.add_user(db, "ada", PASSWORD, "admin")
        form = await http.get("/signin", params={"next": "/customers?q=c-42"})
        back = await http.post("/signin", data={"name": "ada", "password": PASSWORD, "next": "/customers?q=c-42",
                                                "csrf_token": csrf_of(form.text)})
        # Signing in made a new token: the form is fetched again.
        elsewhere = await http.post("/signin", data={"name": "ada", "password": PASSWORD, "next": "//evil.example/",
                                                     "csrf_token": csrf_of((await http.get("/signin")).text)})
        page = await http.get(back.headers["location"])
    for path, answer in away.items():
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/signin?next="), answer.headers["location"]
        assert "c-42" not in answer.text and EMAIL not in answer.text
    assert away["/customers?q=c-42"].headers["location"] == "/signin?next=/customers%3Fq%3Dc-42"
    assert back.status_code == 303 and back.headers["location"] == "/customers?q=c-42"
    assert elsewhere.headers["location"] == "/"
    assert page.status_code == 200 and EMAIL in page.text


async def test_a_wrong_password_or_name_gets_nothing(settings, db):
    shop(db)
    async with serving_admin(settings, db, role=None) as http:
        access.add_user(db, "ada", PASSWORD, "admin")
        wrong = await sign_in(http, "ada", PASSWORD + "!")
        nobody = await sign_in(http, "bob", PASSWORD)
        after = await http.get("/messages/1")
    for answer in (wrong, nobody):
        assert answer.status_code == 401 and "Wrong name or password." in answer.text
    assert after.status_code == 303
    with db.session() as s:
        stored = s.get(access.User, "ada").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_forms_without_the_session_token_are_refused(settings, db):
    async with serving_admin(settings, db, role=None) as outsider:
        access.add_user(db, "ada", PASSWORD, "admin")
        no_token = await outsider.post("/signin", data={"name": "ada", "password": PASSWORD})
        form = await outsider.get("/signin")
        stolen = csrf_of(form.text)
    async with serving_admin(settings, db, name="grace") as http:
        # A token from another session (the attacker's own) does not fit this one.
        foreign = await http.post("/signout", data={"csrf_token": stolen})
        bare = await http.post("/signout")
        still = await http.get("/")
        mine = csrf_of(still.text)
        signed_out = await http.post("/signout", data={"csrf_token": mine})
        gone = await http.get("/")
    assert no_token.status_code == 403 and "Form refused" in no_token.text
    assert "set-cookie" not in no_token.headers or "user" not in no_token.headers["set-cookie"]
    for refused in (foreign, bare):
        assert refused.status_code == 403
    assert still.status_code == 200 and 'id="viewer"' in still.text
    assert signed_out.status_code == 303 and gone.status_code == 303


async def test_a_removed_user_is_signed_out_at_the_next_click(settings, db):
    async with serving_admin(settings, db, name="temp") as http:
        before = await http.get("/")
        access.remove_user(db, "temp")
        after = await http.get("/")
    assert before.status_code == 200 and after.status_code == 303


async def test_headers_and_cookie_flags(settings, db):
    async with serving_admin(settings, db) as http:
        page = await http.get("/")
        docs = await http.get("/docs")
        schema = await http.get("/openapi.json")
    async with serving_admin(settings, db, role=None) as http:
        cookie = (await http.get("/signin")).headers["set-cookie"]
    https = settings.model_copy(update={"admin_url": "https://keepflow.shop.internal"})
    async with serving_admin(https, db, role=None) as http:
        secure = (await http.get("/signin")).headers["set-cookie"]
    for answer in (page, docs):
        h = answer.headers
        assert h["content-security-policy"].startswith("default-src 'none';")
        assert "img-src data:;" in h["content-security-policy"] and "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
        assert h["cache-control"] == "no-store" and h["x-content-type-options"] == "nosniff"
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert cookie.startswith("keepflow_admin=") and "httponly" in flags and "samesite=lax" in flags
    assert "secure" not in flags
    assert "secure" in [f.strip().lower() for f in secure.split(";")]
    # The docs are the public app's endpoints, drawn without a script.
    assert "POST /events" in docs.text and "<script" not in docs.text.lower()
    assert "/webhooks/shopify" in schema.json()["paths"]


# -- masking ----------------------------------------------------------------------------------


def test_masking_finds_addresses_and_numbers_and_leaves_the_rest():
    assert mask_text(f"write to {EMAIL}.") == "write to n•••@e•••.th."
    assert mask_text("/customers?q=nok%40example.com") == "/customers?q=n•••%40e•••.com"
    assert mask_text(f'<a href="mailto:{EMAIL}?subject=hi">') == '<a href="mailto:n•••@e•••.th?subject=hi">'
    assert mask_text(f"call {PHONE} or +66 81 234 5678") == "call +•••••••••78 or +•• •• ••• ••78"
    assert mask_text("สวัสดี nok@example.com ครับ") == "สวัสดี n•••@e•••.com ครับ"
    for untouched in ("2026-11-23 10:00 +0700", "order 1001: ฿1,290.00", "KEX123456789", "c-42", "+1 sale"):
        assert mask_text(untouched) == untouched
    # A field that is one contact point is hidden even when it is no valid address or number.
    assert mask_contact("0812345678") == "0•••" and mask_contact(PHONE) == "+•••••••••78" and mask_contact(None) is None


async def test_marketers_see_contacts_masked_and_admins_whole_and_audited(settings, db):
    shop(db)
    async with serving_admin(settings, db, role="marketer", name="mia") as http:
        masked = [(await http.get(path)).text for path in ("/customers?q=c-42", "/messages/1", "/messages", "/")]
    assert audit(db) == []
    async with serving_admin(settings, db, role="admin", name="ada") as http:
        whole = [(await http.get(path)).text for path in ("/customers?q=c-42", "/messages/1", "/messages", "/")]
        by_email = await http.get("/customers", params={"q": EMAIL})
    for page in masked:
        assert EMAIL not in page and PHONE not in page and "nok.somchai%40" not in page
    customer, message = masked[0], masked[1]
    assert "n•••@e•••.th" in customer and "+•••••••••78" in customer
    # In the subject, the error, the recipient, and the body in the preview frame.
    assert "Your order, n•••@e•••.th" in message and "number +•••••••••78 is not valid" in message
    frame = re.search(r'srcdoc="([^"]*)"', message).group(1)
    assert "n•••@e•••.th" in frame and "+•••••••••78" in frame and "mailto:n•••@e•••.th" in frame
    assert EMAIL in whole[0] and PHONE in whole[0] and EMAIL in whole[1] and PHONE in whole[1]
    assert by_email.status_code == 200 and 'data-customer="c-42"' in by_email.text
    seen = [(e.who, e.role, e.view, e.customer_id, e.message_id) for e in audit(db)]
    assert seen == [("ada", "admin", "customer", "c-42", None), ("ada", "admin", "message", "c-42", 1),
                    ("ada", "admin", "messages", None, None), ("ada", "admin", "customer", "c-42", None)]
    assert audit(db)[2].detail == "messages 1-1"


# -- in a browser -----------------------------------------------------------------------------


class Pixel(BaseHTTPRequestHandler):
    """A remote image host: it counts the requests it gets (an email's tracking pixel)."""

    hits: list[str] = []

    def do_GET(self):
        Pixel.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()
        self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

    def log_message(self, *args):
        pass


@pytest.fixture
def pixel_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pixel)
    Pixel.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(180)
async def test_in_a_browser_marketer_masked_admin_whole_audited(settings, db, pixel_server, tmp_path):
    shop(db, pixel=f"{pixel_server}/open/1.gif")
    access.add_user(db, "mia", PASSWORD, "marketer")
    access.add_user(db, "ada", PASSWORD, "admin")
    async with serving_admin(settings, db, role=None) as http, browser() as chromium:
        base = str(http.base_url).rstrip("/")

        async def signed_in_as(name: str):
            context = await chromium.new_context()
            page = await context.new_page()
            await page.goto(f"{base}/customers?q=c-42")
            assert page.url.startswith(f"{base}/signin?next="), page.url
            await page.fill("#name", name)
            await page.fill("#password", PASSWORD)
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/customers?q=c-42")
            return context, page

        mia, page = await signed_in_as("mia")
        marketer_customer = await page.inner_text("#customer")
        await page.goto(f"{base}/messages/1")
        preview = page.frame_locator("iframe.email")
        marketer_body = await preview.locator("body").inner_text()
        await page.screenshot(path=tmp_path / "marketer-message.png", full_page=True)
        await page.wait_for_timeout(300)  # time enough for an image the frame were allowed to load
        # Signing out is a form too, with its token; afterwards the pages ask again.
        await page.click("#viewer button")
        await page.wait_for_url(f"{base}/signin")
        await page.goto(f"{base}/messages/1")
        marketer_after = page.url
        await mia.close()
        marketer_audit = audit(db)

        ada, page = await signed_in_as("ada")
        admin_customer = await page.inner_text("#customer")
        await page.goto(f"{base}/messages/1")
        admin_body = await page.frame_locator("iframe.email").locator("body").inner_text()
        await page.wait_for_timeout(300)
        await ada.close()

    assert EMAIL not in marketer_customer and PHONE not in marketer_customer
    assert "n•••@e•••.th" in marketer_customer and "+•••••••••78" in marketer_customer
    assert "write to n•••@e•••.th or text +•••••••••78" in marketer_body
    assert marketer_after.startswith(f"{base}/signin")
    assert marketer_audit == []
    assert EMAIL in admin_customer and PHONE in admin_customer
    assert f"write to {EMAIL} or text {PHONE}" in admin_body
    assert [(e.who, e.view, e.customer_id, e.message_id) for e in audit(db)] == [
        ("ada", "customer", "c-42", None), ("ada", "message", "c-42", 1)]
    # The preview was shown twice and its pixel never fetched: the admin's look is no "open".
    assert Pixel.hits == []


# -- the command line -------------------------------------------------------------------------


def test_users_and_audit_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        added = runner.invoke(cli, ["users", "add", "ada", "--role", "admin"], input=f"{PASSWORD}\n{PASSWORD}\n")
        again = runner.invoke(cli, ["users", "add", "ada", "--role", "admin"], input=f"{PASSWORD}\n{PASSWORD}\n")
        short = runner.invoke(cli, ["users", "add", "bob", "--role", "marketer", "--password-stdin"], input="short\n")
        role = runner.invoke(cli, ["users", "add", "bob", "--role", "owner", "--password-stdin"], input=f"{PASSWORD}\n")
        piped = runner.invoke(cli, ["users", "add", "mia", "--role", "marketer", "--password-stdin"], input=f"{PASSWORD}\n")
        listed = runner.invoke(cli, ["users", "list"])
        db = Database(get_settings().resolved_database_url)
        try:
            assert access.signed_in_role(db, "ada", PASSWORD) == "admin"
            assert access.signed_in_role(db, "mia", PASSWORD) == "marketer"
            access.record_view(db, "ada", "admin", access.Viewed("customer", customer_id="c-42", detail="searched for 'c-42'"))
            access.record_view(db, "ada", "admin", access.Viewed("message", customer_id="c-7", message_id=12))
        finally:
            db.dispose()
        everything = runner.invoke(cli, ["audit"])
        one = runner.invoke(cli, ["audit", "--customer", "c-42"])
        removed = runner.invoke(cli, ["users", "remove", "mia"])
        missing = runner.invoke(cli, ["users", "remove", "mia"])
    finally:
        get_settings.cache_clear()
    assert added.exit_code == 0 and "added ada (admin)" in added.output
    assert again.exit_code == 1 and "already a user 'ada'" in again.output
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    assert role.exit_code == 2 and "marketer, admin" in role.output
    assert piped.exit_code == 0
    assert re.search(r"^ada\tadmin\t", listed.output, re.M) and re.search(r"^mia\tmarketer\t", listed.output, re.M)
    assert everything.exit_code == 0 and "c-42" in everything.output and "c-7" in everything.output
    assert "searched for 'c-42'" in everything.output
    assert "c-42" in one.output and "c-7" not in one.output
    assert removed.exit_code == 0 and missing.exit_code == 1 and "no user 'mia'" in missing.output
