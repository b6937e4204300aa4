"""RFM scores, segments, customer levels and fit, from the orders in the database.

What a customer is scored on (all orders stored for them, whatever their date or currency):

* recency_days: whole UTC calendar days from the date of the last order to the date of `as_of`
  (0 when the last order is on that day or later);
* frequency: the number of orders;
* monetary: the sum of the order totals, as stored. Totals in different currencies are added as
  they are: the scores assume one store currency. Refunds are not subtracted (orders carry none).

Quintile scores (R, F, M = 1..5)
--------------------------------
Taken over the n customers with at least one order; for each dimension "better" means a more
recent last order (R; equivalently fewer recency days), more orders (F), more spent (M). With
`below` = the number of those customers whose value is strictly worse,

    score = 1 + floor(5 * below / n)

(in pandas terms: `1 + floor(5 * (rank(method="min") - 1) / n)`). Equal values always get equal
scores, because ties share the lowest rank of their group; the worst value always scores 1; a
score is skipped when a tie group spans its whole band (when half the buyers ordered once they
all get F = 1 and the two-order customers F = 3; nobody gets F = 2). A customer is placed in the
top quintile by being better than at least 80 % of the others, never by the order of a sort.
R is ranked by the UTC date of the last order, so two customers whose last orders fall on the
same day tie, and the ranking does not depend on `as_of`.

Recency ties go up, not down. With `up_to` = the number of customers whose last order is no
more recent than this one's (this customer included),

    R = ceil(5 * up_to / n)

(pandas: `ceil(5 * rank(method="max") / n)`). Customers who ordered on the same day are ranked
together at the top of their group, so the most recent buyers score 5 however many share the
day: a new shop's first customer, or everyone who bought today, is never "lost" (with the rule
above, a group tied at the top scored 1). For n a multiple of 5 without ties it gives the same
scores as the rule above.

Cut points. The same scores are stated as four cut points per dimension: the smallest value that
scores 2, 3, 4 and 5 (None for a skipped score); a value scores the highest k whose cut point it
reaches. `refresh_all` stores them in the one-row table `score_cutoffs`, and
`refresh_customer` scores a single customer against them, so one new order moves that customer
without re-ranking everybody: it is exact for the refreshed customer's value against the
population of the last full refresh, and every other customer keeps the scores of that refresh
until the next one. The cut points are stored rather than re-derived from `customer_scores`
because recency days there were counted from different `as_of`s. While fewer than
`MIN_STORED_POPULATION` customers have orders the cut points are re-taken from the orders on
every `refresh_customer` (quintiles of a handful of customers are noise, and a new shop's first
buyers would otherwise wait a day for a score). That pass reads every buyer, inside the
transaction that stores an order: at 400 buyers it cost 5.3 ms of CPU per order against 1.5 ms
with stored cut points, so the threshold stays low (100 buyers, 20 to a quintile).

Segments
--------
A complete and exclusive table over the 125 (R, F, M) cells; evaluated as written in `segment`:

    segment              R     F     M
    champions            4-5   4-5   4-5
    loyal                4-5   4-5   1-3
                         3     4-5   any
    potential_loyalist   4-5   2-3   any
    new                  4-5   1     any
    need_attention       3     1-3   any
    cant_lose            1     4-5   4-5
    at_risk              1     4-5   1-3
                         2     3-5   any
                         1     3     any
    hibernating          2     1-2   any
                         1     2     any
    lost                 1     1     any
    prospect             no orders (R, F, M are null)

The same as an R x F grid (M only splits the F 4-5 column):

           F=1              F=2                  F=3                  F=4-5
    R=4-5  new              potential_loyalist   potential_loyalist   champions (M>=4), loyal (M<=3)
    R=3    need_attention   need_attention       need_attention       loyal
    R=2    hibernating      hibernating          at_risk              at_risk
    R=1    lost             hibernating          at_risk              cant_lose (M>=4), at_risk (M<=3)

It follows the common conventions, which agree on the names and rough regions but publish
overlapping ranges (the first matching row wins) and differ at the edges:

* the R `rfm` package, `rfm_segment()` examples (Champions, Loyal Customers, Potential Loyalist,
  New Customers, Promising, Need Attention, About To Sleep, At Risk, Can't Lose Them, Lost):
  https://search.r-project.org/CRAN/refmans/rfm/html/rfm_segment.html
* the R-vs-(F&M) table of churned.io (Champion R4-5/FM4-5, Loyalist R2-5/FM3-5, Potential
  Loyalist R3-5/FM1-3, New R4-5/FM0-1, Need Attention R2-3/FM2-3, At Risk R0-2/FM2-5,
  Hibernating R1-2/FM1-2, Lost R0-2/FM0-2):
  https://docs.churned.io/churned-docs/dashboard-and-features/rfv-model-segment-best-practices/rfm-model
* Bloomreach's 11 segments and how to treat each:
  https://documentation.bloomreach.com/engagement/docs/rfm-segmentation-business-use
* "prospect" for customers without orders, as Shopify's `CustomerRfmGroup.PROSPECTS`:
  https://shopify.dev/docs/api/admin-graphql/unstable/enums/customerrfmgroup

Differences, deliberately: segments are split on R and F, with M deciding only between
champions/loyal and cant_lose/at_risk (the high-value subsets); "promising" and "about to sleep"
are folded into `new`, `need_attention` and `hibernating`; `need_attention` is exactly R = 3,
F <= 3, so that every cell has one name.

Levels
------
    advocate     a `review.submitted` or `referral.created` event exists (orders or not)
    repeat       2 or more orders
    first_time   1 order
    none         no orders and no advocacy

Fit
---
retain / grow / exit per segment, from `FitThresholds` (defaults below); every segment, prospect
included, is in exactly one of the three sets. Two further knobs, off by default:
`retain_min_monetary` (a "retain" customer whose M is below it is "grow" instead) and
`advocates_never_exit` (an advocate otherwise "exit" is "grow").

    retain   champions, loyal, cant_lose, at_risk
    grow     potential_loyalist, new, need_attention, prospect
    exit     hibernating, lost

Refreshing
----------
`refresh_all(db, as_of)` recomputes every customer: one GROUP BY over orders for the cut points
(only numbers kept in memory: three arrays), one query for the advocates, then customers in pages
of `BATCH` (one GROUP BY per page) upserted in one transaction per page, so SQLite writers (the
webhooks) are never held up for long. `refresh_customer(db, customer_id, as_of)` recomputes one
after an order or a review. Neither is scheduled here: the worker calls them.
`profile(db, customer_id)` is the JSON-safe `customer.rfm` that conditions and templates see.
"""

from __future__ import annotations

import functools
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.orm import Session

from keepflow.store.db import Database
from keepflow.store.models import Base, Customer, Event, Order
from keepflow.store.scores import CustomerScore, ScoreCutoffs

Segment = Literal[
    "champions", "loyal", "potential_loyalist", "new", "need_attention",
    "at_risk", "cant_lose", "hibernating", "lost", "prospect",
]
Level = Literal["advocate", "repeat", "first_time", "none"]
Fit = Literal["retain", "grow", "exit"]

# The order of `keepflow segments`: best first, then slipping, then gone, then never bought.
SEGMENTS: tuple[str, ...] = (
    "champions", "loyal", "potential_loyalist", "new", "need_attention",
    "at_risk", "cant_lose", "hibernating", "lost", "prospect",
)
LEVELS: tuple[str, ...] = ("advocate", "repeat", "first_time", "none")
FITS: tuple[str, ...] = ("retain", "grow", "exit")
ADVOCACY_EVENTS: tuple[str, ...] = ("review.submitted", "referral.created")

BATCH = 2000
MIN_STORED_POPULATION = 100
_CUTOFFS_ID = 1
_CENT = Decimal("0.01")


# -- pure scoring ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OrderStats:
    """One customer's orders, aggregated: the input of the scoring."""

    customer_id: str
    last_order_at: datetime | None
    orders_count: int
    total_spent: Decimal


@dataclass(frozen=True, slots=True)
class Scores:
    customer_id: str
    recency_days: int | None
    orders_count: int
    monetary: Decimal
    r: int | None
    f: int | None
    m: int | None
    segment: str
    level: str
    fit: str

    def profile(self) -> dict[str, Any]:
        return _profile(self.recency_days, self.orders_count, self.monetary, self.r, self.f, self.m,
                        self.segment, self.level, self.fit)


class FitThresholds(BaseModel):
    """Which segments to retain, grow or let go; see the module docstring for the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retain: frozenset[Segment] = frozenset({"champions", "loyal", "cant_lose", "at_risk"})
    grow: frozenset[Segment] = frozenset({"potential_loyalist", "new", "need_attention", "prospect"})
    exit: frozenset[Segment] = frozenset({"hibernating", "lost"})
    # A customer in a "retain" segment whose M score is below this is "grow" (1: no effect).
    retain_min_monetary: int = Field(1, ge=1, le=5)
    # An advocate (review or referral) in an "exit" segment is "grow" instead.
    advocates_never_exit: bool = False

    @model_validator(mode="after")
    def _partition(self) -> FitThresholds:
        sets = {"retain": self.retain, "grow": self.grow, "exit": self.exit}
        for a, b in (("retain", "grow"), ("retain", "exit"), ("grow", "exit")):
            if both := sets[a] & sets[b]:
                raise ValueError(f"{', '.join(sorted(both))} in both {a} and {b}")
        if missing := set(SEGMENTS) - self.retain - self.grow - self.exit:
            raise ValueError(f"no fit for {', '.join(s for s in SEGMENTS if s in missing)}")
        return self

    def fit(self, segment: str, m: int | None, level: str) -> str:
        if segment in self.retain:
            return "grow" if m is not None and m < self.retain_min_monetary else "retain"
        if segment in self.exit:
            return "grow" if self.advocates_never_exit and level == "advocate" else "exit"
        return "grow"


def segment(r: int | None, f: int | None, m: int | None) -> str:
    """The segment of one (R, F, M) cell; `prospect` when unscored (no orders)."""
    if r is None or f is None or m is None:
        return "prospect"
    if r >= 4:
        if f >= 4:
            return "champions" if m >= 4 else "loyal"
        return "potential_loyalist" if f >= 2 else "new"
    if r == 3:
        return "loyal" if f >= 4 else "need_attention"
    if r == 1 and f >= 4 and m >= 4:
        return "cant_lose"
    if f >= 3:
        return "at_risk"
    if r == 1 and f == 1:
        return "lost"
    return "hibernating"


def level(orders_count: int, advocate: bool) -> str:
    if advocate:
        return "advocate"
    return "repeat" if orders_count >= 2 else "first_time" if orders_count == 1 else "none"


def _recency_cuts(values: Sequence[int]) -> tuple[int | None, ...]:
    """Cut points for R = 2..5 under `ceil(5 * up_to / n)` (the module docstring): R >= k exactly
    when at least floor((k-1) n / 5) + 1 customers are no more recent, so the cut is that
    customer's date (higher is better)."""
    n = len(values)
    return tuple(values[(k - 1) * n // 5] if n else None for k in range(2, 6))


def _cuts(values: Sequence[int]) -> tuple[int | None, ...]:
    """Cut points for scores 2..5 of a sorted population (higher is better)."""
    n = len(values)
    cuts: list[int | None] = []
    for k in range(2, 6):
        # score >= k  <=>  below >= ceil((k-1) n / 5) = t: the first value above values[t-1].
        t = -(-(k - 1) * n // 5)
        j = bisect_right(values, values[t - 1]) if n else n
        cuts.append(values[j] if j < n else None)
    return tuple(cuts)


def _score(value: int, cuts: Sequence[int | None]) -> int:
    best = 1
    for k, cut in enumerate(cuts, start=2):
        if cut is not None and value >= cut:
            best = k
    return best


def _cents(amount: Any) -> int:
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount or 0))
    return int((value * 100).to_integral_value(ROUND_HALF_UP))


def _utc_date(value: datetime) -> date:
    """SQLite hands back naive datetimes: everything Keepflow stores is UTC."""
    return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)).date()


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Quintile cut points: the smallest value scoring 2, 3, 4, 5 (None: nobody scored it).

    Internally numbers only: R as date ordinals of the last order, M in cents.
    """

    scored: int
    recency: tuple[int | None, ...]
    frequency: tuple[int | None, ...]
    monetary: tuple[int | None, ...]

    @classmethod
    def from_population(cls, last_order_days: Iterable[int], orders: Iterable[int], cents: Iterable[int]) -> Cutoffs:
        """From the customers with orders: date ordinals of their last order, counts, cents spent."""
        r, f, m = sorted(last_order_days), sorted(orders), sorted(cents)
        if not len(r) == len(f) == len(m):
            raise ValueError("the three dimensions must cover the same customers")
        return cls(len(r), _recency_cuts(r), _cuts(f), _cuts(m))

    @classmethod
    def from_stats(cls, rows: Iterable[OrderStats]) -> Cutoffs:
        dated = [(row, row.last_order_at) for row in rows if row.orders_count > 0 and row.last_order_at is not None]
        return cls.from_population((_utc_date(last).toordinal() for _, last in dated),
                                   (row.orders_count for row, _ in dated), (_cents(row.total_spent) for row, _ in dated))

    def scores(self, last_order_at: datetime, orders_count: int, total_spent: Decimal) -> tuple[int, int, int]:
        return (_score(_utc_date(last_order_at).toordinal(), self.recency), _score(orders_count, self.frequency),
                _score(_cents(total_spent), self.monetary))

    def to_json(self) -> dict[str, list[Any]]:
        return {
            "recency": [None if c is None else date.fromordinal(c).isoformat() for c in self.recency],
            "frequency": list(self.frequency),
            "monetary": [None if c is None else str(Decimal(c).scaleb(-2).quantize(_CENT)) for c in self.monetary],
        }

    @classmethod
    def from_row(cls, row: ScoreCutoffs) -> Cutoffs:
        return cls(
            row.scored,
            tuple(None if c is None else date.fromisoformat(c).toordinal() for c in row.recency),
            tuple(row.frequency),
            tuple(None if c is None else _cents(Decimal(c)) for c in row.monetary),
        )


def score_customer(row: OrderStats, as_of: datetime, cutoffs: Cutoffs, advocate: bool = False,
                   thresholds: FitThresholds | None = None) -> Scores:
    """One customer's scores against given cut points."""
    thresholds = thresholds or FitThresholds()
    spent = Decimal(row.total_spent or 0).quantize(_CENT)
    lvl = level(row.orders_count, advocate)
    if row.orders_count <= 0 or row.last_order_at is None:
        return Scores(row.customer_id, None, 0, Decimal("0.00"), None, None, None, "prospect", lvl,
                      thresholds.fit("prospect", None, lvl))
    recency = max(0, (_utc_date(as_of) - _utc_date(row.last_order_at)).days)
    r, f, m = cutoffs.scores(row.last_order_at, row.orders_count, spent)
    seg = segment(r, f, m)
    return Scores(row.customer_id, recency, row.orders_count, spent, r, f, m, seg, lvl, thresholds.fit(seg, m, lvl))


# -- the database ------------------------------------------------------------------------------

def _stats_columns():
    return (func.max(Order.created_at), func.count(Order.id), func.coalesce(func.sum(Order.total), 0))


def _advocacy():
    return Event.type.in_(ADVOCACY_EVENTS)


def _population_cutoffs(session: Session) -> Cutoffs:
    """Pass over the aggregated orders keeping only numbers."""
    days, counts, cents = array("q"), array("q"), array("q")
    query = select(*_stats_columns()).where(Order.customer_id.is_not(None)).group_by(Order.customer_id)
    for last, count, total in session.execute(query.execution_options(yield_per=BATCH)):
        days.append(_utc_date(last).toordinal())
        counts.append(count)
        cents.append(_cents(total))
    return Cutoffs.from_population(days, counts, cents)


def _save_cutoffs(session: Session, cutoffs: Cutoffs, as_of: datetime) -> None:
    values = dict(id=_CUTOFFS_ID, as_of=as_of, computed_at=_now(), scored=cutoffs.scored, **cutoffs.to_json())
    _upsert(session, ScoreCutoffs, [values], "id")


def _row(scores: Scores, computed_at: datetime) -> dict[str, Any]:
    return dict(customer_id=scores.customer_id, recency_days=scores.recency_days, orders_count=scores.orders_count,
                monetary=scores.monetary, r=scores.r, f=scores.f, m=scores.m, segment=scores.segment,
                level=scores.level, fit=scores.fit, computed_at=computed_at)


def _upsert(session: Session, model: type[Base], rows: list[dict[str, Any]], key: str) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        session.execute(_upsert_statement(dialect, model, tuple(rows[0]), key), rows)
        return
    for row in rows:  # pragma: no cover - other databases
        session.merge(model(**row))


@functools.lru_cache(maxsize=16)
def _upsert_statement(dialect: str, model: type[Base], names: tuple[str, ...], key: str):
    """Built once: every order rescores its customer with the same statement."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    statement = insert(model.__table__)
    return statement.on_conflict_do_update(
        index_elements=[key], set_={name: statement.excluded[name] for name in names if name != key})


def refresh_all(db: Database, as_of: datetime, thresholds: FitThresholds | None = None) -> int:
    """Recompute every customer's scores as of `as_of`; returns how many customers were written."""
    thresholds = thresholds or FitThresholds()
    as_of = _aware(as_of)
    with db.session() as session:
        cutoffs = _population_cutoffs(session)
        _save_cutoffs(session, cutoffs, as_of)
        advocates = set(session.scalars(
            select(Event.customer_id).where(_advocacy(), Event.customer_id.is_not(None)).distinct()))
    written, after = 0, None
    computed_at = _now()
    while True:
        with db.session() as session:
            # A page of customer ids (keyset, by the primary key), then their orders by id range.
            page_query = select(Customer.id).order_by(Customer.id).limit(BATCH)
            stats_query = select(Order.customer_id, *_stats_columns()).group_by(Order.customer_id)
            if after is not None:
                page_query = page_query.where(Customer.id > after)
                stats_query = stats_query.where(Order.customer_id > after)
            page = session.scalars(page_query).all()
            if not page:
                return written
            stats = {cid: (last, count, total) for cid, last, count, total
                     in session.execute(stats_query.where(Order.customer_id <= page[-1]))}
            rows = []
            for cid in page:
                last, count, total = stats.get(cid, (None, 0, 0))
                scores = score_customer(OrderStats(cid, last, count, total), as_of, cutoffs, cid in advocates, thresholds)
                rows.append(_row(scores, computed_at))
            _upsert(session, CustomerScore, rows, "customer_id")
        written += len(rows)
        after = page[-1]


# One customer's orders and advocacy, built once (each order rescores its customer).
_CUSTOMER_STATS = select(*_stats_columns()).where(Order.customer_id == bindparam("customer_id"))
_ADVOCATE = select(exists().where(Event.customer_id == bindparam("customer_id"), _advocacy()))


def refresh_customer(db: Database | Session, customer_id: str, as_of: datetime,
                     thresholds: FitThresholds | None = None) -> dict[str, Any] | None:
    """Recompute one customer against the stored cut points; their new profile, or None if unknown.
    Given a session, it writes in that session's transaction (the router's, with the event)."""
    thresholds = thresholds or FitThresholds()
    as_of = _aware(as_of)
    with _session(db) as session:
        if session.get(Customer, customer_id) is None:
            return None
        stored = session.get(ScoreCutoffs, _CUTOFFS_ID)
        if stored is None or stored.scored < MIN_STORED_POPULATION:
            cutoffs = _population_cutoffs(session)
            _save_cutoffs(session, cutoffs, as_of)
        else:
            cutoffs = Cutoffs.from_row(stored)
        last, count, total = session.execute(_CUSTOMER_STATS, {"customer_id": customer_id}).one()
        advocate = session.scalar(_ADVOCATE, {"customer_id": customer_id})
        scores = score_customer(OrderStats(customer_id, last, count, total), as_of, cutoffs, bool(advocate), thresholds)
        _upsert(session, CustomerScore, [_row(scores, _now())], "customer_id")
    return scores.profile()


def unscored() -> dict[str, Any]:
    """`customer.rfm` of a customer never scored (no orders yet, or before the first refresh):
    what a full refresh would give someone without orders, so a condition on it reads a value
    instead of failing the run."""
    return score_customer(OrderStats("", None, 0, Decimal("0")), datetime.now(timezone.utc),
                          Cutoffs.from_stats([])).profile()


def profile(db: Database | Session, customer_id: str) -> dict[str, Any] | None:
    """`customer.rfm`: the stored scores as JSON-safe values, or None when never scored."""
    with _session(db) as session:
        row = session.get(CustomerScore, customer_id)
        if row is None:
            return None
        return _profile(row.recency_days, row.orders_count, row.monetary, row.r, row.f, row.m,
                        row.segment, row.level, row.fit)


@dataclass(frozen=True, slots=True)
class SegmentRow:
    segment: str
    customers: int
    share_of_customers: float
    revenue: Decimal
    share_of_revenue: float


def segment_table(db: Database | Session) -> list[SegmentRow]:
    """Every segment in `SEGMENTS` order (empty ones too), over the stored scores."""
    with _session(db) as session:
        found = {seg: (count, Decimal(total or 0).quantize(_CENT)) for seg, count, total in session.execute(
            select(CustomerScore.segment, func.count(), func.sum(CustomerScore.monetary)).group_by(CustomerScore.segment))}
    customers = sum(count for count, _ in found.values())
    revenue = sum((total for _, total in found.values()), Decimal("0.00"))
    order = list(SEGMENTS) + sorted(set(found) - set(SEGMENTS))
    table = []
    for seg in order:
        count, total = found.get(seg, (0, Decimal("0.00")))
        table.append(SegmentRow(seg, count, count / customers if customers else 0.0, total,
                                float(total / revenue) if revenue else 0.0))
    return table


def last_refresh(db: Database | Session) -> datetime | None:
    """When the cut points were last taken (by `refresh_all`, or while the base is small)."""
    with _session(db) as session:
        row = session.get(ScoreCutoffs, _CUTOFFS_ID)
        return None if row is None else _aware(row.computed_at)


# -- helpers -----------------------------------------------------------------------------------

def _profile(recency_days, orders_count, monetary, r, f, m, seg, lvl, fit) -> dict[str, Any]:
    return {
        "recency_days": recency_days, "frequency": orders_count,
        "monetary": float(Decimal(monetary or 0).quantize(_CENT)),
        "r": r, "f": f, "m": m, "segment": seg, "level": lvl, "fit": fit,
    }


@contextmanager
def _session(db: Database | Session) -> Iterator[Session]:
    if isinstance(db, Session):
        yield db
    else:
        with db.session() as session:
            yield session


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _now() -> datetime:
    return datetime.now(timezone.utc)
