"""What the dashboard shows, read with SQL aggregates and index-backed lookups.

The funnel comes from `keepflow.insights.report.build_report`, so the page and `keepflow report` can
never disagree; it reads the period's rows through indexes (migration 0006). Everything else here
touches the messages table only through its indexes (`(status, created_at)`,
`(customer_id, created_at)`, `(sequence_id, id)`, the primary key), so a page of messages or a
customer costs the same with a thousand messages or a million. `bench/dashboard.py` times them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keepflow.http.dashboard.in_flight import WAITING, InFlight, passes_on, settles
from keepflow.insights import ab_tests, graph
from keepflow.insights.report import DELIVERY_EVENTS, Report, StepReport, build_report, format_money, variant_of
from keepflow.language.catalog import Catalog
from keepflow.language.dsl import InactivityTrigger, SendStep, Sequence
from keepflow.language.durations import format_duration
from keepflow.runtime import deployments
from keepflow.sending import suppressions
from keepflow.sending.channels import CHANNELS, normalize_address
from keepflow.store import Customer, Database, Event, Message, Order, Run, Suppression, utc
from keepflow.store.scores import CustomerScore

PER_PAGE = 50
# A customer page shows at most this many rows of each kind, newest first.
TIMELINE_LIMIT = 200


# -- overview ---------------------------------------------------------------------------------


@dataclass
class StepView:
    report: StepReport
    waiting: int
    # In the current sequences file; False for a step only older runs still know.
    current: bool
    # What a marketer reads: the step's `name:`, else its place told in words.
    label: str = ""


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
    # not_converted split by Temporal's count of the period's runs still open (`with_open_runs`);
    # None where Temporal could not count them.
    in_progress: int | None = None
    ended: int | None = None
    # The sequence drawn by keepflow/insights/graph.py: SVG markup it escapes itself.
    flowchart: str = ""
    steps: list[StepView] = field(default_factory=list)
    # (path, label) of each step a run can wait at, for the runs in flight (keepflow/http/dashboard/in_flight.py).
    settling: list[tuple[str, str]] = field(default_factory=list)
    # Each split's arms side by side, with whether their difference is more than chance.
    splits: list[ab_tests.Comparison] = field(default_factory=list)


def trigger_text(sequence: Sequence) -> str:
    if isinstance(sequence.trigger, InactivityTrigger):
        text = f"no activity for {format_duration(sequence.trigger.inactive_for)}"
        if sequence.trigger.segment:
            text += f" (segments: {', '.join(sequence.trigger.segment)})"
        return text
    return sequence.trigger or "started by another sequence"


def waiting_by_step(db: Database) -> dict[tuple[str, str], int]:
    """Messages not yet out (pending, deferred, sending) per sequence and step: the status index."""
    # Materialised first, so the few rows come from the status index (see keepflow/insights/report.py).
    held = (select(Message.sequence_id, Message.step).where(Message.status.in_(WAITING))
            .cte("held").prefix_with("MATERIALIZED"))
    query = select(held.c.sequence_id, held.c.step, func.count()).group_by(held.c.sequence_id, held.c.step)
    with db.session() as session:
        rows = session.execute(query).all()
    return {(sid, step): n for sid, step, n in rows}


_BRANCH_WORDS = {"then": "if yes", "else": "if not", "on_timeout": "on timeout"}


def readable_path(path: str) -> str:
    """`6.on_timeout.0.then.1` as "step 7 › on timeout › step 1 › if yes › step 2": step segments
    (an index, or the step's `id`) alternate with branches (`then`, `else`, `on_timeout`, a variant)."""
    words = []
    for n, segment in enumerate(path.split(".")):
        if n % 2:
            words.append(_BRANCH_WORDS.get(segment, f"variant {segment}"))
        else:
            words.append(f"step {int(segment) + 1}" if segment.isdigit() else segment)
    return " › ".join(words)


def _waiting_label(path: str, step, later: list[str]) -> str:
    label = graph.label_of(step)
    if later:  # nothing is recorded between them: see in_flight.passes_on
        label += f" (or already at {', '.join(readable_path(p) for p in later)}: no message tells them apart)"
    return label


def _view(sequence: Sequence, report: Report, waiting: dict[tuple[str, str], int]) -> SequenceView:
    later = passes_on(sequence)
    total = next((s for s in report.sequences if s.sequence_id == sequence.id), None)
    view = SequenceView(
        id=sequence.id, description=sequence.description or "", category=sequence.category,
        trigger=trigger_text(sequence), entered=total.entered if total else 0,
        converted=total.converted if total else 0, conversion_rate=total.conversion_rate if total else None,
        orders=total.orders if total else 0, revenue=format_money(total.revenue) if total else "-",
        # From the same totals as `converted`, so entered = converted + not converted always holds.
        not_converted=(total.entered - total.converted) if total else 0, flowchart=graph.to_svg(sequence),
        settling=[(path, _waiting_label(path, step, later.get(path, []))) for path, step in sequence.walk() if settles(step)],
        splits=ab_tests.comparisons(sequence, report),
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
        label = step.name or readable_path(path)
        view.steps.extend(StepView(r, waiting.get((sequence.id, path), 0), current=True, label=label) for r in matching)
    view.steps.extend(StepView(r, waiting.get((sequence.id, r.step), 0), current=False, label=readable_path(r.step))
                      for r in reported if r.step not in paths)
    return view


def with_open_runs(views: list[SequenceView], runs: InFlight) -> None:
    """Split each view's runs not converted into those still in progress and those that ended.
    Clamped to the store's figures, so entered = converted + in progress + ended holds whatever
    Temporal says (its start times and the store's differ by the moment between them, and by a
    continuation for a run continued as new)."""
    for view in views:
        open_runs = runs.open_since(view.id)
        if open_runs is None:
            continue
        view.in_progress = min(open_runs, view.not_converted)
        view.ended = view.not_converted - view.in_progress


def overview(db: Database, catalog: Catalog, since: datetime) -> tuple[Report, list[SequenceView]]:
    report = build_report(db, since, clv=False)  # the pages do not show lifetime value
    waiting = waiting_by_step(db)
    return report, [_view(sequence, report, waiting) for sequence in catalog.file.sequences]


def sequence_page(db: Database, sequence: Sequence, since: datetime) -> tuple[Report, SequenceView]:
    """One sequence of the current file: its funnel alone (the report filtered to it)."""
    # The whole report, this sequence's part taken: its numbers are the same as with the report's
    # `sequence_id` filter, and the period's indexes serve it better than the sequence's.
    report = build_report(db, since, clv=False)
    # Unfiltered too: a sequence_id condition would draw SQLite to that column's index (every
    # message of the sequence) instead of the few held rows of the status index.
    waiting = waiting_by_step(db)
    return report, _view(sequence, report, waiting)


# -- deployed versions ------------------------------------------------------------------------


def version_label(number: int | None) -> str:
    return f"v{number}" if number is not None else "a definition from before versions were kept"


@dataclass
class VersionsView:
    live: deployments.Version | None
    # (version label, runs started on it in the period), newest version first.
    started: list[tuple[str, int]]


def sequence_versions(db: Database, sequence_id: str, since: datetime) -> VersionsView:
    """Which deployed version the runs of a sequence started in the period run on."""
    with db.session() as session:
        counts = session.execute(
            select(Run.definition_hash, func.count()).where(Run.sequence_id == sequence_id, Run.started_at >= since)
            .group_by(Run.definition_hash)).all()
    started_on = deployments.versions_of(db, [(sequence_id, digest) for digest, _ in counts])
    by_version: dict[int | None, int] = {}
    for digest, n in counts:
        number = started_on.get((sequence_id, digest or ""))
        by_version[number] = by_version.get(number, 0) + n
    ordered = sorted(by_version.items(), key=lambda item: -1 if item[0] is None else item[0], reverse=True)
    return VersionsView(deployments.live(db), [(version_label(number), n) for number, n in ordered])


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
    has_prev: bool


def message_page(db: Database, page: int = 1, sequence_id: str | None = None, before: int | None = None,
                 after: int | None = None) -> MessagePage:
    """Newest first, 50 a page. The links carry a cursor, the id of the last (`before`) or first
    (`after`) row of the page they come from, so a deep page is found through the primary key (or
    ix_messages_sequence_id) instead of skipping rows; `page` alone (no cursor) still works: the
    rows before it are skipped in a narrow index, not read. No total count: counting a million rows per page view is the cost this page exists to
    avoid; one extra row says whether there is a page beyond."""
    page = max(page, 1)
    query = select(
        Message.id, Message.created_at, Message.sequence_id, Message.step, Message.channel, Message.template,
        Message.customer_id, Message.recipient, Message.status, Message.delivery_status, Message.error,
    ).limit(PER_PAGE + 1)
    if sequence_id:
        query = query.where(Message.sequence_id == sequence_id)
    if after is not None:
        query = query.where(Message.id > after).order_by(Message.id)
    elif before is not None:
        query = query.where(Message.id < before).order_by(Message.id.desc())
    else:
        query = query.order_by(Message.id.desc())
        if page > 1:
            # The page's newest id, counted off a narrow index (ix_messages_id, or
            # ix_messages_sequence_id), then the page from there through the primary key.
            edge = select(Message.id).order_by(Message.id.desc()).offset((page - 1) * PER_PAGE).limit(1)
            if sequence_id:
                edge = edge.where(Message.sequence_id == sequence_id)
            query = query.where(Message.id <= edge.scalar_subquery())
    with db.session() as session:
        rows = [MessageRow.model_validate(r._asdict()) for r in session.execute(query)]
    for row in rows:
        row.created_at = utc(row.created_at)
    beyond = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    if after is not None:
        # Read oldest first from the cursor up; shown newest first. Nothing newer: the first page.
        return MessagePage(rows=rows[::-1], page=page if beyond else 1, has_next=True, has_prev=beyond)
    return MessagePage(rows=rows, page=page, has_next=beyond, has_prev=page > 1)


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
    # Per channel, what may be sent now: the consent given, read with the suppressions in force.
    consents: dict[str, str] = field(default_factory=dict)


def find_customer(db: Database, q: str) -> Customer | None:
    """By id (the primary key), else by email address in any case, else by LINE user id (what an
    operator has of a customer who writes to the shop's LINE account).

    Addresses are stored in their normal form (keepflow/sending/contacts.py), so the lookup normalises
    what was typed and compares with `=`, which the column's index answers; an address that
    failed validation was stored as sent, so that spelling is tried too. Phone numbers have no index,
    so they are not looked up here."""
    q = q.strip()
    if not q:
        return None
    with db.session() as session:
        customer = session.get(Customer, q)
        for name, column in (("email", Customer.email), ("line", Customer.line_user_id)):
            if customer is not None:
                break
            if name == "email" and "@" not in q:
                continue
            spellings = {normalize_address(name, q), q}
            customer = session.scalars(
                select(Customer).where(column.in_(sorted(spellings))).order_by(Customer.id).limit(1)).first()
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
        runs = newest(select(Run).where(Run.customer_id == cid), Run.started_at)
        started_on = deployments.versions_of(db, [(r.sequence_id, r.definition_hash) for r in runs])
        for r in runs:
            version = started_on.get((r.sequence_id, r.definition_hash or ""))
            entries.append(Entry(utc(r.started_at), "run", f"entered {r.sequence_id}",
                                 f"{r.id}, on {version_label(version)}"))
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
        consents = _consents_now(session, customer)
    entries.sort(key=lambda e: e.at)
    return Timeline(customer=customer, segment=score.segment if score else None,
                    level=score.level if score else None, entries=entries, truncated=truncated, consents=consents)


def _consents_now(session: Session, customer: Customer) -> dict[str, str]:
    """The consent a customer gave, per channel, as it stands with the suppressions of their
    address in force: an unsubscribe does not change `consents`, so alone it would still say yes."""
    addresses = {name: getattr(customer, channel.address_field) for name, channel in CHANNELS.items()}
    given = {channel: "yes" if yes else "no" for channel, yes in (customer.consents or {}).items()}
    for channel, address in addresses.items():
        if not address:
            continue
        active = sorted(suppressions.active(session, channel, address), key=lambda s: s.created_at)
        blocked = next((s for s in active if s.scope == suppressions.ALL), None)
        if blocked is not None:
            given[channel] = f"nothing may be sent ({blocked.reason}, from {blocked.source})"
        elif any(s.scope == suppressions.MARKETING for s in active):
            given[channel] = "transactional only: unsubscribed from marketing"
        elif active:
            groups = ", ".join(s.scope.removeprefix("group:") for s in active)
            given[channel] = f"{given.get(channel, 'none recorded')}; unsubscribed from {groups}"
    return dict(sorted(given.items()))


def _short(data: dict[str, Any], limit: int = 160) -> str:
    text = ", ".join(f"{k}: {v}" for k, v in data.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= limit else text[: limit - 1] + "…"
