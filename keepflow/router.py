"""From one event to its effects: store it once, update the customer, start and steer runs.

A run's workflow id is `<sequence id>/<key>` (e.g. `fulfilment/1001`), so the same event routed
twice starts nothing new, and an event for a run finds it without a lookup table.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from sqlalchemy.exc import IntegrityError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from keepflow import expressions
from keepflow.contracts import EventSignal, RunInput
from keepflow.dsl import Sequence
from keepflow.events import EventIn, utc
from keepflow.loader import Catalog
from keepflow.store import Customer, Database, Event, Order

log = logging.getLogger("keepflow.router")


@dataclass
class Routed:
    duplicate: bool = False
    started: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)


def workflow_id(sequence: Sequence, context: dict[str, Any]) -> str | None:
    """The run id for this sequence and context, or None when the context lacks the key."""
    try:
        key = expressions.evaluate(sequence.key, context)
    except expressions.ExpressionError:
        return None
    return None if key is None or key == "" else f"{sequence.id}/{key}"


def store(db: Database, event: EventIn) -> bool:
    """Record the event and what it tells us about the customer. False if we had it already."""
    try:
        with db.session() as session:
            if session.get(Event, event.id) is not None:
                return False
            _upsert_customer(session, event)
            if event.order is not None and session.get(Order, event.order.id) is None and event.type == "order.created":
                session.add(Order(
                    id=event.order.id, customer_id=event.customer.id, total=event.order.total,
                    currency=event.order.currency, items=[i.model_dump(mode="json") for i in event.order.items],
                    created_at=event.occurred_at,
                ))
            session.add(Event(id=event.id, type=event.type, customer_id=event.customer.id,
                              occurred_at=event.occurred_at, payload=event.model_dump(mode="json")))
        return True
    except IntegrityError:
        return False  # the same event stored concurrently by another request


def _upsert_customer(session, event: EventIn) -> None:
    incoming = event.customer
    customer = session.get(Customer, incoming.id) or Customer(id=incoming.id, consents={}, attributes={})
    for name in ("email", "phone", "first_name", "locale", "timezone"):
        value = getattr(incoming, name)
        if value is not None:
            setattr(customer, name, value)
    customer.consents = {**(customer.consents or {}), **incoming.consents}
    seen = event.occurred_at.astimezone(timezone.utc)
    if customer.last_seen_at is None or utc(customer.last_seen_at) < seen:
        customer.last_seen_at = seen
    session.add(customer)


async def route(client: Client, catalog: Catalog, event: EventIn, task_queue: str, time_scale: float = 1.0) -> Routed:
    context = {**event.context(), "brand": catalog.file.brand}
    routed = Routed()
    signal = EventSignal(id=event.id, type=event.type, occurred_at=event.occurred_at.isoformat(), data=event.data)
    for sequence in catalog.interested_in(event.type):
        run_id = workflow_id(sequence, context)
        if run_id is None:
            continue
        try:
            await client.get_workflow_handle(run_id).signal("event", signal)
            routed.signalled.append(run_id)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
    for sequence in catalog.triggered_by(event.type):
        run_id = workflow_id(sequence, context)
        if run_id is None:
            log.warning("event %s: sequence %s has no key %r in this event", event.id, sequence.id, sequence.key)
            continue
        snapshot = catalog.snapshot(sequence.id)
        try:
            await client.start_workflow(
                "sequence",
                RunInput(snapshot=snapshot, key=run_id.split("/", 1)[1], context=context, time_scale=time_scale),
                id=run_id, task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                memo={"sequence": sequence.id, "definition_hash": snapshot.hash},
            )
            routed.started.append(run_id)
        except WorkflowAlreadyStartedError:
            pass
    return routed


async def ingest(db: Database, client: Client, catalog: Catalog, event: EventIn, task_queue: str,
                 time_scale: float = 1.0) -> Routed:
    """Store, then route. The event is durable before any run hears of it."""
    if not await asyncio.to_thread(store, db, event):
        return Routed(duplicate=True)
    return await route(client, catalog, event, task_queue, time_scale)
