"""From one event to its effects: store it once, update the customer, start and steer runs.

A run's workflow id is `<sequence id>/<key>` (e.g. `fulfilment/1001`), so the same event routed
twice starts nothing new (Temporal refuses the duplicate id; a sequence with `reentry` starts anew
under it only after its window, see `reentry`), and an event for a run finds it
without a lookup table. Routing is idempotent: runs ignore an event id they have seen, so an
event routed again after a crash or by the reconciler has no second effect.

Order of arrival does not matter. An event a run cares about that arrives before the run
exists (Shopify's `fulfillments/create` before `orders/create`) is stored; when the run starts,
every stored event for its key that happened at or after its trigger is delivered to it.

An event signals only the runs that have a row in `runs` (most customers are in no win-back run,
and every order would otherwise cost a signal that comes back NOT_FOUND). The row is written
before the run starts (`starts.claim_run`), and the rows are read after the event is committed,
so an event that finds no row was stored before the row was written, hence before the run
started: the run's starter reads the stored events after its start and delivers it then.

`accept` stores a new event, rescores its customer and claims the rows of the runs it starts in
one transaction, and reads those rows after the commit, in one trip to a thread; routing then
makes only the Temporal calls, and one more trip marks the event routed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from keepflow import logs, metrics, tracing
from keepflow.insights import rfm
from keepflow.language import expressions
from keepflow.language.catalog import Catalog
from keepflow.language.dsl import Sequence
from keepflow.runtime import payload_parts, reentry, starts
from keepflow.runtime.events import CustomerIn, EventIn, OrderIn
from keepflow.runtime.payloads import EventSignal, RunInput
from keepflow.sending import contacts, line_friends
from keepflow.store import Coupon, Customer, Database, Delivery, Event, Order, Run, utc
from keepflow.store import payload_parts as parts

log = logging.getLogger("keepflow.runtime.routing")

# Events that show the customer doing something; they move `last_seen_at`, which the
# inactivity scan reads. A shipment or a profile edit in the store's admin does not.
ACTIVITY_TYPES = {"order.created", "customer.active", "review.submitted", "referral.created"}
# Events that change a customer's RFM scores or level.
RESCORE_TYPES = {"order.created", "review.submitted", "referral.created"}

# Senders retry for hours (Shopify) to days (Standard Webhooks): keep delivery ids longer.
DELIVERY_RETENTION = timedelta(days=7)


@dataclass
class Routed:
    event_id: str
    duplicate: bool = False
    started: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.started) + len(self.signalled)


@dataclass(frozen=True)
class Stored:
    """What `accept` found and wrote, so that routing need not ask the store again."""

    new: bool | None  # as `store` answers
    # The customer's `rfm` with this event counted, when the event starts a sequence.
    scores: dict[str, Any] | None = None
    # The runs it starts that have their `runs` row now (written here, or an earlier run's).
    rows: frozenset[str] = frozenset()
    # The runs that hear it and have a row, read after the commit: the ones to signal.
    noted: frozenset[str] = frozenset()
    # Those of `rows` this event's transaction wrote: noted already, with this event as their trigger.
    claimed: frozenset[str] = frozenset()


def workflow_id(sequence: Sequence, context: dict[str, Any]) -> str | None:
    """The run id for this sequence and context, or None when the context lacks the key."""
    try:
        key = expressions.evaluate(sequence.key, context)
    except expressions.ExpressionError:
        return None
    return None if key is None or key == "" else starts.run_id(sequence.id, key)


# -- storing ----------------------------------------------------------------------------------

def store(db: Database, event: EventIn, delivery: tuple[str, str] | None = None,
          default_region: str | None = None) -> bool | None:
    """Record the event once. True: new. False: seen before and routed. None: seen, not yet routed.
    `default_region` (rules.default_region) reads a phone number without a country code."""
    try:
        with db.session() as session:
            return _store(session, event, delivery, default_region)
    except IntegrityError:
        # The same event (or delivery) stored at this moment by a concurrent request.
        with db.session() as session:
            return _seen(session, event.id)


def accept(db: Database, catalog: Catalog, event: EventIn, delivery: tuple[str, str] | None = None) -> Stored:
    """`store`, and for a new event in the same transaction: the customer rescored (an order,
    review or referral), their scores read for the runs it starts, and those runs' rows claimed
    (see `starts.claim_run`). After the commit: which runs that hear the event have a row."""
    # The request's span, not accept's own: routed later, the event continues where routing now would.
    trace_parent = tracing.traceparent()
    with tracing.span("keepflow.accept", {"keepflow.event.id": event.id, "keepflow.event.type": event.type}):
        stored = _accept(db, catalog, event, delivery, trace_parent)
        tracing.note(**{"keepflow.event.new": stored.new is True})
        return stored


def _accept(db: Database, catalog: Catalog, event: EventIn, delivery: tuple[str, str] | None,
            trace_parent: str | None) -> Stored:
    context = _context(catalog, event)
    heard = [run_id for _, run_id in _heard(catalog, event, context)]
    triggered = catalog.triggered_by(event.type)
    try:
        with db.session() as session:
            # Its reads before any write: SQLite takes the write lock at the first write, so the
            # lock is held from the flush below to the commit, not while the store reads.
            with session.no_autoflush:
                new = _store(session, event, delivery, catalog.file.rules.default_region, trace_parent)
            if new is not True:
                return Stored(new)
            # The event's own rows first: a concurrent copy fails here, as the IntegrityError below.
            session.flush()
            scores = None
            if event.customer is not None:
                rescored = _rescore(session, event.customer.id) if event.type in RESCORE_TYPES else None
                if triggered:
                    scores = rescored or rfm.profile(session, event.customer.id) or rfm.unscored()
                    context["customer"] = {**context["customer"], "rfm": scores}
            rows, claimed = set(), set()
            for sequence in triggered:
                # A sequence with `reentry` may start nothing: `route` claims its row once it knows.
                if sequence.reentry is None and (run_id := workflow_id(sequence, context)) is not None:
                    if starts.claim_run(session, run_id, context, definition_hash=catalog.snapshot(sequence.id).hash):
                        claimed.add(run_id)
                    rows.add(run_id)
            part = None
            if rows:
                # The runs' context, as their start's codec would store it (keepflow/runtime/payload_parts.py):
                # written here, the start adds no write transaction of its own.
                part = payload_parts.context_part(context)
                parts.put(session.connection(), [(*part, event.customer.id if event.customer else None)])
    except IntegrityError:
        with db.session() as session:
            return Stored(_seen(session, event.id))
    if part is not None:
        payload_parts.known(db.url, *part)
    return Stored(True, scores, frozenset(rows), _noted(db, heard), frozenset(claimed))


def _store(session: Session, event: EventIn, delivery: tuple[str, str] | None, default_region: str | None,
           trace_parent: str | None = None) -> bool | None:
    # SQLite keeps a timestamp's clock time and drops its offset: store UTC, always.
    occurred_at = event.occurred_at.astimezone(timezone.utc)
    if delivery is not None:
        source, delivery_id = delivery
        known = session.get(Delivery, (source, delivery_id))
        if known is not None:
            return _seen(session, known.event_id)
        session.add(Delivery(source=source, id=delivery_id, event_id=event.id, received_at=_now()))
    # An event stored before (sent again under another delivery id) is not looked up: its insert
    # fails, the whole transaction with it, and the caller answers as for any copy (IntegrityError).
    if event.customer is not None:
        _upsert_customer(session, event, event.customer, default_region)
    if event.type == "order.created" and event.order is not None and session.get(Order, event.order.id) is None:
        session.add(Order(
            id=event.order.id, customer_id=event.customer.id if event.customer else None,
            total=event.order.total or 0, currency=event.order.currency or "",
            items=[i.model_dump(mode="json") for i in event.order.items], created_at=occurred_at,
        ))
    session.add(Event(
        id=event.id, type=event.type, customer_id=event.customer.id if event.customer else None,
        order_id=event.order.id if event.order else None, occurred_at=occurred_at,
        received_at=_now(), payload=event.model_dump(mode="json"), trace_parent=trace_parent,
    ))
    if event.order is not None and event.type == "order.created":
        _redeem_coupons(session, event, event.order)
    return True


def _rescore(session: Session, customer_id: str) -> dict[str, Any] | None:
    """The customer's new `rfm` profile, or None when it could not be computed."""
    try:
        return rfm.refresh_customer(session, customer_id, _now())
    except SQLAlchemyError:
        raise  # the transaction is spoilt: the event is not stored either, and the sender retries
    except Exception:  # scores are advisory; the daily refresh catches up
        log.exception("could not rescore customer %s", customer_id)
        return None


def _noted(db: Database, run_ids: list[str]) -> frozenset[str]:
    """Those of `run_ids` with a row in `runs`. Read after the event's commit (see the module docstring)."""
    if not run_ids:
        return frozenset()
    with db.session() as session:
        return frozenset(session.scalars(select(Run.id).where(Run.id.in_(run_ids))))


def _context(catalog: Catalog, event: EventIn) -> dict[str, Any]:
    return {**event.context(), "brand": catalog.file.brand}


def _heard(catalog: Catalog, event: EventIn, context: dict[str, Any]) -> list[tuple[Sequence, str]]:
    """The runs this event is for among those that hear its type, whether or not they exist."""
    return [(sequence, run_id) for sequence in catalog.interested_in(event.type)
            if (run_id := workflow_id(sequence, context))]


def with_scores(db: Database, customer: dict[str, Any]) -> dict[str, Any]:
    """The customer's context with `rfm`, the scores as they stand now: conditions may ask
    `customer.rfm.segment`, also of a customer never scored (then the profile of one without orders)."""
    return {**customer, "rfm": rfm.profile(db, customer["id"]) or rfm.unscored()}


def rescore(db: Database, customer_id: str) -> None:
    """An order, review or referral changes the customer's RFM standing: score them now."""
    try:
        rfm.refresh_customer(db, customer_id, _now())
    except Exception:  # scores are advisory; the daily refresh catches up
        log.exception("could not rescore customer %s", customer_id)


def _redeem_coupons(session: Session, event: EventIn, order: OrderIn) -> None:
    """A Keepflow coupon code on an order is used up: once, and only before it expires."""
    for code in order.discount_codes:
        session.execute(update(Coupon).where(
            Coupon.code == code.upper(), Coupon.redeemed_at.is_(None),
            Coupon.expires_at > event.occurred_at.astimezone(timezone.utc),
        ).values(redeemed_at=event.occurred_at.astimezone(timezone.utc), redeemed_order_id=order.id))




def _seen(session: Session, event_id: str) -> bool | None:
    routed_at = session.scalar(select(Event.routed_at).where(Event.id == event_id))
    return False if routed_at is not None else None


def _upsert_customer(session: Session, event: EventIn, incoming: CustomerIn, default_region: str | None = None) -> None:
    customer = session.get(Customer, incoming.id)
    if customer is None:
        customer = Customer(id=incoming.id, consents={}, attributes={})
        session.add(customer)
    # Only what the event carries changes: a shipping update without a phone keeps the phone.
    for name in ("first_name", "locale", "timezone"):
        value = getattr(incoming, name)
        if value is not None:
            setattr(customer, name, value)
    if incoming.email is not None:
        customer.email, customer.email_problem = _checked(incoming.email, contacts.normalize_email)
    if incoming.phone is not None:
        region = _region(customer.locale) or default_region
        customer.phone, customer.phone_problem = _checked(incoming.phone, lambda v: contacts.normalize_phone(v, region))
    if incoming.line_user_id is not None:
        customer.line_user_id, customer.line_user_id_problem = _checked(incoming.line_user_id, contacts.normalize_line_user_id)
    customer.consents = {**(customer.consents or {}), **incoming.consents}
    linked = customer.line_user_id if incoming.line_user_id is not None and not customer.line_user_id_problem else None
    if linked and line_friends.is_friend(session, linked):
        # Followed before the shop told us whose LINE id it is: the follow was their consent.
        line_friends.grant(customer)
    seen = event.occurred_at.astimezone(timezone.utc)
    if event.type in ACTIVITY_TYPES and (customer.last_seen_at is None or utc(customer.last_seen_at) < seen):
        customer.last_seen_at = seen


def _checked(value: str, normalize) -> tuple[str, str | None]:
    """The normal form, or the value as sent with the reason it cannot be used (kept, never sent to)."""
    try:
        return normalize(value), None
    except contacts.InvalidContact as err:
        return value, str(err)[:255]


def _region(locale: str | None) -> str | None:
    """`th-TH` -> "TH": the country a number without a country code most likely belongs to."""
    parts = (locale or "").replace("_", "-").split("-")
    return next((p.upper() for p in parts[1:] if len(p) == 2 and p.isalpha()), None)


def mark_converted(db: Database, run_id: str, event: EventIn) -> None:
    with db.session() as session:
        session.execute(update(Run).where(Run.id == run_id, Run.converted_at.is_(None))
                        .values(converted_at=event.occurred_at.astimezone(timezone.utc), converted_event_id=event.id))


def _mark_routed(session: Session, event_id: str, runs: int) -> None:
    routed_at = _now()
    metrics.routed(session.scalar(update(Event).where(Event.id == event_id).values(routed_at=routed_at, runs=runs)
                                  .returning(Event.received_at)), routed_at)


# -- routing ----------------------------------------------------------------------------------

def _signal(event: EventIn) -> EventSignal:
    return EventSignal(id=event.id, type=event.type, occurred_at=event.occurred_at.isoformat(), data=event.data)


async def _deliver(client: Client, run_id: str, signal: EventSignal) -> bool:
    try:
        await client.get_workflow_handle(run_id).signal("event", signal)
        return True
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False  # no such run (yet): stored, and delivered when it starts
        raise


async def route(client: Client, catalog: Catalog, db: Database, event: EventIn, task_queue: str,
                rerouting: bool = False, stored: Stored | None = None) -> Routed:
    """Signal the runs that wait for or exit on this event; start the runs it triggers, with the
    stored events each missed; then, last, note the runs and mark the event routed.

    The mark comes last so that a crash (or a cancelled request) at any point before it leaves the
    event unrouted, and the reconciler routes it again. Every step before it is safe to repeat:
    runs ignore an event id they have heard, a start finds its run, a conversion is noted once.
    `rerouting`: the event may have been routed part way before. A start that finds its run
    already there then asks whether this event started it, and if so finishes that run's catch-up.
    `stored`: what `accept` did for a new event (the rescore, the scores, the rows); without it
    (an event stored before), routing does those here.
    """
    context = _context(catalog, event)
    routed = Routed(event.id)
    heard = _heard(catalog, event, context)
    noted = stored.noted if stored is not None else await asyncio.to_thread(_noted, db, [r for _, r in heard])
    for sequence, heard_id in heard:
        if heard_id in noted and await _deliver(client, heard_id, _signal(event)):
            routed.signalled.append(heard_id)
            if event.type in sequence.goal:
                await asyncio.to_thread(mark_converted, db, heard_id, event)
    if stored is None and event.customer is not None and event.type in RESCORE_TYPES:
        await asyncio.to_thread(rescore, db, event.customer.id)  # routed again, it scores again
    triggered = catalog.triggered_by(event.type)
    if triggered and event.customer is not None:
        context["customer"] = ({**context["customer"], "rfm": stored.scores} if stored is not None and stored.scores
                               else await asyncio.to_thread(with_scores, db, context["customer"]))
    started: list[tuple[Sequence, str]] = []
    hashes: dict[str, str] = {}  # each new run's definition hash, for `runs`
    for sequence in triggered:
        run_id = workflow_id(sequence, context)
        if run_id is None:
            log.warning("event %s: no %r for sequence %s's key", event.id, sequence.key, sequence.id)
            continue
        run = RunInput(snapshot=catalog.snapshot(sequence.id), key=run_id.split("/", 1)[1], context=context)
        entry: reentry.Entry = "first"
        if sequence.reentry is not None:
            entry = await reentry.entry(client, db, run_id, sequence.reentry.after, event.id, event.occurred_at)
        if entry != "wait" and (stored is None or run_id not in stored.rows):
            # Its row before its start (see the module docstring); noted in full by _settle below.
            await asyncio.to_thread(starts.claim, db, run_id, context, None, run.snapshot.hash)
        if entry != "wait" and await starts.start_run(client, run, task_queue, db=None, trigger=event.id,
                                                      allow_rerun=entry == "again") is not None:
            routed.started.append(run_id)
        elif not (rerouting and await starts.started_by(client, run_id, event.id)):
            continue  # started by another event for the key
        # New, or started by this event in a routing cut short: either way it gets its catch-up.
        started.append((sequence, run_id))
        hashes[run_id] = run.snapshot.hash
    runs = len(routed.signalled) + len(started)
    claimed = stored.claimed if stored is not None else frozenset()
    if not started:
        await asyncio.to_thread(_settle, db, event, context, hashes, runs, claimed)
        return routed
    # Read after the start: an event stored from here on finds the run's row and signals it. When
    # nothing was missed, the same transaction settles the event.
    earlier = await asyncio.to_thread(_settle_unless_missed, db, event, context, started, hashes, runs, claimed)
    if earlier is not None:
        for (sequence, run_id), missed in zip(started, earlier):
            await _catch_up(client, sequence, run_id, missed)
        await asyncio.to_thread(_settle, db, event, context, hashes, runs, claimed)
    return routed


def _settle_unless_missed(db: Database, trigger: EventIn, context: dict[str, Any], started: list[tuple[Sequence, str]],
                          hashes: dict[str, str], runs: int, claimed: frozenset[str]) -> list[list[EventIn]] | None:
    """The stored events each new run missed, or, when none did, None and the event settled."""
    try:
        with db.session() as session:
            earlier = [_stored_events(session, wanted, trigger) if (wanted := s.events_heard()) else []
                       for s, _ in started]
            if any(workflow_id(sequence, e.context()) == run_id for (sequence, run_id), missed in zip(started, earlier)
                   for e in missed):
                return earlier
            _note_and_mark(session, trigger, context, hashes, runs, claimed)
            return None
    except IntegrityError:
        _settle(db, trigger, context, hashes, runs, claimed)  # see _settle
        return None


def _settle(db: Database, trigger: EventIn, context: dict[str, Any], started: dict[str, str], runs: int,
            claimed: frozenset[str] = frozenset()) -> None:
    """One write for the event's bookkeeping: its new runs (id: definition hash) noted, the event marked routed."""
    try:
        with db.session() as session:
            _note_and_mark(session, trigger, context, started, runs, claimed)
    except IntegrityError:
        # Another process noted one of these runs this moment: it routed the same event for a
        # sender's retry that reached it. Once more, that run is found noted and left as it is.
        with db.session() as session:
            _note_and_mark(session, trigger, context, started, runs, frozenset())


def _note_and_mark(session: Session, trigger: EventIn, context: dict[str, Any], started: dict[str, str], runs: int,
                   claimed: frozenset[str]) -> None:
    for run_id, definition_hash in started.items():
        if run_id in claimed:
            continue  # its row was written with this event as its trigger, when the event was stored
        noted = session.get(Run, run_id)
        if noted is None or noted.trigger_event_id != trigger.id:  # else noted by a routing cut short
            starts.note_run(session, run_id, context, definition_hash=definition_hash)
    _mark_routed(session, trigger.id, runs)


async def _catch_up(client: Client, sequence: Sequence, run_id: str, earlier: list[EventIn]) -> None:
    """Deliver to a new run the stored events for it that arrived before it existed."""
    for event in earlier:
        if workflow_id(sequence, event.context()) == run_id:
            await _deliver(client, run_id, _signal(event))


def _stored_events(session: Session, types: set[str], trigger: EventIn) -> list[EventIn]:
    same_subject = []
    if trigger.order is not None:
        same_subject.append(Event.order_id == trigger.order.id)
    if trigger.customer is not None:
        same_subject.append(Event.customer_id == trigger.customer.id)
    if not same_subject:
        return []
    payloads = session.scalars(
        select(Event.payload)
        .where(Event.type.in_(types), or_(*same_subject), Event.id != trigger.id,
               # Happened after the trigger, whenever it arrived: earlier ones belong to earlier runs.
               Event.occurred_at >= trigger.occurred_at.astimezone(timezone.utc))
        .order_by(Event.occurred_at)
    ).all()
    return [EventIn.model_validate(p) for p in payloads]


async def ingest(db: Database, client: Client, catalog: Catalog, event: EventIn, task_queue: str,
                 delivery: tuple[str, str] | None = None) -> Routed:
    """Store, then route. The event is durable before any run hears of it."""
    stored = await asyncio.to_thread(accept, db, catalog, event, delivery)
    if stored.new is False:
        return Routed(event.id, duplicate=True)
    return await route_stored(client, catalog, db, event, task_queue, duplicate=stored.new is None, stored=stored)


async def route_stored(client: Client, catalog: Catalog, db: Database, event: EventIn, task_queue: str,
                       duplicate: bool = False, stored: Stored | None = None) -> Routed:
    """Route an event already stored; routing marks it routed, last.

    If routing fails or stops part way (Temporal unreachable, a crash) the event stays stored and
    unrouted: the sender's retry or the reconciler routes it again, and what the first try did
    has no second effect. `duplicate`: the event was stored before (a retry, the reconciler).
    """
    with logs.about(event_id=event.id), tracing.span("keepflow.route", {"keepflow.event.id": event.id, "keepflow.event.type": event.type,
                                         "keepflow.rerouting": duplicate}):
        routed = await route(client, catalog, db, event, task_queue, rerouting=duplicate,
                             stored=stored if stored is not None and stored.new is True else None)
        tracing.note(**{"keepflow.runs.started": len(routed.started), "keepflow.runs.signalled": len(routed.signalled)})
    routed.duplicate = duplicate
    return routed


def backlog(db: Database) -> tuple[int, datetime | None]:
    """How many stored events wait to be routed, and when the oldest came."""
    with db.session() as session:
        waiting, oldest = session.execute(
            select(func.count(), func.min(Event.received_at)).where(Event.routed_at.is_(None))).one()
    return waiting, oldest


async def reconcile(db: Database, client: Client, catalog: Catalog, task_queue: str,
                    older_than: timedelta = timedelta(seconds=10), limit: int = 200,
                    busy: Collection[str] = ()) -> int:
    """Route events stored but never routed (Temporal was down when they came, routing was cut
    short); forget old delivery ids. `busy`: events this process is routing right now."""
    def pending() -> list[tuple[EventIn, str | None]]:
        with db.session() as session:
            session.execute(delete(Delivery).where(Delivery.received_at < _now() - DELIVERY_RETENTION))
            rows = session.execute(
                select(Event.payload, Event.trace_parent).where(Event.routed_at.is_(None), Event.received_at < _now() - older_than)
                .order_by(Event.occurred_at).limit(limit)
            ).all()
        return [(EventIn.model_validate(payload), parent) for payload, parent in rows]

    events = [(e, parent) for e, parent in await asyncio.to_thread(pending) if e.id not in busy]
    for event, parent in events:
        with tracing.resumed(parent):
            await route_stored(client, catalog, db, event, task_queue, duplicate=True)
    return len(events)


def _now() -> datetime:
    return datetime.now(timezone.utc)
