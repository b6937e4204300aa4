"""RFM scores against a reference computed here with plain loops over the generated data."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import insert, select

import keepflow.store.scores  # noqa: F401  (registers the score tables)
from keepflow.insights import rfm
from keepflow.store import Customer, Database, Event, Order, upgrade
from keepflow.store.scores import CustomerScore
from tests.databases import fresh_database

AS_OF = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
CUSTOMERS = 3000
ANY = {1, 2, 3, 4, 5}

# The documented segment table, row by row; exactly one row must match every (R, F, M).
TABLE = [
    ("champions", {4, 5}, {4, 5}, {4, 5}),
    ("loyal", {4, 5}, {4, 5}, {1, 2, 3}),
    ("loyal", {3}, {4, 5}, ANY),
    ("potential_loyalist", {4, 5}, {2, 3}, ANY),
    ("new", {4, 5}, {1}, ANY),
    ("need_attention", {3}, {1, 2, 3}, ANY),
    ("cant_lose", {1}, {4, 5}, {4, 5}),
    ("at_risk", {1}, {4, 5}, {1, 2, 3}),
    ("at_risk", {2}, {3, 4, 5}, ANY),
    ("at_risk", {1}, {3}, ANY),
    ("hibernating", {2}, {1, 2}, ANY),
    ("hibernating", {1}, {2}, ANY),
    ("lost", {1}, {1}, ANY),
]
RETAIN = {"champions", "loyal", "cant_lose", "at_risk"}
EXIT = {"hibernating", "lost"}


@dataclass
class Data:
    customers: list[str]
    orders: list[tuple[str, str, Decimal, datetime]] = field(default_factory=list)  # id, customer, total, at
    events: list[tuple[str, str, str]] = field(default_factory=list)  # id, type, customer


def generate(seed: int = 7) -> Data:
    rng = random.Random(seed)
    data = Data([f"c{i:05d}" for i in range(CUSTOMERS)])
    weights = [15, 30, 15, 10, 8, 6, 5, 3, 3, 2, 1, 1, 1]  # 0..12 orders, most buy once
    for customer in data.customers:
        for _ in range(rng.choices(range(13), weights)[0]):
            at = AS_OF - timedelta(days=rng.randrange(730), seconds=rng.randrange(86400))
            # Round amounts often, so that equal totals (ties) are common.
            total = Decimal(rng.choice([20, 25, 50, 100])) if rng.random() < 0.3 else Decimal(rng.randrange(500, 50000)) / 100
            data.orders.append((f"o{len(data.orders):06d}", customer, total.quantize(Decimal("0.01")), at))
    for i, customer in enumerate(rng.sample(data.customers, 90)):
        kind = ("review.submitted", "referral.created", "order.shipped")[i % 3]  # shipments make no advocate
        data.events.append((f"e{i:04d}", kind, customer))
    return data


def load(db: Database, data: Data) -> None:
    with db.session() as session:
        session.execute(insert(Customer), [{"id": c, "consents": {}, "attributes": {}} for c in data.customers])
        session.execute(insert(Order), [
            {"id": oid, "customer_id": c, "total": total, "currency": "USD", "items": [], "created_at": at}
            for oid, c, total, at in data.orders
        ])
        session.execute(insert(Event), [
            {"id": eid, "type": kind, "customer_id": c, "occurred_at": AS_OF - timedelta(days=3), "payload": {}}
            for eid, kind, c in data.events
        ])


def reference(data: Data, as_of: datetime) -> dict[str, dict]:
    """Straight from the definitions: score = 1 + floor(5 * (customers strictly worse) / n)."""
    last: dict[str, datetime] = {}
    count: Counter[str] = Counter()
    spent: dict[str, Decimal] = {}
    for _, customer, total, at in data.orders:
        count[customer] += 1
        spent[customer] = spent.get(customer, Decimal("0")) + total
        if customer not in last or at > last[customer]:
            last[customer] = at
    recency = {c: (as_of.date() - at.date()).days for c, at in last.items()}
    n = len(last)

    def scores(values: dict[str, object], worst_first: list[object], ties_up: bool = False) -> dict[str, int]:
        tally = Counter(values.values())
        worse, seen = {}, 0
        for value in worst_first:
            worse[value] = seen
            seen += tally[value]
        if ties_up:  # R = ceil(5 * up_to / n): a tie ranks at the top of its group
            return {c: -(-5 * (worse[v] + tally[v]) // n) for c, v in values.items()}
        return {c: 1 + 5 * worse[v] // n for c, v in values.items()}

    r = scores(recency, sorted(set(recency.values()), reverse=True), ties_up=True)  # more days = worse
    f = scores(dict(count), sorted(set(count.values())))
    m = scores(spent, sorted(set(spent.values())))
    advocates = {c for _, kind, c in data.events if kind in ("review.submitted", "referral.created")}
    expected = {}
    for c in data.customers:
        if c in last:
            segment = [name for name, rs, fs, ms in TABLE if r[c] in rs and f[c] in fs and m[c] in ms]
            assert len(segment) == 1
            row = dict(recency_days=recency[c], orders_count=count[c], monetary=spent[c], r=r[c], f=f[c], m=m[c],
                       segment=segment[0])
        else:
            row = dict(recency_days=None, orders_count=0, monetary=Decimal("0"), r=None, f=None, m=None,
                       segment="prospect")
        orders = row["orders_count"]
        row["level"] = ("advocate" if c in advocates else "repeat" if orders >= 2
                        else "first_time" if orders == 1 else "none")
        row["fit"] = "retain" if row["segment"] in RETAIN else "exit" if row["segment"] in EXIT else "grow"
        expected[c] = row
    return expected


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Data, dict[str, dict]]]:
    """The data set loaded and scored once; each test gets its own copy of the database."""
    with fresh_database(tmp_path_factory.mktemp("rfm")) as url:
        upgrade(url)
        db = Database(url)
        data = generate()
        load(db, data)
        assert rfm.refresh_all(db, AS_OF) == CUSTOMERS
        if db.engine.dialect.name == "sqlite":
            # The copy is of the file alone: fold the write-ahead log into it first.
            with db.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        # Copying needs the source idle (PostgreSQL refuses a template with open sessions).
        db.dispose()
        yield url, data, reference(data, AS_OF)


@pytest.fixture
def scored(base, tmp_path: Path) -> Iterator[tuple[Database, Data, dict[str, dict]]]:
    url, data, expected = base
    with fresh_database(tmp_path, template=url) as copy:
        db = Database(copy)
        yield db, data, expected
        db.dispose()


def stored(db: Database) -> dict[str, CustomerScore]:
    with db.session() as session:
        return {row.customer_id: row for row in session.scalars(select(CustomerScore))}


def test_every_customer_matches_the_reference(scored):
    db, data, expected = scored
    rows = stored(db)
    assert set(rows) == set(data.customers)
    mismatched = []
    for customer, want in expected.items():
        row = rows[customer]
        got = {name: getattr(row, name) for name in want}
        if got != want:
            mismatched.append((customer, got, want))
    assert not mismatched, mismatched[:5]
    # The data set exercises every segment, level and fit.
    assert {row.segment for row in rows.values()} == set(rfm.SEGMENTS)
    assert {row.level for row in rows.values()} == set(rfm.LEVELS)
    assert {row.fit for row in rows.values()} == set(rfm.FITS)


def test_equal_values_get_equal_scores(scored):
    db, _, _ = scored
    rows = [row for row in stored(db).values() if row.orders_count]
    for value, score in ((lambda s: s.recency_days, "r"), (lambda s: s.orders_count, "f"), (lambda s: s.monetary, "m")):
        by_value: dict[object, set[int]] = {}
        for row in rows:
            by_value.setdefault(value(row), set()).add(getattr(row, score))
        assert all(len(scores) == 1 for scores in by_value.values()), score
        assert sum(1 for v, n in Counter(value(row) for row in rows).items() if n > 1) > 10  # ties exist


def test_ties_by_hand():
    day = AS_OF - timedelta(days=10)
    counts = [1, 1, 1, 1, 1, 2, 2, 3, 4, 5]
    rows = [rfm.OrderStats(f"c{i}", day, n, Decimal("10.00")) for i, n in enumerate(counts)]
    rows.append(rfm.OrderStats("nobody", None, 0, Decimal("0")))
    cutoffs = rfm.Cutoffs.from_stats(rows)
    scores = {row.customer_id: rfm.score_customer(row, AS_OF, cutoffs, advocate=row.customer_id == "nobody")
              for row in rows}
    # below = 0, 5, 7, 8, 9 of n = 10 customers -> 1, 3, 4, 5, 5; F = 2 is skipped.
    assert [scores[f"c{i}"].f for i in range(10)] == [1, 1, 1, 1, 1, 3, 3, 4, 5, 5]
    # Everybody ties on R and M: recency ties go up (all ordered as recently as anyone: R = 5),
    # spend ties go down (M = 1).
    assert {(s.r, s.m) for s in scores.values() if s.orders_count} == {(5, 1)}
    nobody = scores["nobody"]
    assert (nobody.segment, nobody.level, nobody.fit, nobody.r, nobody.recency_days) == ("prospect", "advocate", "grow", None, None)


def test_the_segment_table_is_complete_and_exclusive():
    for r in ANY:
        for f in ANY:
            for m in ANY:
                names = [name for name, rs, fs, ms in TABLE if r in rs and f in fs and m in ms]
                assert names == [rfm.segment(r, f, m)], (r, f, m)
    assert rfm.segment(None, None, None) == "prospect"


def test_customers_without_orders_are_prospects(scored):
    db, data, _ = scored
    buyers = {customer for _, customer, _, _ in data.orders}
    rows = stored(db)
    for customer in set(data.customers) - buyers:
        row = rows[customer]
        assert (row.segment, row.r, row.f, row.m, row.recency_days, row.orders_count) == ("prospect", None, None, None, None, 0)
        assert row.level in ("none", "advocate")
    assert rfm.profile(db, "c-unknown") is None


def test_refresh_customer_after_a_new_order(scored):
    db, data, expected = scored
    once = next(c for c, row in sorted(expected.items()) if row["level"] == "first_time" and row["r"] <= 2)
    never = next(c for c, row in sorted(expected.items()) if row["level"] == "none")
    two_orders_f = next(row["f"] for row in expected.values() if row["orders_count"] == 2)
    later = AS_OF + timedelta(hours=2)
    with db.session() as session:
        for oid, customer in (("new-1", once), ("new-2", never)):
            session.add(Order(id=oid, customer_id=customer, total=Decimal("30.00"), currency="USD", items=[], created_at=later))

    moved = rfm.refresh_customer(db, once, later)
    assert moved == rfm.profile(db, once)
    json.dumps(moved)  # what conditions and templates see must be JSON-safe
    assert (moved["frequency"], moved["level"], moved["recency_days"], moved["r"]) == (2, "repeat", 0, 5)
    assert moved["f"] == two_orders_f  # scored against the stored cut points
    assert moved["monetary"] == float(expected[once]["monetary"] + Decimal("30.00"))
    assert moved["segment"] == rfm.segment(moved["r"], moved["f"], moved["m"])

    first = rfm.refresh_customer(db, never, later)
    assert (first["frequency"], first["level"], first["r"], first["f"]) == (1, "first_time", 5, 1)
    assert first["segment"] == "new" and first["fit"] == "grow"
    assert rfm.refresh_customer(db, "c-unknown", later) is None
    # Everyone else keeps the scores of the full refresh.
    rows = stored(db)
    assert all(rows[c].orders_count == expected[c]["orders_count"] for c in data.customers if c not in (once, never))


def test_refresh_customer_on_a_small_base_takes_cut_points_from_the_orders(db):
    with db.session() as session:
        session.add_all([Customer(id=c, consents={}, attributes={}) for c in ("a", "b", "c")])
        session.flush()
        session.add_all([
            Order(id="a1", customer_id="a", total=Decimal("10"), currency="USD", items=[], created_at=AS_OF - timedelta(days=300)),
            Order(id="b1", customer_id="b", total=Decimal("10"), currency="USD", items=[], created_at=AS_OF - timedelta(days=200)),
            Order(id="c1", customer_id="c", total=Decimal("50"), currency="USD", items=[], created_at=AS_OF),
            Order(id="c2", customer_id="c", total=Decimal("50"), currency="USD", items=[], created_at=AS_OF),
        ])
    profile = rfm.refresh_customer(db, "c", AS_OF)
    # n = 3: c is better than both others on every dimension -> F, M = 1 + 5 * 2 // 3 = 4, and
    # R = ceil(5 * 3 / 3) = 5.
    assert (profile["r"], profile["f"], profile["m"], profile["segment"]) == (5, 4, 4, "champions")
    assert rfm.last_refresh(db) is not None


def test_segment_table_adds_up(scored):
    db, data, _ = scored
    table = rfm.segment_table(db)
    assert [row.segment for row in table] == list(rfm.SEGMENTS)
    assert sum(row.customers for row in table) == CUSTOMERS
    assert sum(row.share_of_customers for row in table) == pytest.approx(1.0)
    assert sum(row.share_of_revenue for row in table) == pytest.approx(1.0)
    assert sum(row.revenue for row in table) == sum(total for _, _, total, _ in data.orders)
    prospects = table[-1]
    assert prospects.segment == "prospect" and prospects.revenue == 0 and prospects.share_of_revenue == 0


def test_fit_thresholds_are_configurable(scored):
    db, _, expected = scored
    with pytest.raises(ValidationError, match="in both retain and exit"):
        rfm.FitThresholds(exit=frozenset({"lost", "hibernating", "at_risk"}))
    with pytest.raises(ValidationError, match="no fit for prospect"):
        rfm.FitThresholds(grow=frozenset({"potential_loyalist", "new", "need_attention"}))
    with pytest.raises(ValidationError):
        rfm.FitThresholds(retain=frozenset({"champions", "vip"}))

    custom = rfm.FitThresholds(retain_min_monetary=4, advocates_never_exit=True)
    rfm.refresh_all(db, AS_OF, custom)
    rows = stored(db)
    for customer, want in expected.items():
        fit = want["fit"]
        if fit == "retain" and want["m"] < 4:
            fit = "grow"
        if fit == "exit" and want["level"] == "advocate":
            fit = "grow"
        assert rows[customer].fit == fit, customer


def test_segments_command(scored, monkeypatch):
    from typer.testing import CliRunner

    from keepflow.cli import app
    from keepflow.settings import get_settings

    db, _, _ = scored
    monkeypatch.setenv("DATABASE_URL", db.url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["segments", "--refresh"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    positions = [next(i for i, line in enumerate(lines) if f" {name} " in line) for name in rfm.SEGMENTS]
    assert positions == sorted(positions)
    assert f"{CUSTOMERS:,}" in result.output


def test_a_customer_who_bought_today_is_never_lost():
    """A new shop: one customer, or a few who all bought today. Their recency ties at the top."""
    for n in (1, 3):
        rows = [rfm.OrderStats(f"c{i}", AS_OF, 1, Decimal("10.00")) for i in range(n)]
        cutoffs = rfm.Cutoffs.from_stats(rows)
        scores = [rfm.score_customer(row, AS_OF, cutoffs) for row in rows]
        assert {(s.r, s.segment) for s in scores} == {(5, "new")}, n


async def test_a_condition_on_rfm_reads_a_customer_never_scored(env, fake, tmp_path, db):
    """A customer with no orders yet (a sign-up) has no scores: `customer.rfm` reads as a prospect's
    instead of failing the run."""
    from pathlib import Path

    from ruamel.yaml import YAML

    from keepflow.language.catalog import Catalog
    from keepflow.language.dsl import SequencesFile
    from keepflow.runtime.events import EventIn
    from keepflow.runtime.payloads import RunStatus
    from keepflow.runtime.routing import ingest
    from tests.engine import TEST_TEMPLATES, make_settings, running_worker
    from tests.helpers import NO_LIMITS

    data = YAML(typ="safe").load("""
sequences:
  - id: welcome
    category: transactional
    trigger: customer.updated
    key: customer.id
    steps:
      - if: customer.rfm.segment == 'prospect' and customer.rfm.frequency == 0
        then:
          - send: email
            template: note
""")
    file = SequencesFile.model_validate({**data, "rules": NO_LIMITS.model_dump(mode="json")})
    catalog = Catalog(path=Path("sequences.yaml"), templates_dir=TEST_TEMPLATES, file=file)
    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    event = EventIn.model_validate({"id": "signup-1", "type": "customer.updated", "occurred_at": AS_OF.isoformat(),
                                    "customer": {"id": "new-1", "email": "new@example.com"}})
    async with running_worker(env, settings, db) as tq:
        assert (await ingest(db, env.client, catalog, event, tq)).started == ["welcome/new-1"]
        status = await env.client.get_workflow_handle("welcome/new-1", result_type=RunStatus).result()
    assert [s.outcome for s in status.steps_done] == ["sent", "then"]
