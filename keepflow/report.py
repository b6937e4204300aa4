"""What the sequences earned: attribution of orders to messages, and `keepflow report`.

Definitions (the report prints these numbers; keep this text and the code in step):

Attribution
    An order created at or after `since` is attributed to the *last* message that reached its
    customer before it: the `messages` row with status `sent`, the same `customer_id`, and
    `order.created_at - window <= sent_at < order.created_at` (window: 5 days unless told). Ties
    on `sent_at` go to the higher message id. No such message: the order is not attributed. The
    attribution is last-touch across *all* sequences; `--sequence` filters the result afterwards
    and never hands an order to an older message of the chosen sequence.

Variant
    A step path alternates step and branch segments: `<step>.<branch>.<step>...`, where a step
    segment is the step's index or its `id`, and a branch segment is `then`/`else` (an `if`),
    `on_timeout` (a `wait_for`) or the variant name (a `split`). Ids and variant names match
    `[a-z][a-z0-9_]*`, so no segment contains a dot. The variant of a message is therefore every
    branch segment (odd position) that is not `then`, `else` or `on_timeout`: `1.then.0.offer.1`
    -> `offer`; nested splits join with `/` (`0.a.2.b.0` -> `a/b`); no split -> None. (This is the
    rule "the segment after a step index that is not a branch keyword", extended to steps named
    by `id:`; a variant literally called `then`, `else` or `on_timeout` would be missed.)

Per sequence
    entered    runs (`runs` rows) with `started_at >= since`.
    converted  of those runs, the ones with `converted_at` set (a goal event reached the run)
               OR to which an attributed order's message belongs (`messages.workflow_id = runs.id`).
    conversion_rate = converted / entered (None when nothing entered).
    orders / revenue: attributed orders whose message belongs to the sequence; revenue is summed
               per currency, never across currencies.

Per step (sequence_id, step, channel, template, variant), over messages created at/after `since`
    entered    message rows (every run that reached the send step writes one, whatever happened).
    sent / skipped / failed / unknown / in_flight (`pending` or `sending`): rows by status;
               `skipped_reasons` counts skipped rows by their `error` text.
    delivered / opened / clicked / unsubscribed: messages with at least one `events` row of type
               `message.delivered` / `message.opened` / `message.clicked` / `message.unsubscribed`
               whose `payload.data.message_id` is the message's id (`messages.id`, as a JSON number
               or string). That is the contract for the provider-webhook feature: store one event
               per provider notification, `{"type": "message.opened", "data": {"message_id": 42}}`.
               Each message counts at most once per type (unique opens, unique clicks).
    orders / revenue: orders attributed to a message of this step (those messages may have been
               created before `since`: the order, not the message, is what falls in the period).

KPIs (over the sequences reported)
    conversion_rate           sum(converted) / sum(entered).
    unsubscribe_rate          unsubscribed / delivered; while no delivery events exist
                              (delivered == 0), unsubscribed / sent.
    actions_per_engagement    (messages opened + messages clicked) / messages sent; with unique
                              counts it lies between 0 and 2.
    clv_by_segment            lifetime value: every order ever stored (not only since `since`, and
                              whatever `--sequence` says), summed per customer and averaged within
                              the customer's RFM segment (`customer_scores.segment`; customers with
                              no score are `unscored`). Without a `customer_scores` table every
                              buyer is in one group, `all`. Averages are per currency: the segment's
                              revenue in that currency / the segment's buyers (customers with at
                              least one order in any currency).

Rates are rounded to 4 decimal places; money to 2.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import String, and_, case, cast, func, inspect, literal, or_, select
from sqlalchemy.sql import column, table
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Interval

from keepflow.durations import Duration
from keepflow.events import utc
from keepflow.store import Database, Event, Message, Order, Run

WINDOW = timedelta(days=5)
BRANCHES = frozenset({"then", "else", "on_timeout"})
# Event type -> counter of the step it concerns (see "Per step" above).
DELIVERY_EVENTS = {
    "message.delivered": "delivered",
    "message.opened": "opened",
    "message.clicked": "clicked",
    "message.unsubscribed": "unsubscribed",
}
IN_FLIGHT = ("pending", "sending")
CENT = Decimal("0.01")

Money = dict[str, Decimal]  # currency -> amount; pydantic writes Decimal as a string in JSON


class Attribution(BaseModel):
    order_id: str
    customer_id: str
    revenue: Decimal
    currency: str
    order_created_at: datetime
    message_id: int
    workflow_id: str
    sequence_id: str
    step: str
    channel: str
    template: str
    variant: str | None
    sent_at: datetime


class StepReport(BaseModel):
    sequence_id: str
    step: str
    channel: str
    template: str
    variant: str | None
    entered: int = 0
    sent: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    unknown: int = 0
    in_flight: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    orders: int = 0
    revenue: Money = Field(default_factory=dict)


class SequenceReport(BaseModel):
    sequence_id: str
    entered: int = 0
    converted: int = 0
    conversion_rate: float | None = None
    orders: int = 0
    revenue: Money = Field(default_factory=dict)


class SegmentValue(BaseModel):
    segment: str
    customers: int
    clv: Money


class Kpis(BaseModel):
    entered: int
    converted: int
    conversion_rate: float | None
    sent: int
    delivered: int
    opened: int
    clicked: int
    unsubscribed: int
    unsubscribe_rate: float | None
    actions_per_engagement: float | None
    orders: int
    revenue: Money
    clv_by_segment: list[SegmentValue]


class Report(BaseModel):
    since: datetime
    until: datetime
    window: Duration
    sequence_id: str | None
    sequences: list[SequenceReport]
    steps: list[StepReport]
    kpis: Kpis


# -- attribution ------------------------------------------------------------------------------


def variant_of(step: str) -> str | None:
    """The split variant(s) a step path runs under; see the module docstring."""
    names = [s for s in step.split(".")[1::2] if s not in BRANCHES]
    return "/".join(names) or None


def _within_window(dialect: str, sent_at: Any, created_at: Any, window: timedelta) -> ColumnElement[bool]:
    """`sent_at >= created_at - window`, in SQL both SQLite and PostgreSQL understand."""
    if dialect == "sqlite":
        # SQLite keeps datetimes as text; julianday() turns them into days (millisecond precision).
        return func.julianday(sent_at) >= func.julianday(created_at) - window / timedelta(days=1)
    return sent_at >= created_at - literal(window, Interval())


def _attribution_query(db: Database, since: datetime, window: timedelta):
    """One row per attributed order: the order joined to its last in-window sent message."""
    ranked = (
        select(
            Order.id.label("order_id"), Order.customer_id, Order.total, Order.currency,
            Order.created_at.label("order_created_at"),
            Message.id.label("message_id"), Message.workflow_id, Message.sequence_id, Message.step,
            Message.channel, Message.template, Message.sent_at,
            func.row_number().over(
                partition_by=Order.id, order_by=(Message.sent_at.desc(), Message.id.desc()),
            ).label("rank"),
        )
        .join(Message, and_(
            Message.customer_id == Order.customer_id,
            Message.status == "sent",
            Message.sent_at < Order.created_at,
            # A constant bound first, so the join need not look at older messages at all.
            Message.sent_at >= since - window,
            _within_window(db.engine.dialect.name, Message.sent_at, Order.created_at, window),
        ))
        .where(Order.created_at >= since)
        .subquery("ranked")
    )
    return select(ranked).where(ranked.c.rank == 1).subquery("attributed")


def _since(value: datetime) -> datetime:
    # Stored datetimes are UTC; SQLite compares them as text, so the bound must be UTC too.
    return utc(value).astimezone(timezone.utc)


def attribute(db: Database, since: datetime, window: timedelta = WINDOW) -> list[Attribution]:
    """Every order created at/after `since` that a sent message preceded within `window`."""
    since = _since(since)
    attributed = _attribution_query(db, since, window)
    with db.session() as session:
        rows = session.execute(select(attributed).order_by(attributed.c.order_created_at, attributed.c.order_id)).all()
    return [
        Attribution(
            order_id=r.order_id, customer_id=r.customer_id, revenue=_money(r.total), currency=r.currency,
            order_created_at=utc(r.order_created_at), message_id=r.message_id, workflow_id=r.workflow_id,
            sequence_id=r.sequence_id, step=r.step, channel=r.channel, template=r.template,
            variant=variant_of(r.step), sent_at=utc(r.sent_at),
        )
        for r in rows
    ]


# -- the report -------------------------------------------------------------------------------


def build_report(
    db: Database, since: datetime, sequence_id: str | None = None, window: timedelta = WINDOW,
    now: datetime | None = None,
) -> Report:
    since = _since(since)
    attributions = [a for a in attribute(db, since, window) if sequence_id in (None, a.sequence_id)]
    attributed_runs = select(_attribution_query(db, since, window).c.workflow_id)

    sequences: dict[str, SequenceReport] = {}
    steps: dict[tuple[str, str, str, str], StepReport] = {}

    def sequence(sid: str) -> SequenceReport:
        return sequences.setdefault(sid, SequenceReport(sequence_id=sid))

    def step(sid: str, path: str, channel: str, template: str) -> StepReport:
        key = (sid, path, channel, template)
        if key not in steps:
            steps[key] = StepReport(sequence_id=sid, step=path, channel=channel, template=template,
                                    variant=variant_of(path))
        return steps[key]

    converted = or_(Run.converted_at.is_not(None), Run.id.in_(attributed_runs))
    runs = (
        select(Run.sequence_id, func.count(), func.coalesce(func.sum(case((converted, 1), else_=0)), 0))
        .where(Run.started_at >= since).group_by(Run.sequence_id)
    )
    message_filter = [Message.created_at >= since]
    if sequence_id is not None:
        runs = runs.where(Run.sequence_id == sequence_id)
        message_filter.append(Message.sequence_id == sequence_id)
    step_columns = (Message.sequence_id, Message.step, Message.channel, Message.template)
    reason = case((Message.status == "skipped", func.coalesce(Message.error, "")), else_=None)
    statuses = (
        select(*step_columns, Message.status, reason.label("reason"), func.count())
        .where(*message_filter).group_by(*step_columns, Message.status, reason)
    )
    # Provider notifications about a message: `events.payload.data.message_id` = `messages.id`.
    event_message_id = cast(Event.payload[("data", "message_id")].as_string(), String)
    notified = (
        select(*step_columns, Event.type, func.count(func.distinct(Message.id)))
        .join(Event, and_(Event.type.in_(DELIVERY_EVENTS), event_message_id == cast(Message.id, String)))
        .where(*message_filter).group_by(*step_columns, Event.type)
    )

    with db.session() as session:
        for sid, entered, converted_runs in session.execute(runs):
            s = sequence(sid)
            s.entered, s.converted = entered, int(converted_runs)
        for sid, path, channel, template, status, why, count in session.execute(statuses):
            row = step(sid, path, channel, template)
            sequence(sid)
            row.entered += count
            if status == "skipped":
                row.skipped += count
                row.skipped_reasons[why or "(no reason)"] = row.skipped_reasons.get(why or "(no reason)", 0) + count
            elif status in IN_FLIGHT:
                row.in_flight += count
            elif status in ("sent", "failed", "unknown"):
                setattr(row, status, getattr(row, status) + count)
        for sid, path, channel, template, event_type, count in session.execute(notified):
            row = step(sid, path, channel, template)
            setattr(row, DELIVERY_EVENTS[event_type], count)
        clv = _clv_by_segment(db, session)

    for a in attributions:
        for target in (sequence(a.sequence_id), step(a.sequence_id, a.step, a.channel, a.template)):
            target.orders += 1
            _add(target.revenue, a.currency, a.revenue)
    for s in sequences.values():
        s.conversion_rate = _rate(s.converted, s.entered)

    step_rows = sorted(steps.values(), key=lambda r: (r.sequence_id, _path_key(r.step), r.channel, r.template))
    total = lambda name: sum(getattr(r, name) for r in step_rows)  # noqa: E731
    revenue: Money = {}
    for a in attributions:
        _add(revenue, a.currency, a.revenue)
    entered, converted_count = sum(s.entered for s in sequences.values()), sum(s.converted for s in sequences.values())
    sent, delivered, unsubscribed = total("sent"), total("delivered"), total("unsubscribed")
    kpis = Kpis(
        entered=entered, converted=converted_count, conversion_rate=_rate(converted_count, entered),
        sent=sent, delivered=delivered, opened=total("opened"), clicked=total("clicked"), unsubscribed=unsubscribed,
        unsubscribe_rate=_rate(unsubscribed, delivered or sent),
        actions_per_engagement=_rate(total("opened") + total("clicked"), sent),
        orders=len(attributions), revenue=_sorted(revenue), clv_by_segment=clv,
    )
    return Report(
        since=since, until=utc(now or datetime.now(timezone.utc)), window=window, sequence_id=sequence_id,
        sequences=[sequences[k].model_copy(update={"revenue": _sorted(sequences[k].revenue)}) for k in sorted(sequences)],
        steps=[r.model_copy(update={"revenue": _sorted(r.revenue)}) for r in step_rows],
        kpis=kpis,
    )


def _clv_by_segment(db: Database, session) -> list[SegmentValue]:
    if inspect(db.engine).has_table("customer_scores"):
        scores = table("customer_scores", column("customer_id"), column("segment"))
        # One segment per customer even if the table kept several rows for one.
        by_customer = (
            select(scores.c.customer_id, func.max(scores.c.segment).label("segment"))
            .group_by(scores.c.customer_id).subquery("scores")
        )
        segment = func.coalesce(by_customer.c.segment, "unscored")
        source = select(Order.customer_id, Order.currency, Order.total, segment.label("segment")).outerjoin(
            by_customer, by_customer.c.customer_id == Order.customer_id,
        ).subquery("scored_orders")
    else:
        source = select(Order.customer_id, Order.currency, Order.total, literal("all").label("segment")).subquery(
            "scored_orders")
    buyers = dict(session.execute(
        select(source.c.segment, func.count(func.distinct(source.c.customer_id))).group_by(source.c.segment)
    ).all())
    totals: dict[str, Money] = defaultdict(dict)
    for seg, currency, amount in session.execute(
        select(source.c.segment, source.c.currency, func.sum(source.c.total)).group_by(source.c.segment, source.c.currency)
    ):
        totals[seg][currency] = (_money(amount) / buyers[seg]).quantize(CENT, ROUND_HALF_UP)
    return [SegmentValue(segment=seg, customers=buyers[seg], clv=_sorted(totals[seg])) for seg in sorted(buyers)]


def _money(value: Any) -> Decimal:
    # SQLite sums NUMERIC as floats: back to cents.
    return Decimal(str(value)).quantize(CENT, ROUND_HALF_UP)


def _add(money: Money, currency: str, amount: Decimal) -> None:
    money[currency] = money.get(currency, Decimal("0.00")) + amount


def _sorted(money: Money) -> Money:
    return {k: money[k] for k in sorted(money)}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _path_key(path: str) -> tuple:
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in path.split("."))


# -- text output ------------------------------------------------------------------------------


def format_money(money: Money) -> str:
    return ", ".join(f"{amount} {currency}" for currency, amount in money.items()) or "-"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def print_report(report: Report, console=None) -> None:
    """The report as Rich tables: sequences, steps (and why steps were skipped), KPIs, CLV."""
    from rich.console import Console
    from rich.table import Table

    from keepflow.durations import format_duration

    console = console or Console()
    scope = f" for {report.sequence_id}" if report.sequence_id else ""
    console.print(f"[bold]Since {report.since:%Y-%m-%d %H:%M} UTC{scope}[/bold]; orders attributed to the last "
                  f"message sent within {format_duration(report.window)} before them")

    sequences = Table("sequence", "entered", "converted", "conversion", "orders", "revenue", title="Sequences")
    for s in report.sequences:
        sequences.add_row(s.sequence_id, str(s.entered), str(s.converted), _pct(s.conversion_rate), str(s.orders),
                          format_money(s.revenue))
    console.print(sequences)

    steps = Table("sequence", "step", "variant", "channel", "template", "entered", "sent", "skipped", "failed",
                  "unknown", "in flight", "delivered", "opened", "clicked", "unsub", "orders", "revenue", title="Steps")
    reasons: list[tuple[str, str, str, int]] = []
    for r in report.steps:
        steps.add_row(r.sequence_id, r.step, r.variant or "-", r.channel, r.template, str(r.entered), str(r.sent),
                      str(r.skipped), str(r.failed), str(r.unknown), str(r.in_flight), str(r.delivered), str(r.opened), str(r.clicked),
                      str(r.unsubscribed), str(r.orders), format_money(r.revenue))
        reasons.extend((r.sequence_id, r.step, why, n) for why, n in Counter(r.skipped_reasons).most_common())
    console.print(steps)
    if reasons:
        skipped = Table("sequence", "step", "reason", "skipped", title="Why steps were skipped")
        for sid, path, why, n in reasons:
            skipped.add_row(sid, path, why, str(n))
        console.print(skipped)

    k = report.kpis
    kpis = Table("KPI", "value", "definition", title="KPIs")
    kpis.add_row("conversion rate", _pct(k.conversion_rate), f"{k.converted} converted / {k.entered} entered runs")
    kpis.add_row("unsubscribe (drop-off) rate", _pct(k.unsubscribe_rate),
                 f"{k.unsubscribed} unsubscribed / {k.delivered or k.sent} {'delivered' if k.delivered else 'sent'}")
    kpis.add_row("actions per engagement", "-" if k.actions_per_engagement is None else f"{k.actions_per_engagement:.2f}",
                 f"({k.opened} opened + {k.clicked} clicked) / {k.sent} sent")
    kpis.add_row("attributed revenue", format_money(k.revenue), f"{k.orders} orders")
    console.print(kpis)

    clv = Table("segment", "customers", "lifetime value per customer", title="Customer lifetime value by segment")
    for seg in k.clv_by_segment:
        clv.add_row(seg.segment, str(seg.customers), format_money(seg.clv))
    console.print(clv)


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`30d` (that long ago) or an ISO date/datetime (UTC unless it says otherwise)."""
    from keepflow.durations import parse_duration

    now = now or datetime.now(timezone.utc)
    if _DATE.match(value.strip()):
        return utc(datetime.fromisoformat(value.strip()))
    return now - parse_duration(value)
