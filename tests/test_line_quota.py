"""`rules.line.monthly_quota`: lint's worst case of LINE messages a month, and report's use this month."""

from __future__ import annotations

from datetime import datetime, timezone

from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.insights.line_quota import line_customers, line_sent_in_month
from keepflow.language.lint import lint, read_file
from keepflow.runtime.registry import check_catalog
from keepflow.settings import get_settings
from keepflow.store import Customer, Database, Message
from tests.helpers import write_project

QUOTA = """\
rules:
  line: {monthly_quota: 100}
  frequency_cap: {email: {max: 2, per: 24h}, line: {max: 1, per: 30d}}
sequences:
  - id: news
    category: marketing
    trigger: customer.created
    steps:
      - send: line
        template: tip
      - wait: 1d
      - send: line
        template: tip
      - wait: 1d
      - send: line
        template: tip
  - id: shipping
    category: transactional
    trigger: order.shipped
    steps:
      - send: line
        template: tip
      - wait: 2d
      - send: line
        template: tip
"""


def lint_of(tmp_path, text: str, customers: int | None):
    path = write_project(tmp_path, text, {"line/tip.en.txt": "hi"})
    file, problems = read_file(path)
    assert file is not None, problems
    return lint(file, tmp_path / "templates", line_customers=customers)


def test_the_worst_month_counts_every_line_push_and_the_cap_limits_the_marketing_ones(tmp_path):
    result = lint_of(tmp_path, QUOTA, customers=25)
    quota = result.line_quota
    assert quota is not None
    # news: 3 marketing pushes in 3 days, but the cap lets one through each 30 days: 2 in a
    # month of 31 days; shipping: 2 transactional ones, which the cap does not hold.
    assert (quota.marketing, quota.transactional, quota.per_customer) == (2, 2, 4)
    assert (quota.customers, quota.worst_month, quota.quota) == (25, 100, 100)
    assert not [f for f in result.findings if f.where == "line quota"]


def test_lint_warns_when_the_worst_month_exceeds_the_quota(tmp_path):
    result = lint_of(tmp_path, QUOTA.replace("line: {max: 1, per: 30d}", "line: {max: 5, per: 1d}"), customers=30)
    [finding] = [f for f in result.findings if f.where == "line quota"]
    assert finding.severity == "warning"
    assert finding.message == (
        "up to 5 LINE messages per customer in a month (3 marketing, 2 transactional) to 30 customers with a LINE "
        "user id: 150 a month, over the plan's monthly_quota of 100; LINE refuses pushes past it until the month "
        "ends. Send fewer LINE messages, move some to email, or raise the plan")


def test_without_a_customer_count_lint_says_how_to_give_one(tmp_path):
    result = lint_of(tmp_path, QUOTA, customers=None)
    [finding] = [f for f in result.findings if f.where == "line quota"]
    assert finding.severity == "info"
    assert "up to 4 LINE messages per customer in a month" in finding.message
    assert "--customers N" in finding.message


def test_no_quota_no_finding(tmp_path):
    result = lint_of(tmp_path, QUOTA.replace("  line: {monthly_quota: 100}\n", ""), customers=10**6)
    assert result.line_quota is None
    assert not [f for f in result.findings if f.where == "line quota"]


def line_customer(id: str, line_user_id: str | None) -> Customer:
    return Customer(id=id, consents={}, attributes={}, line_user_id=line_user_id)


def test_lint_counts_the_customers_with_a_line_user_id_in_the_store(tmp_path, db: Database, monkeypatch):
    with db.session() as s:
        s.add_all([line_customer(f"c{n}", f"U{n:032x}") for n in range(40)] + [line_customer("no-line", None)])
    assert line_customers(db) == 40
    path = write_project(tmp_path, QUOTA.replace("max: 1, per: 30d", "max: 5, per: 1d"), {"line/tip.en.txt": "hi"})
    monkeypatch.setenv("DATABASE_URL", db.url)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["lint", str(path)], env={"COLUMNS": "250"})
    assert "to 40 customers with a LINE user id: 200 a month, over the plan's monthly_quota of 100" in \
        " ".join(result.output.split())
    given = CliRunner().invoke(app, ["lint", str(path), "--customers", "10"], env={"COLUMNS": "250"})
    assert "LINE: up to 5 a customer a month × 10 customers = 50 of the monthly quota of 100" in \
        " ".join(given.output.split())


def sent_line(id: int, status: str, sent_at: datetime | None, channel: str = "line") -> Message:
    return Message(id=id, key=f"w{id}:0", workflow_id=f"w{id}", sequence_id="news", step="0", channel=channel,
                   category="marketing", template="tip", customer_id="c", recipient="U", status=status,
                   created_at=sent_at or datetime(2026, 12, 2, tzinfo=timezone.utc), sent_at=sent_at)


def test_report_counts_the_line_messages_sent_this_calendar_month(db: Database):
    with db.session() as s:
        s.add_all([
            sent_line(1, "sent", datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)),
            sent_line(2, "sent", datetime(2026, 12, 6, 23, 0, tzinfo=timezone.utc)),
            sent_line(3, "sent", datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc)),  # last month
            sent_line(4, "skipped", None),
            sent_line(5, "failed", None),
            sent_line(6, "sent", datetime(2026, 12, 3, tzinfo=timezone.utc), channel="sms"),
        ])
    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    assert line_sent_in_month(db, now, "UTC") == ("2026-12", 2)
    # In Bangkok (UTC+7) the month began at 17:00 UTC on 30 November.
    assert line_sent_in_month(db, now, "Asia/Bangkok") == ("2026-12", 3)


def test_report_shows_this_months_line_messages_against_the_quota(tmp_path, db: Database, monkeypatch):
    now = datetime.now(timezone.utc)
    with db.session() as s:
        s.add_all([sent_line(n, "sent", now) for n in range(1, 4)] + [sent_line(9, "skipped", None)])
    path = write_project(tmp_path, QUOTA, {"line/tip.en.txt": "hi"})
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("KEEPFLOW_SEQUENCES", str(path))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["report"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert f"LINE messages sent in {now:%Y-%m} (UTC): 3 of the monthly quota of 100 (3%)" in result.output
    as_json = CliRunner().invoke(app, ["report", "--format", "json"])
    assert '"line_month": {' in as_json.output and '"sent": 3' in as_json.output and '"quota": 100' in as_json.output


def test_report_leaves_the_quota_out_when_none_is_set(tmp_path, db: Database, monkeypatch):
    path = write_project(tmp_path, QUOTA.replace("  line: {monthly_quota: 100}\n", ""), {"line/tip.en.txt": "hi"})
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("KEEPFLOW_SEQUENCES", str(path))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["report"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "monthly quota" not in result.output


def test_validate_places_a_bad_quota(tmp_path):
    path = write_project(tmp_path, QUOTA.replace("monthly_quota: 100", "monthly_quota: 0"), {"line/tip.en.txt": "hi"})
    _, problems = check_catalog(path)
    [problem] = [p for p in problems if p.severity == "error"]
    assert (problem.line, problem.column) == (2, 25), problem.format()
    assert "monthly_quota" in problem.message
