"""What the dashboard shows, read with SQL aggregates and index-backed lookups.

The funnel comes from `keepflow.report.build_report`, so the page and `keepflow report` can
never disagree. Everything else here touches the messages table only through its indexes
(`status`, `(customer_id, created_at)`, the primary key), so a page costs the same with a
thousand messages or a million.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select

from keepflow import graph
from keepflow.dsl import InactivityTrigger, SendStep, Sequence
from keepflow.durations import format_duration
from keepflow.events import utc
from keepflow.loader import Catalog
from keepflow.report import DELIVERY_EVENTS, Report, StepReport, build_report, format_money, variant_of
from keepflow.store import Customer, Database, Event, Message, Order, Run, Suppression
from keepflow.store.scores import CustomerScore

PER_PAGE = 50
# Statuses of a message that has not gone out yet but still may: the run is waiting at that step.
WAITING = ("pending", "deferred", "sending")
# A customer page shows at most this many rows of each kind, newest first.
TIMELINE_LIMIT = 200


# -- overview ---------------------------------------------------------------------------------


@dataclass
class StepView:
    report: StepReport
    waiting: int
    # In the current sequences file; False for a step only older runs still know.
    current: bool


@dataclass
class SequenceView:
    id: str
    description: str
    category: str
    trigger: str
    entered: int
    converted: int
    conversion_rate: float | None
    orders: int
    revenue: str
    not_converted: int
    # The sequence drawn by keepflow/graph.py: SVG markup it escapes itself.
    flowchart: str = ""
    steps: list[StepView] = field(default_factory=list)


def trigger_text(sequence: Sequence) -> str:
    if isinstance(sequence.trigger, InactivityTrigger):
        text = f"no activity for {format_duration(sequence.trigger.inactive_for)}"
        if sequence.trigger.segment:
            text += f" (segments: {', '.join(sequence.trigger.segment)})"
        return text
    return sequence.trigger or "started by another sequence"


def waiting_by_step(db: Database) -> dict[tuple[str, str], int]:
    """Messages not yet out (pending, deferred, sending) per sequence and step: the status index."""
    with db.session() as session:
        rows = session.execute(
            select(Message.sequence_id, Message.step, func.count())
            .where(Message.status.in_(WAITING)).group_by(Message.sequence_id, Message.step)
        ).all()
    return {(sid, step): n for sid, step, n in rows}


def not_converted_runs(db: Database, since: datetime) -> dict[str, int]:
    """Runs started since `since` that have not reached their goal, per sequence.

    The runs table records starts and conversions, not endings, so this includes runs that have
    already finished without converting.
    """
    with db.session() as session:
        rows = session.execute(
            select(Run.sequence_id, func.count())
            .where(Run.started_at >= since, Run.converted_at.is_(None)).group_by(Run.sequence_id)
        ).all()
    return dict(rows)


def overview(db: Database, catalog: Catalog, since: datetime) -> tuple[Report, list[SequenceView]]:
    report = build_report(db, since)
    waiting = waiting_by_step(db)
    open_runs = not_converted_runs(db, report.since)
    totals = {s.sequence_id: s for s in report.sequences}
    views: list[SequenceView] = []
    for sequence in catalog.file.sequences:
        total = totals.get(sequence.id)
        view = SequenceView(
            id=sequence.id, description=sequence.description or "", category=sequence.category,
            trigger=trigger_text(sequence), entered=total.entered if total else 0,
            converted=total.converted if total else 0, conversion_rate=total.conversion_rate if total else None,
            orders=total.orders if total else 0, revenue=format_money(total.revenue) if total else "-",
            not_converted=open_runs.get(sequence.id, 0), flowchart=graph.to_svg(sequence),
        )
        reported = [r for r in report.steps if r.sequence_id == sequence.id]
        # Every send step of the current definition gets a row, even before anything went out.
        paths = [path for path, step in sequence.walk() if isinstance(step, SendStep)]
        for path, step in sequence.walk():
            if not isinstance(step, SendStep):
                continue
            matching = [r for r in reported if r.step == path] or [
                StepReport(sequence_id=sequence.id, step=path, channel=step.send, template=step.template,
                           variant=variant_of(path))]
            view.steps.extend(StepView(r, waiting.get((sequence.id, path), 0), current=True) for r in matching)
        view.steps.extend(StepView(r, waiting.get((sequence.id, r.step), 0), current=False)
                          for r in reported if r.step not in paths)
        views.append(view)
    return report, views


# -- messages ---------------------------------------------------------------------------------


class MessageRow(BaseModel):
    id: int
    created_at: datetime
    sequence_id: str
    step: str
    channel: str
    template: str
    customer_id: str | None
    recipient: str | None
    status: str
    delivery_status: str | None
    error: str | None


@dataclass
class MessagePage:
    rows: list[MessageRow]
    page: int
    has_next: bool


def message_page(db: Database, page: int = 1, sequence_id: str | None = None) -> MessagePage:
    """Newest first, 50 a page. No total count: counting a million rows per page view is the cost
    this page exists to avoid; one extra row says whether there is a next page."""
    page = max(page, 1)
    query = select(
        Message.id, Message.created_at, Message.sequence_id, Message.step, Message.channel, Message.template,
        Message.customer_id, Message.recipient, Message.status, Message.delivery_status, Message.error,
    ).order_by(Message.id.desc()).limit(PER_PAGE + 1).offset((page - 1) * PER_PAGE)
    if sequence_id:
        # Run ids are `<sequence>/<key>`: a range on the indexed workflow_id finds one sequence's
        # messages without reading the others ('0' is the character after '/').
        query = query.where(Message.workflow_id >= f"{sequence_id}/", Message.workflow_id < f"{sequence_id}0",
                            Message.sequence_id == sequence_id)
    with db.session() as session:
        rows = [MessageRow.model_validate(r._asdict()) for r in session.execute(query)]
    for row in rows:
        row.created_at = utc(row.created_at)
    return MessagePage(rows=rows[:PER_PAGE], page=page, has_next=len(rows) > PER_PAGE)


@dataclass
class Notice:
    type: str
    occurred_at: datetime
    detail: str


@dataclass
class MessageDetail:
    message: Message
    variant: str | None
    notices: list[Notice]


def message_detail(db: Database, message_id: int) -> MessageDetail | None:
    with db.session() as session:
        message = session.get(Message, message_id)
        if message is None:
            return None
        notices: list[Notice] = []
        if message.customer_id:
            # Provider notifications name the message inside their JSON payload, which has no
            # index; the customer's own events (indexed) are few, so filter those.
            events = session.scalars(
                select(Event).where(Event.customer_id == message.customer_id, Event.type.in_(DELIVERY_EVENTS))
                .order_by(Event.occurred_at).limit(TIMELINE_LIMIT)
            )
            for event in events:
                data = (event.payload or {}).get("data") or {}
                if str(data.get("message_id")) == str(message.id):
                    notices.append(Notice(event.type, utc(event.occurred_at), _short(data)))
    return MessageDetail(message=message, variant=variant_of(message.step), notices=notices)


# -- customers --------------------------------------------------------------------------------


@dataclass
class Entry:
    at: datetime
    kind: str
    title: str
    detail: str = ""
    link: str | None = None


@dataclass
class Timeline:
    customer: Customer
    segment: str | None
    level: str | None
    entries: list[Entry]
    truncated: bool


def find_customer(db: Database, q: str) -> Customer | None:
    """By id (the primary key), else by email address (case-insensitive)."""
    q = q.strip()
    if not q:
        return None
    with db.session() as session:
        customer = session.get(Customer, q)
        if customer is None and "@" in q:
            customer = session.scalars(
                select(Customer).where(func.lower(Customer.email) == q.lower()).limit(1)).first()
        return customer


def customer_timeline(db: Database, customer: Customer) -> Timeline:
    """Events, messages, runs, orders and suppressions of one customer, oldest first; each read
    through its customer_id index, newest TIMELINE_LIMIT of each."""
    cid = customer.id
    entries: list[Entry] = []
    truncated = False
    with db.session() as session:
        score = session.get(CustomerScore, cid)

        def newest(query, column) -> list[Any]:
            nonlocal truncated
            rows = list(session.scalars(query.order_by(column.desc()).limit(TIMELINE_LIMIT + 1)))
            truncated = truncated or len(rows) > TIMELINE_LIMIT
            return rows[:TIMELINE_LIMIT]

        for e in newest(select(Event).where(Event.customer_id == cid), Event.occurred_at):
            data = (e.payload or {}).get("data") or {}
            about = str(data.get("message_id", ""))
            entries.append(Entry(utc(e.occurred_at), "event", e.type, _short(data),
                                 link=f"/messages/{about}" if about.isdigit() else None))
        for m in newest(select(Message).where(Message.customer_id == cid), Message.created_at):
            why = f" - {m.error}" if m.error else ""
            entries.append(Entry(utc(m.created_at), "message", f"{m.channel} {m.template}: {m.status}",
                                 f"{m.sequence_id}, step {m.step}{why}", link=f"/messages/{m.id}"))
        for r in newest(select(Run).where(Run.customer_id == cid), Run.started_at):
            entries.append(Entry(utc(r.started_at), "run", f"entered {r.sequence_id}", r.id))
            if r.converted_at:
                entries.append(Entry(utc(r.converted_at), "run", f"converted in {r.sequence_id}",
                                     r.converted_event_id or ""))
        for o in newest(select(Order).where(Order.customer_id == cid), Order.created_at):
            entries.append(Entry(utc(o.created_at), "order", f"order {o.id}", f"{o.total} {o.currency}"))
        for s in newest(select(Suppression).where(Suppression.customer_id == cid), Suppression.created_at):
            entries.append(Entry(utc(s.created_at), "suppression", f"{s.channel} suppressed ({s.scope})",
                                 f"{s.reason}, from {s.source}: {s.address}"))
            if s.lifted_at:
                entries.append(Entry(utc(s.lifted_at), "suppression", f"{s.channel} suppression lifted ({s.scope})",
                                     s.address))
    entries.sort(key=lambda e: e.at)
    return Timeline(customer=customer, segment=score.segment if score else None,
                    level=score.level if score else None, entries=entries, truncated=truncated)


def _short(data: dict[str, Any], limit: int = 160) -> str:
    text = ", ".join(f"{k}: {v}" for k, v in data.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= limit else text[: limit - 1] + "…"
