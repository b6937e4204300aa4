"""`keepflow report`: attribution of orders to the last message, per-step counts, KPIs, JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.insights.report import Attribution, attribute, build_report, parse_since, variant_of
from keepflow.settings import get_settings
from keepflow.store import Customer, Database, Event, Message, Order, Run

SINCE = datetime(2024, 3, 1, tzinfo=timezone.utc)
NOW = datetime(2024, 3, 31, tzinfo=timezone.utc)


def at(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2024, month, day, hour, tzinfo=timezone.utc)


def message(id: int, workflow_id: str, step: str, channel: str, template: str, customer: str, status: str,
            created: datetime, sent: datetime | None = None, error: str | None = None) -> Message:
    return Message(
        id=id, key=f"{workflow_id}:{step}", workflow_id=workflow_id, sequence_id=workflow_id.split("/")[0], step=step,
        channel=channel, category="marketing", template=template, customer_id=customer, recipient=f"{customer}@x",
        status=status, error=error, created_at=created, sent_at=sent,
    )


def run(id: str, customer: str, started: datetime, converted: datetime | None = None) -> Run:
    return Run(id=id, sequence_id=id.split("/")[0], customer_id=customer, started_at=started, converted_at=converted)


def order(id: str, customer: str, total: str, currency: str, created: datetime) -> Order:
    return Order(id=id, customer_id=customer, total=Decimal(total), currency=currency, items=[], created_at=created)


def notice(id: str, type: str, message_id: int | str, customer: str) -> Event:
    return Event(id=id, type=type, customer_id=customer, occurred_at=at(10), payload={"data": {"message_id": message_id}})


NO_EMAIL = "customer has no email address"
NO_SMS = "customer has no sms address"


@pytest.fixture
def shop(db: Database) -> Database:
    with db.engine.begin() as connection:
        # The RFM feature's table: absent unless a test creates it.
        connection.execute(text("DROP TABLE IF EXISTS customer_scores"))
    with db.session() as s:
        s.add_all(Customer(id=c, consents={}, attributes={}) for c in ("c1", "c2", "c3", "c4", "c5"))
        s.flush()
        s.add_all([
            run("welcome/c1", "c1", at(2)),
            run("welcome/c2", "c2", at(2), converted=at(4)),   # goal reached and an attributed order: once
            run("welcome/c3", "c3", at(3)),
            run("welcome/c5", "c5", at(3), converted=at(5)),   # goal reached, no attributed order
            run("welcome/c4", "c4", at(15, month=2)),          # started before the period: not entered
            run("winback/c1", "c1", at(5)),
            run("winback/c5", "c5", at(5)),
            run("winback/c3", "c3", at(5)),
        ])
        s.add_all([
            message(1, "welcome/c1", "0", "email", "welcome", "c1", "sent", at(4, 10), at(4, 10)),
            message(2, "winback/c1", "2.offer.0", "email", "winback_offer", "c1", "sent", at(6, 9), at(6, 9)),
            message(3, "welcome/c2", "0", "email", "welcome", "c2", "sent", at(2, 10), at(2, 10)),
            message(4, "welcome/c3", "0", "email", "welcome", "c3", "skipped", at(3), error=NO_EMAIL),
            message(5, "welcome/c5", "0", "email", "welcome", "c5", "skipped", at(3), error=NO_EMAIL),
            message(6, "welcome/c1", "1", "sms", "welcome_sms", "c1", "failed", at(5), error="provider said no"),
            message(7, "welcome/c2", "1", "sms", "welcome_sms", "c2", "unknown", at(5), error="outcome unknown"),
            message(8, "welcome/c3", "1", "sms", "welcome_sms", "c3", "skipped", at(5), error=NO_SMS),
            message(9, "winback/c5", "2.plain.0", "email", "winback_plain", "c5", "sent", at(6), at(6)),
            message(10, "winback/c3", "0", "email", "winback_intro", "c3", "pending", at(6)),
            # Before the period: its step counts nothing, and its order (o6) is not reported.
            message(11, "welcome/c4", "0", "email", "welcome", "c4", "sent", at(18, month=2), at(18, month=2)),
        ])
        s.add_all([
            order("o7", "c1", "20.00", "USD", at(6, 9)),      # same instant as message 2: goes to message 1
            order("o2", "c2", "50.00", "EUR", at(7, 10)),     # exactly 5 days after message 3: attributed
            order("o1", "c1", "100.00", "USD", at(7, 12)),    # after messages 1 and 2: the later one (2)
            order("o3", "c2", "30.00", "USD", at(8, 9)),      # 5 days 23 hours after message 3: not
            order("o4", "c5", "1000.50", "THB", at(9)),       # 3 days after message 9
            order("o5", "c3", "15.00", "USD", at(10)),        # c3 was never sent anything: not
            order("o6", "c4", "40.00", "USD", at(19, month=2)),  # before the period: not
        ])
        s.add_all([
            notice("d1", "message.delivered", 1, "c1"),
            notice("d2", "message.delivered", 2, "c1"),
            notice("d3", "message.delivered", 3, "c2"),
            notice("o2a", "message.opened", 2, "c1"),
            notice("o2b", "message.opened", 2, "c1"),          # a second open of the same message
            notice("o9", "message.opened", "9", "c5"),         # the id as a string works too
            notice("k2", "message.clicked", 2, "c1"),
            notice("u3", "message.unsubscribed", 3, "c2"),
            notice("x1", "message.bounced", 1, "c1"),          # not a type the report counts
            Event(id="e1", type="order.created", customer_id="c1", occurred_at=at(7), payload={"data": {}}),
        ])
    return db


def test_variant_of_step_paths() -> None:
    assert variant_of("1.then.0.offer.1") == "offer"
    assert variant_of("ab_test.offer.send_it") == "offer"
    assert variant_of("0.a.2.b.0") == "a/b"
    assert variant_of("3.on_timeout.0.else.1") is None
    assert variant_of("0") is None


def test_parse_since() -> None:
    assert parse_since("30d", now=NOW) == at(1)
    assert parse_since("2024-03-01") == SINCE
    assert parse_since("2024-03-01T07:00:00+07:00") == datetime(2024, 3, 1, 7, tzinfo=timezone(timedelta(hours=7)))
    with pytest.raises(ValueError):
        parse_since("thirty days")


def test_attribution_goes_to_the_last_message_within_the_window(shop: Database) -> None:
    assert attribute(shop, SINCE) == [
        Attribution(order_id="o7", customer_id="c1", revenue=Decimal("20.00"), currency="USD",
                    order_created_at=at(6, 9), message_id=1, workflow_id="welcome/c1", sequence_id="welcome",
                    step="0", channel="email", template="welcome", variant=None, sent_at=at(4, 10)),
        Attribution(order_id="o2", customer_id="c2", revenue=Decimal("50.00"), currency="EUR",
                    order_created_at=at(7, 10), message_id=3, workflow_id="welcome/c2", sequence_id="welcome",
                    step="0", channel="email", template="welcome", variant=None, sent_at=at(2, 10)),
        Attribution(order_id="o1", customer_id="c1", revenue=Decimal("100.00"), currency="USD",
                    order_created_at=at(7, 12), message_id=2, workflow_id="winback/c1", sequence_id="winback",
                    step="2.offer.0", channel="email", template="winback_offer", variant="offer", sent_at=at(6, 9)),
        Attribution(order_id="o4", customer_id="c5", revenue=Decimal("1000.50"), currency="THB",
                    order_created_at=at(9), message_id=9, workflow_id="winback/c5", sequence_id="winback",
                    step="2.plain.0", channel="email", template="winback_plain", variant="plain", sent_at=at(6)),
    ]
    # A longer window reaches o3 (5 d 23 h after message 3); a later start drops the earlier orders.
    assert [(a.order_id, a.message_id) for a in attribute(shop, SINCE, window=timedelta(days=6))] == [
        ("o7", 1), ("o2", 3), ("o1", 2), ("o3", 3), ("o4", 9)]
    assert [a.order_id for a in attribute(shop, at(7, 11))] == ["o1", "o4"]
    # since in another zone means the same instant.
    assert [a.order_id for a in attribute(shop, datetime(2024, 3, 7, 18, tzinfo=timezone(timedelta(hours=7))))] == [
        "o1", "o4"]


def test_report_per_sequence_and_step(shop: Database) -> None:
    report = build_report(shop, SINCE, now=NOW)
    assert [s.model_dump() for s in report.sequences] == [
        {"sequence_id": "welcome", "entered": 4, "converted": 3, "conversion_rate": 0.75, "orders": 2,
         "revenue": {"EUR": Decimal("50.00"), "USD": Decimal("20.00")}},
        {"sequence_id": "winback", "entered": 3, "converted": 2, "conversion_rate": 0.6667, "orders": 2,
         "revenue": {"THB": Decimal("1000.50"), "USD": Decimal("100.00")}},
    ]
    zero = dict(entered=0, sent=0, skipped=0, skipped_reasons={}, failed=0, unknown=0, in_flight=0, delivered=0,
                opened=0, clicked=0, unsubscribed=0, orders=0, revenue={})
    assert [s.model_dump() for s in report.steps] == [
        {**zero, "sequence_id": "welcome", "step": "0", "channel": "email", "template": "welcome", "variant": None,
         "entered": 4, "sent": 2, "skipped": 2, "skipped_reasons": {NO_EMAIL: 2}, "delivered": 2, "unsubscribed": 1,
         "orders": 2, "revenue": {"EUR": Decimal("50.00"), "USD": Decimal("20.00")}},
        {**zero, "sequence_id": "welcome", "step": "1", "channel": "sms", "template": "welcome_sms", "variant": None,
         "entered": 3, "skipped": 1, "skipped_reasons": {NO_SMS: 1}, "failed": 1, "unknown": 1},
        {**zero, "sequence_id": "winback", "step": "0", "channel": "email", "template": "winback_intro",
         "variant": None, "entered": 1, "in_flight": 1},
        {**zero, "sequence_id": "winback", "step": "2.offer.0", "channel": "email", "template": "winback_offer",
         "variant": "offer", "entered": 1, "sent": 1, "delivered": 1, "opened": 1, "clicked": 1,
         "orders": 1, "revenue": {"USD": Decimal("100.00")}},
        {**zero, "sequence_id": "winback", "step": "2.plain.0", "channel": "email", "template": "winback_plain",
         "variant": "plain", "entered": 1, "sent": 1, "opened": 1,
         "orders": 1, "revenue": {"THB": Decimal("1000.50")}},
    ]
    k = report.kpis
    assert (k.entered, k.converted, k.conversion_rate) == (7, 5, 0.7143)
    assert (k.sent, k.delivered, k.opened, k.clicked, k.unsubscribed) == (4, 3, 2, 1, 1)
    assert (k.unsubscribe_rate, k.actions_per_engagement) == (0.3333, 0.75)
    assert (k.orders, k.revenue) == (4, {"EUR": Decimal("50.00"), "THB": Decimal("1000.50"), "USD": Decimal("120.00")})
    # Lifetime value over every order ever stored, five buyers, no RFM table: one group.
    assert [c.model_dump() for c in k.clv_by_segment] == [
        {"segment": "all", "customers": 5,
         "clv": {"EUR": Decimal("10.00"), "THB": Decimal("200.10"), "USD": Decimal("41.00")}},
    ]


def test_report_for_one_sequence(shop: Database) -> None:
    report = build_report(shop, SINCE, sequence_id="winback", now=NOW)
    assert [(s.sequence_id, s.entered, s.converted, s.orders) for s in report.sequences] == [("winback", 3, 2, 2)]
    assert [r.step for r in report.steps] == ["0", "2.offer.0", "2.plain.0"]
    k = report.kpis
    assert (k.entered, k.converted, k.conversion_rate, k.sent, k.delivered, k.unsubscribed) == (3, 2, 0.6667, 2, 1, 0)
    assert (k.unsubscribe_rate, k.actions_per_engagement) == (0.0, 1.5)
    assert k.revenue == {"THB": Decimal("1000.50"), "USD": Decimal("100.00")}


def test_messages_needing_a_decision_are_counted_whenever_created(shop: Database) -> None:
    """An `unknown` message waits for an operator, so the report counts it whatever the period."""
    with shop.session() as s:
        s.add(message(12, "winback/c4", "0", "email", "winback_intro", "c4", "unknown", at(10, month=1),
                      error="outcome unknown"))
    assert build_report(shop, SINCE, now=NOW).needs_decision == 2  # message 7 and the January one
    assert build_report(shop, SINCE, sequence_id="winback", now=NOW).needs_decision == 1
    with shop.session() as s:
        s.execute(text("UPDATE messages SET status = 'sent' WHERE status = 'unknown'"))
    assert build_report(shop, SINCE, now=NOW).needs_decision == 0


def test_unsubscribe_rate_falls_back_to_sent_without_delivery_events(shop: Database) -> None:
    with shop.session() as s:
        s.execute(text("DELETE FROM events WHERE type = 'message.delivered'"))
    k = build_report(shop, SINCE, now=NOW).kpis
    assert (k.delivered, k.sent, k.unsubscribed, k.unsubscribe_rate) == (0, 4, 1, 0.25)


def test_lifetime_value_by_rfm_segment(shop: Database) -> None:
    with shop.engine.begin() as connection:
        connection.execute(text("CREATE TABLE customer_scores (customer_id VARCHAR(128) PRIMARY KEY, segment VARCHAR(64))"))
        connection.execute(text("INSERT INTO customer_scores VALUES ('c1', 'champions'), ('c2', 'champions'), "
                                "('c5', 'at_risk')"))
    clv = build_report(shop, SINCE, now=NOW).kpis.clv_by_segment
    assert [(c.segment, c.customers, c.clv) for c in clv] == [
        ("at_risk", 1, {"THB": Decimal("1000.50")}),
        ("champions", 2, {"EUR": Decimal("25.00"), "USD": Decimal("75.00")}),
        ("unscored", 2, {"USD": Decimal("27.50")}),
    ]


@pytest.fixture
def cli_env(shop: Database, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", shop.url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_json(cli_env) -> None:
    result = CliRunner().invoke(app, ["report", "--since", "2024-03-01", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["since"], data["window"], data["sequence_id"]) == ("2024-03-01T00:00:00Z", "5d", None)
    assert data["sequences"][0] == {"sequence_id": "welcome", "entered": 4, "converted": 3, "conversion_rate": 0.75,
                                    "orders": 2, "revenue": {"EUR": "50.00", "USD": "20.00"}}
    assert data["steps"][0]["skipped_reasons"] == {NO_EMAIL: 2}
    assert data["needs_decision"] == 1
    assert data["kpis"]["revenue"] == {"EUR": "50.00", "THB": "1000.50", "USD": "120.00"}
    assert (data["kpis"]["conversion_rate"], data["kpis"]["unsubscribe_rate"], data["kpis"]["actions_per_engagement"]) \
        == (0.7143, 0.3333, 0.75)

    narrow = CliRunner().invoke(app, ["report", "--since", "2024-03-01", "--sequence", "winback", "--window", "2d",
                                      "--format", "json"])
    assert narrow.exit_code == 0, narrow.output
    data = json.loads(narrow.stdout)
    # Within two days only o7 (47 h after message 1, welcome) and o1 (27 h after message 2) are attributed.
    assert (data["window"], data["kpis"]["orders"], data["kpis"]["revenue"]) == ("2d", 1, {"USD": "100.00"})
    assert [(s["sequence_id"], s["converted"]) for s in data["sequences"]] == [("winback", 1)]


def test_cli_text_and_bad_options(cli_env) -> None:
    result = CliRunner().invoke(app, ["report", "--since", "2024-03-01"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for title in ("Sequences", "Steps", "Why steps were skipped", "KPIs", "Customer lifetime value by segment"):
        assert title in result.stdout
    assert "1000.50 THB, 100.00 USD" in result.stdout
    assert "71.4%" in result.stdout
    # The email of unknown outcome (message 7), and where to see it.
    assert "1 message(s) have an unknown outcome and need a decision" in result.stdout
    assert "`keepflow messages unknown` lists them" in result.stdout
    assert CliRunner().invoke(app, ["report", "--format", "xml"]).exit_code == 2
    assert CliRunner().invoke(app, ["report", "--window", "5"]).exit_code == 2
    assert CliRunner().invoke(app, ["report", "--since", "soon"]).exit_code == 2
