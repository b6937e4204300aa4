"""What the sequences earned: attribution of orders to messages, and `keepflow report`.

Definitions (the report prints these numbers; keep this text and the code in step):

Attribution
    An order created at or after `since` is attributed to the *last* marketing message that
    reached its customer before it: the `messages` row with status `sent`, category `marketing`
    (a receipt or a shipping update did not sell anything), the same `customer_id`, and
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

Needing a decision
    needs_decision  messages with status `unknown` (an email whose provider call a worker did not
               see through), whenever created: unlike the per-step `unknown`, not limited to the
               period, as each waits for an operator (`keepflow messages unknown`).

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import String, case, cast, func, inspect, literal, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import column, table
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Interval

from keepflow.insights.line_quota import line_sent_in_month
from keepflow.language.durations import Duration
from keepflow.store import Database, Event, Message, Order, Run, utc
from keepflow.store.models import EventMessageId

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
LIST_UNKNOWN = "keepflow messages unknown"
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


class LineMonth(BaseModel):
    """LINE messages sent in this calendar month (keepflow/insights/line_quota.py) against the quota."""
    month: str  # "2026-12"
    timezone: str  # the shop's, whose calendar the month follows
    sent: int
    quota: int
    share: float  # sent / quota


class Report(BaseModel):
    since: datetime
    until: datetime
    window: Duration
    sequence_id: str | None
    sequences: list[SequenceReport]
    steps: list[StepReport]
    kpis: Kpis
    needs_decision: int = 0
    # Only where sequences.yaml sets rules.line.monthly_quota.
    line_month: LineMonth | None = None


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
    """One row per attributed order: the order joined to its last in-window sent message.

    For each order of the period, the message is one look-up in ix_messages_customer_sent (the
    customer's sent messages by time, newest first). Written as a correlated subquery so that the
    database starts from the orders, whatever it knows about the tables' sizes."""
    candidate = aliased(Message)
    last_touch = (
        select(candidate.id)
        .where(
            candidate.customer_id == Order.customer_id,
            candidate.status == "sent",
            candidate.category == "marketing",
            candidate.sent_at < Order.created_at,
            # A constant bound first, so the look-up need not look at older messages at all.
            candidate.sent_at >= since - window,
            _within_window(db.engine.dialect.name, candidate.sent_at, Order.created_at, window),
        )
        .order_by(candidate.sent_at.desc(), candidate.id.desc()).limit(1)
        .correlate(Order).scalar_subquery()
    )
    orders = (
        select(Order.id.label("order_id"), Order.customer_id, Order.total, Order.currency,
               Order.created_at.label("order_created_at"), last_touch.label("message_id"))
        .where(Order.created_at >= since).subquery("orders_of_period")
    )
    return (
        select(orders, Message.workflow_id, Message.sequence_id, Message.step, Message.channel, Message.template,
               Message.sent_at)
        .join(Message, Message.id == orders.c.message_id).subquery("attributed")
    )


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
    now: datetime | None = None, clv: bool = True, line_quota: int | None = None, zone: str = "UTC",
) -> Report:
    """The report; `clv=False` leaves `kpis.clv_by_segment` empty (it reads every order ever
    stored, so a caller that does not show it need not pay for it). `line_quota`: LINE's monthly
    quota, to set `line_month` against (this calendar month in `zone`)."""
    since = _since(since)
    attributed = attribute(db, since, window)
    attributions = [a for a in attributed if sequence_id in (None, a.sequence_id)]

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

    # Converted: a goal reached (counted from ix_runs_started alone), or an attributed order. The
    # attributed runs are looked up by id, instead of attributing every order a second time in SQL.
    run_filter = [Run.started_at >= since]
    message_filter = [Message.created_at >= since]
    if sequence_id is not None:
        run_filter.append(Run.sequence_id == sequence_id)
        message_filter.append(Message.sequence_id == sequence_id)
    # Materialised first: otherwise SQLite may walk a sequence_id index for the GROUP BY, reading
    # every run, instead of the period's range of ix_runs_started.
    period = (select(Run.sequence_id, Run.converted_at).where(*run_filter)
              .cte("runs_of_period").prefix_with("MATERIALIZED"))
    runs = select(period.c.sequence_id, func.count(), func.count(period.c.converted_at)).group_by(period.c.sequence_id)
    run_filter.append(Run.converted_at.is_(None))
    attributed_runs = sorted({a.workflow_id for a in attributed})
    step_columns = (Message.sequence_id, Message.step, Message.channel, Message.template)
    bits = {kind: 1 << n for n, kind in enumerate(DELIVERY_EVENTS)}
    slices = _slices(since, utc(now or datetime.now(timezone.utc)).astimezone(timezone.utc))
    funnels = [_funnel(step_columns, bits, [*message_filter[1:], *bounds]) for bounds in slices]
    # The reasons need the rows: read for the period's skipped messages only (ix_messages_status_created).
    reasons = (
        select(*step_columns, Message.error, func.count())
        .where(Message.status == "skipped", *message_filter).group_by(*step_columns, Message.error)
    )

    with db.session() as session:
        for sid, entered, converted_runs in session.execute(runs):
            s = sequence(sid)
            s.entered, s.converted = entered, int(converted_runs)
        for chunk in range(0, len(attributed_runs), 500):
            for sid, count in session.execute(
                select(Run.sequence_id, func.count()).where(Run.id.in_(attributed_runs[chunk:chunk + 500]), *run_filter)
                .group_by(Run.sequence_id)
            ):
                sequence(sid).converted += count
        for sid, path, channel, template, status, mask, count in _run_all(db, funnels):
            row = step(sid, path, channel, template)
            sequence(sid)
            row.entered += count
            if status == "skipped":
                row.skipped += count
            elif status in IN_FLIGHT:
                row.in_flight += count
            elif status in ("sent", "failed", "unknown"):
                setattr(row, status, getattr(row, status) + count)
            for kind, bit in bits.items():
                if int(mask or 0) & bit:
                    counter = DELIVERY_EVENTS[kind]
                    setattr(row, counter, getattr(row, counter) + count)
        for sid, path, channel, template, why, count in session.execute(reasons):
            why = why or "(no reason)"
            row = step(sid, path, channel, template)
            row.skipped_reasons[why] = row.skipped_reasons.get(why, 0) + count
        clv_rows = _clv_by_segment(db, session) if clv else []
        # Any date: the status index has the few `unknown` rows.
        undecided = select(func.count()).select_from(Message).where(
            Message.status == "unknown", *message_filter[1:])
        needs_decision = int(session.scalar(undecided) or 0)

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
        orders=len(attributions), revenue=_sorted(revenue), clv_by_segment=clv_rows,
    )
    line_month = None
    if line_quota is not None:
        month, line_sent = line_sent_in_month(db, now or datetime.now(timezone.utc), zone)
        line_month = LineMonth(month=month, timezone=zone, sent=line_sent, quota=line_quota,
                               share=round(line_sent / line_quota, 4))
    return Report(
        line_month=line_month,
        since=since, until=utc(now or datetime.now(timezone.utc)), window=window, sequence_id=sequence_id,
        sequences=[sequences[k].model_copy(update={"revenue": _sorted(sequences[k].revenue)}) for k in sorted(sequences)],
        steps=[r.model_copy(update={"revenue": _sorted(r.revenue)}) for r in step_rows],
        kpis=kpis, needs_decision=needs_decision,
    )


def _funnel(step_columns, bits: dict[str, int], where: list) -> Any:
    """Messages per step, status and the kinds of provider notification they got.

    One pass over the messages (ix_messages_created_funnel holds every column used). The
    notifications about a message (`events.payload.data.message_id` = `messages.id`) are one
    look-up in ix_events_message_id per message, folded into a bit mask per kind, so each message
    counts once per kind and the database starts from the messages, never from every notification
    ever received. (No condition on the event type in the look-up: other events about a message
    add no bit, and a type list would cost a look-up per type.)"""
    # sum() of SQL expressions builds one expression (0 + max(..) + ...); typeshed's sum() knows
    # only numbers.
    mask: Any = sum(func.max(case((Event.type == kind, bit), else_=0)) for kind, bit in bits.items())
    told = (
        select(mask)
        .where(EventMessageId(Event.payload) == cast(Message.id, String))
        .correlate(Message).scalar_subquery()
    )
    per_message = select(*step_columns, Message.status, told.label("told")).where(*where).subquery("per_message")
    grouped = [per_message.c.sequence_id, per_message.c.step, per_message.c.channel, per_message.c.template,
               per_message.c.status, per_message.c.told]
    return select(*grouped, func.count()).group_by(*grouped)


# The funnel reads the period's messages in this many time slices at once, one connection each:
# a period of a busy shop is tens of thousands of messages, and each costs an index look-up.
SLICES = 2


def _slices(since: datetime, now: datetime) -> list[list]:
    """Conditions splitting `created_at >= since` into SLICES ranges (the last one open-ended)."""
    if now <= since:
        return [[Message.created_at >= since]]
    cuts = [since + (now - since) * n / SLICES for n in range(SLICES)]
    return [[Message.created_at >= start, *([Message.created_at < end] if end is not None else [])]
            for start, end in zip(cuts, [*cuts[1:], None])]


def _run_all(db: Database, queries: list) -> Sequence[Any]:
    """Every query's rows, the queries run side by side on their own connections."""
    def rows(query) -> Sequence[Any]:
        with db.session() as session:
            return session.execute(query).all()

    if len(queries) == 1:
        return rows(queries[0])
    with ThreadPoolExecutor(len(queries), thread_name_prefix="keepflow-report") as pool:
        return [row for part in pool.map(rows, queries) for row in part]


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

    from keepflow.language.durations import format_duration

    console = console or Console()
    scope = f" for {report.sequence_id}" if report.sequence_id else ""
    console.print(f"[bold]Since {report.since:%Y-%m-%d %H:%M} UTC{scope}[/bold]; orders attributed to the last "
                  f"marketing message sent within {format_duration(report.window)} before them")

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
    if (line := report.line_month) is not None:
        full = "; the quota is used up: LINE refuses pushes until the month ends" if line.sent >= line.quota else ""
        console.print(f"LINE messages sent in {line.month} ({line.timezone}): {line.sent:,} of the monthly quota of "
                      f"{line.quota:,} ({line.share:.0%}){full}", highlight=False)
    if report.needs_decision:
        console.print(f"[bold]{report.needs_decision} message(s) have an unknown outcome and need a decision[/bold] "
                      f"(whenever created): `{LIST_UNKNOWN}` lists them, with how to settle each.")
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
    from keepflow.language.durations import parse_duration

    now = now or datetime.now(timezone.utc)
    if _DATE.match(value.strip()):
        return utc(datetime.fromisoformat(value.strip()))
    return now - parse_duration(value)
