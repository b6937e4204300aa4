"""The dashboard at `/` of the admin app: served on a real port, read by a real browser, signed in as an admin.

The numbers a marketer sees are checked against counts taken straight from the database with
plain SQL, not against `keepflow report` (which the page is built on): a page that drifted from
the data would fail here.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import select, text

from keepflow.store import Customer, Database, Event, Message, Order, Run, Suppression, access
from keepflow.store.scores import CustomerScore
from tests.browser import browser
from tests.helpers import PASSWORD, serving_admin

NOW = datetime.now(timezone.utc).replace(microsecond=0)
NO_EMAIL = "customer has no email address"
EVIL_BODY = ("<p>Hello <b>Nok</b></p><script>parent.document.body.setAttribute('data-pwned', 'yes');"
             "document.title = 'pwned'</script>")


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def message(id: int, workflow_id: str, step: str, channel: str, template: str, customer: str, status: str,
            created: datetime, error: str | None = None, body: str | None = None) -> Message:
    return Message(
        id=id, key=f"{workflow_id}:{step}", workflow_id=workflow_id, sequence_id=workflow_id.split("/")[0],
        step=step, channel=channel, category="transactional", template=template, customer_id=customer,
        recipient=f"{customer}@example.com", status=status, error=error, created_at=created,
        sent_at=created + timedelta(minutes=1) if status == "sent" else None,
        subject="Your order is confirmed" if channel == "email" and body else None, body=body,
    )


def notice(id: str, type: str, message_id: int, customer: str) -> Event:
    return Event(id=id, type=type, customer_id=customer, occurred_at=ago(20), payload={"data": {"message_id": message_id}})


def fill(db: Database) -> None:
    """A small shop: four customers, five runs, messages in every state, provider feedback, orders."""
    with db.session() as s:
        s.add_all(Customer(id=c, email=f"{c}@example.com", first_name=c.upper(), consents={"email": True},
                           attributes={}) for c in ("c1", "c2", "c3", "c4"))
        s.flush()
        s.add_all([
            Run(id="fulfilment/o1", sequence_id="fulfilment", customer_id="c1", started_at=ago(48)),
            Run(id="fulfilment/o2", sequence_id="fulfilment", customer_id="c2", started_at=ago(47)),
            Run(id="fulfilment/o3", sequence_id="fulfilment", customer_id="c3", started_at=ago(46),
                converted_at=ago(10), converted_event_id="e-goal"),
            Run(id="fulfilment/o4", sequence_id="fulfilment", customer_id="c4", started_at=ago(45)),
            Run(id="education/o1", sequence_id="education", customer_id="c1", started_at=ago(30)),
        ])
        s.add_all([
            message(1, "fulfilment/o1", "0", "email", "order_confirmed", "c1", "sent", ago(48), body=EVIL_BODY),
            message(2, "fulfilment/o2", "0", "email", "order_confirmed", "c2", "sent", ago(47), body="<p>Hi</p>"),
            message(3, "fulfilment/o3", "0", "email", "order_confirmed", "c3", "skipped", ago(46), error=NO_EMAIL),
            message(4, "fulfilment/o4", "0", "email", "order_confirmed", "c4", "sent", ago(45), body="<p>Hi</p>"),
            message(5, "fulfilment/o1", "2", "email", "order_shipped", "c1", "sent", ago(30), body="<p>Shipped</p>"),
            message(6, "fulfilment/o2", "2", "email", "order_shipped", "c2", "deferred", ago(29)),
            message(7, "fulfilment/o1", "3", "sms", "order_shipped", "c1", "pending", ago(29)),
            message(8, "fulfilment/o4", "3", "sms", "order_shipped", "c4", "sent", ago(28), body="Your parcel is on its way."),
            message(9, "education/o1", "1", "email", "education_basics", "c1", "failed", ago(6), error="provider said no"),
        ])
        s.add_all([
            notice("n1", "message.delivered", 1, "c1"), notice("n2", "message.delivered", 2, "c2"),
            notice("n3", "message.delivered", 4, "c4"), notice("n4", "message.opened", 1, "c1"),
            notice("n5", "message.opened", 1, "c1"),  # a second open of the same message counts once
            notice("n6", "message.clicked", 1, "c1"), notice("n7", "message.delivered", 5, "c1"),
        ])
        # c1 orders an hour after message 5 (transactional) went out: attributed to no message.
        s.add(Order(id="o9", customer_id="c1", total=Decimal("120.00"), currency="THB", items=[], created_at=ago(29)))
        s.add(Suppression(channel="email", address="c2@example.com", scope="marketing", reason="unsubscribe",
                          source="unsubscribe_link", customer_id="c2", created_at=ago(12)))
        s.add(CustomerScore(customer_id="c1", recency_days=1, orders_count=1, monetary=Decimal("120.00"), r=5, f=1,
                            m=3, segment="new_customers", level="first-time", fit="grow", computed_at=ago(1)))


def counted(db: Database, sequence_id: str) -> dict[str, dict[str, int]]:
    """Per step, the funnel counted with plain SQL from the rows themselves."""
    funnel: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with db.engine.connect() as c:
        for step, status, n in c.execute(text(
                "SELECT step, status, count(*) FROM messages WHERE sequence_id = :s GROUP BY step, status"),
                {"s": sequence_id}):
            funnel[step]["entered"] += n
            metric = {"pending": "waiting", "deferred": "waiting", "sending": "waiting", "unknown": "failed"}.get(status, status)
            funnel[step][metric] += n
        # JSON paths are spelt differently per database (CI runs this on PostgreSQL too).
        message_id = ("e.payload #>> '{data,message_id}'" if c.dialect.name == "postgresql"
                      else "json_extract(e.payload, '$.data.message_id')")
        for step, kind, n in c.execute(text(
                "SELECT m.step, e.type, count(DISTINCT m.id) FROM messages m JOIN events e "
                f"ON CAST({message_id} AS TEXT) = CAST(m.id AS TEXT) "
                "WHERE m.sequence_id = :s AND e.type LIKE 'message.%' GROUP BY m.step, e.type"), {"s": sequence_id}):
            funnel[step][kind.split(".")[1]] += n
    return funnel


class Cells(HTMLParser):
    """`data-metric` cells of each step row, per sequence section: {sequence: {step: {metric: text}}}."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        self.summary: dict[str, dict[str, str]] = defaultdict(dict)
        self.sequence = self.step = self.metric = self.summary_key = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-sequence" in a:
            self.sequence = a["data-sequence"]
        elif tag == "tr" and "data-step" in a:
            self.step = a["data-step"]
            self.found[self.sequence][self.step] = {}
        elif tag == "td" and "data-metric" in a:
            self.metric = a["data-metric"]
            self.found[self.sequence][self.step][self.metric] = ""
        elif tag == "span" and "data-summary" in a:
            self.summary_key = a["data-summary"]

    def handle_endtag(self, tag):
        if tag == "td":
            self.metric = None
        elif tag == "span":
            self.summary_key = None

    def handle_data(self, data):
        if self.metric:
            self.found[self.sequence][self.step][self.metric] += data
        elif self.summary_key:
            self.summary[self.sequence][self.summary_key] = data.strip()


def shown(html: str) -> Cells:
    parser = Cells()
    parser.feed(html)
    return parser


def first_number(cell: str) -> int:
    return int(re.match(r"\s*(\d+)", cell).group(1))


# -- the browser ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_browser_shows_the_funnel_the_database_holds(settings, db: Database, tmp_path: Path) -> None:
    fill(db)
    screenshot = tmp_path / "overview.png"
    admin = serving_admin(settings, db, role=None)
    async with admin as http, browser() as chromium:
        base = str(http.base_url).rstrip("/")
        access.add_user(db, "ada", PASSWORD, "admin")
        page = await chromium.new_page(viewport={"width": 1280, "height": 2000})
        started = time.monotonic()
        await page.goto(f"{base}/")  # to the sign-in form, and back once signed in
        await page.fill("#name", "ada")
        await page.fill("#password", PASSWORD)
        await page.click("#sign-in")
        await page.wait_for_url(f"{base}/")
        dom = await page.content()
        await page.screenshot(path=screenshot, full_page=True)
        await page.goto(f"{base}/messages/1")
        evil = await page.content()
        print(f"browser: sign-in and two pages in {time.monotonic() - started:.1f}s")

    page = shown(dom)
    for sequence_id in ("fulfilment", "education"):
        expected = counted(db, sequence_id)
        assert expected, f"the fixture has messages for {sequence_id}"
        for step, metrics in expected.items():
            cells = page.found[sequence_id][step]
            for metric, n in metrics.items():
                assert first_number(cells[metric]) == n, (sequence_id, step, metric, cells)
    # Steps of the current definition appear even before anything went out: zero, not missing.
    assert first_number(page.found["fulfilment"]["5"]["entered"]) == 0
    # c1's order came an hour after fulfilment's shipping email, which is transactional: no credit.
    assert first_number(page.found["fulfilment"]["2"]["orders"]) == 0
    with db.engine.connect() as c:
        runs = dict(c.execute(text("SELECT sequence_id, count(*) FROM runs GROUP BY sequence_id")).all())
        converted = dict(c.execute(text(
            "SELECT sequence_id, count(*) FROM runs WHERE converted_at IS NOT NULL GROUP BY sequence_id")).all())
    assert page.summary["fulfilment"]["entered"] == str(runs["fulfilment"])
    # o3 reached its goal: one converted.
    assert page.summary["fulfilment"]["converted"] == str(converted["fulfilment"])
    # One figure: entered = converted + not converted.
    assert page.summary["fulfilment"]["not_converted"] == str(runs["fulfilment"] - converted["fulfilment"])
    # The email's script would mark the page's body and retitle it, had it run.
    assert re.search(r"<body[^>]*>", evil).group(0) == "<body>"
    assert re.search(r"<title>(.*?)</title>", evil).group(1) == "Message 1 · Keepflow"

    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, len(png)
    keep = os.environ.get("KEEPFLOW_KEEP_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(png)


# -- plain HTTP -------------------------------------------------------------------------------


def many(db: Database, count: int) -> None:
    with db.session() as s:
        s.add_all(
            message(100 + i, f"{'winback' if i % 3 else 'education'}/k{i}", "0", "email", "winback_first",
                    "c1", "sent", ago(200 - i))
            for i in range(count)
        )


def link(page: str, rel: str) -> str | None:
    found = re.search(rf'rel="{rel}" href="([^"]+)"', page)
    return found.group(1).replace("&amp;", "&") if found else None


async def follow(http, start: str, rel: str = "next") -> list[list[int]]:
    """The ids on each page reached by following `rel` links from `start`, as a reader would."""
    pages, url = [], start
    while url is not None:
        answer = await http.get(url)
        assert answer.status_code == 200, url
        pages.append([int(i) for i in re.findall(r'<tr data-id="(\d+)"', answer.text)])
        url = link(answer.text, rel)
        assert len(pages) < 20, "the links go round in circles"
    return pages


async def test_messages_are_paginated_newest_first(settings, db: Database) -> None:
    fill(db)
    many(db, 120)
    async with serving_admin(settings, db) as http:
        by_number = [(await http.get("/messages", params={"page": n})) for n in (1, 2, 3, 4)]
        older = await follow(http, "/messages")
        winback = await follow(http, "/messages?sequence=winback")
        winback_2 = await http.get("/messages", params={"page": 2, "sequence": "winback"})
        second = await http.get(link(by_number[0].text, "next"))
        newer = await follow(http, link(second.text, "next"), rel="prev")
        bad = await http.get("/messages", params={"page": 0})
    with db.engine.connect() as c:
        everything = [r[0] for r in c.execute(text("SELECT id FROM messages ORDER BY id DESC"))]
        expected = [r[0] for r in c.execute(text("SELECT id FROM messages WHERE sequence_id = 'winback' ORDER BY id DESC"))]
    assert everything == list(range(219, 99, -1)) + list(range(9, 0, -1))
    # Page numbers (OFFSET) and the links' cursors give the same pages.
    ids = [[int(i) for i in re.findall(r'<tr data-id="(\d+)"', p.text)] for p in by_number]
    assert [len(i) for i in ids] == [50, 50, 29, 0]
    assert [i for page in ids for i in page] == everything
    assert older == ids[:3]
    assert 'href="/messages/219"' in by_number[0].text
    assert "No messages on this page." in by_number[3].text
    assert [i for page in winback for i in page] == expected and len(expected) == 80 and len(winback) == 2
    assert [int(i) for i in re.findall(r'<tr data-id="(\d+)"', winback_2.text)] == winback[1]
    assert link(second.text, "next") == f"/messages?page=3&before={ids[1][-1]}"
    # Back from page 3 to page 1, newest first on every page, and page 1 offers no newer page.
    assert newer == [ids[2], ids[1], ids[0]]
    assert bad.status_code == 422


async def test_message_page_shows_what_the_customer_got(settings, db: Database) -> None:
    fill(db)
    async with serving_admin(settings, db) as http:
        email, skipped, sms, failed, missing = [await http.get(f"/messages/{n}") for n in (1, 3, 8, 9, 404)]
    assert email.status_code == 200
    assert "Your order is confirmed" in email.text and 'id="status" class="status-sent">sent<' in email.text
    assert "delivered" in email.text and "opened" in email.text and "clicked" in email.text
    assert NO_EMAIL in skipped.text and "skipped before rendering" in skipped.text
    assert '<pre class="sms" id="sms">Your parcel is on its way.</pre>' in sms.text
    assert "provider said no" in failed.text
    assert missing.status_code == 404 and "There is no message number 404." in missing.text


async def test_an_email_cannot_run_script_in_the_dashboard(settings, db: Database) -> None:
    fill(db)
    async with serving_admin(settings, db) as http:
        page = await http.get("/messages/1")
    frames = re.findall(r"<iframe[^>]*>", page.text)
    assert len(frames) == 1
    [frame] = frames
    # Sandboxed with no allowances (no allow-scripts, no allow-same-origin), body escaped into srcdoc.
    assert re.search(r'\ssandbox=""', frame) and "allow-" not in frame
    assert "srcdoc=\"&lt;p&gt;Hello &lt;b&gt;Nok&lt;/b&gt;&lt;/p&gt;&lt;script&gt;parent.document" in frame
    assert "<script" not in page.text.lower()
    # No script may run at all: nothing is allowed that default-src 'none' forbids, scripts included.
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy


async def test_customer_timeline_in_time_order(settings, db: Database) -> None:
    fill(db)
    async with serving_admin(settings, db) as http:
        by_id = await http.get("/customers", params={"q": "c1"})
        by_email = await http.get("/customers", params={"q": "C2@Example.com"})
        unknown = await http.get("/customers", params={"q": "nobody@example.com"})
        empty = await http.get("/customers")
    assert by_id.status_code == 200 and 'data-customer="c1"' in by_id.text
    assert "new_customers (first-time)" in by_id.text
    times = re.findall(r'<tr data-kind="\w+"><td>([\d-]+ [\d:]+)</td>', by_id.text)
    kinds = re.findall(r'<tr data-kind="(\w+)">', by_id.text)
    assert times == sorted(times) and len(times) == len(kinds)
    # c1: 2 runs, 4 messages, 5 delivery events, 1 order.
    assert {k: kinds.count(k) for k in set(kinds)} == {"run": 2, "message": 4, "event": 5, "order": 1}
    assert 'href="/messages/9"' in by_id.text and '<a href="/messages/5">message.delivered</a>' in by_id.text
    assert 'data-customer="c2"' in by_email.text and "unsubscribe, from unsubscribe_link" in by_email.text
    assert "not scored yet" in by_email.text
    # c2 gave email consent and later unsubscribed: the card says what holds now, not the old "yes".
    consents = re.search(r"<dt>consents</dt><dd>(.*?)</dd>", by_email.text, re.S).group(1)
    assert "email: yes" not in consents and "unsubscribed from marketing" in consents, consents
    assert "email: yes" in re.search(r"<dt>consents</dt><dd>(.*?)</dd>", by_id.text, re.S).group(1)
    assert unknown.status_code == 404 and "No customer has the id, email address or LINE user id" in unknown.text
    assert empty.status_code == 200 and 'data-customer' not in empty.text


async def test_a_bad_period_is_explained(settings, db: Database) -> None:
    async with serving_admin(settings, db) as http:
        answer = await http.get("/", params={"since": "last tuesday"})
    assert answer.status_code == 400 and "is not a period" in answer.text


async def test_each_sequence_shows_its_flowchart(settings, db):
    """The overview draws every sequence (keepflow/insights/graph.py's SVG), its steps labelled."""
    import xml.etree.ElementTree as ET

    from keepflow.insights import graph
    from tests.engine import CATALOG

    async with serving_admin(settings, db) as http:
        page = (await http.get("/")).text
    for sequence in CATALOG.file.sequences:
        section = page.split(f'id="seq-{sequence.id}"', 1)[1].split("</section>", 1)[0]
        svg = section.split('<details class="flowchart">', 1)[1].split("</details>", 1)[0]
        drawn = ET.fromstring(svg[svg.index("<svg"):])
        texts = " ".join(t.text or "" for t in drawn.iter("{http://www.w3.org/2000/svg}text"))
        for _, step in sequence.walk():
            assert graph.label_of(step).split()[0] in texts


async def test_emails_of_unknown_outcome_are_counted_listed_and_explained(settings, db: Database) -> None:
    """A worker that died in the SendGrid call leaves `unknown` emails: the overview counts them
    (whenever sent), links to their list, and the list says what to do with each."""
    fill(db)
    lost = "an earlier attempt stopped during the provider call; not resent (email is at-most-once)"
    with db.session() as s:
        s.add_all([
            message(10, "fulfilment/o3", "2", "email", "order_shipped", "c3", "unknown", ago(3), error=lost),
            # Long before the overview's period: it still waits for a decision.
            message(11, "education/o1", "2", "email", "education_lighting", "c1", "unknown", ago(24 * 90),
                    error=lost),
        ])
    async with serving_admin(settings, db, role="marketer", name="mia") as http:
        overview = (await http.get("/")).text
        listed = (await http.get("/messages/unknown")).text
        one = (await http.get("/messages/10")).text
    assert audit_rows(db) == []
    async with serving_admin(settings, db, role="admin", name="ada") as http:
        whole = (await http.get("/messages/unknown")).text

    note = re.search(r'<p class="note" id="unknown-note">(.*?)</p>', overview, re.S).group(1)
    assert '<a href="/messages/unknown">2\n  messages of unknown outcome</a> need a decision' in note
    rows = dict(re.findall(r'<tr data-id="(\d+)">(.*?)</tr>', listed, re.S))
    assert list(rows) == ["10", "11"]  # newest first; the sent and failed messages are not there
    cells = [re.sub(r"<[^>]+>", "", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", rows["10"], re.S)]
    assert cells[2:6] == [["fulfilment"], ["2"], ["email"], ["order_shipped"]]
    assert cells[6] == ["c3", "c•••@e•••.com"] and "c3@example.com" not in listed
    assert " ".join(cells[7]) == lost
    assert " ".join(cells[1]) == f"{ago(3):%Y-%m-%d %H:%M}"
    for command in ("keepflow messages resolve ID --sent", "keepflow messages resolve ID --resend",
                    "keepflow messages resolve ID --dismiss", "keepflow messages unknown"):
        assert command in listed
    assert 'id="decide"' in one and 'href="/messages/unknown#resolve"' in one
    # An admin sees the addresses whole, and that view is audited.
    assert "c3@example.com" in whole
    assert [(e.who, e.view, e.detail) for e in audit_rows(db)] == [("ada", "messages", "unknown outcome: 10, 11")]


async def test_no_unknown_note_when_nothing_waits(settings, db: Database) -> None:
    fill(db)
    async with serving_admin(settings, db) as http:
        overview = (await http.get("/")).text
        listed = (await http.get("/messages/unknown")).text
    assert 'id="unknown-note"' not in overview
    assert "None: nothing to decide." in listed


def audit_rows(db: Database) -> list[access.AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(access.AuditEntry).order_by(access.AuditEntry.id)))


async def test_times_are_shown_in_the_shops_time_zone(settings, db: Database) -> None:
    import dataclasses

    from tests.engine import CATALOG

    fill(db)
    bangkok = dataclasses.replace(CATALOG, file=CATALOG.file.model_copy(update={
        "rules": CATALOG.file.rules.model_copy(update={"timezone": "Asia/Bangkok"})}))
    async with serving_admin(settings, db) as http:
        in_utc = (await http.get("/messages/5")).text
    async with serving_admin(settings, db, catalog=bangkok) as http:
        local = (await http.get("/messages/5")).text
        listed = (await http.get("/messages")).text
    created = ago(30)
    assert f"{created:%Y-%m-%d %H:%M} UTC" in in_utc
    assert f"{(created + timedelta(hours=7)):%Y-%m-%d %H:%M} Asia/Bangkok" in local
    assert "created (Asia/Bangkok)" in listed


def test_steps_read_as_words_not_paths() -> None:
    from keepflow.http.dashboard.queries import readable_path

    assert readable_path("6.on_timeout.0.then.1") == "step 7 › on timeout › step 1 › if yes › step 2"
    assert readable_path("1.then.0.offer.1") == "step 2 › if yes › step 1 › variant offer › step 2"
    assert readable_path("shipped") == "shipped"


async def test_a_named_step_shows_its_name(settings, db: Database) -> None:
    import dataclasses

    from tests.engine import CATALOG

    fill(db)
    fulfilment = CATALOG.file.by_id()["fulfilment"]
    steps = list(fulfilment.steps)
    steps[2] = steps[2].model_copy(update={"name": "Shipping email"})
    file = CATALOG.file.model_copy(update={"sequences": [
        s.model_copy(update={"steps": steps}) if s.id == "fulfilment" else s for s in CATALOG.file.sequences]})
    async with serving_admin(settings, db, catalog=dataclasses.replace(CATALOG, file=file)) as http:
        page = (await http.get("/sequences/fulfilment")).text
    row = re.search(r'<tr data-step="2"[^>]*>\s*<td[^>]*>(.*?)</td>', page, re.S).group(1)
    assert row.startswith("Shipping email"), row
    assert re.search(r'<tr data-step="0"[^>]*>\s*<td[^>]*>step 1', page), "an unnamed step reads as words"


async def test_a_split_shows_its_arms_side_by_side(settings, db: Database) -> None:
    fill(db)
    async with serving_admin(settings, db) as http:
        page = (await http.get("/sequences/cross_sell")).text
    table = re.search(r'<table class="ab-test"[^>]*>(.*?)</table>', page, re.S).group(1)
    assert re.findall(r'data-variant="(\w+)"', table) == ["plain", "offer"]
    assert "too early to tell" in table


async def test_a_customer_is_found_by_their_line_user_id(settings, db: Database) -> None:
    # A LINE user writes to the shop's account: the operator has their LINE user id, nothing else.
    line_id = "U" + "0123456789abcdef" * 2
    with db.session() as s:
        s.add(Customer(id="c-line", line_user_id=line_id, consents={"line": True}, attributes={}))
    async with serving_admin(settings, db) as http:
        found = await http.get("/customers", params={"q": f"  {line_id}  "})
        unknown = await http.get("/customers", params={"q": "U" + "f" * 32})
    assert found.status_code == 200 and 'data-customer="c-line"' in found.text
    assert "line: yes" in re.search(r"<dt>consents</dt><dd>(.*?)</dd>", found.text, re.S).group(1)
    assert unknown.status_code == 404
