"""Erasing a customer from the store (`keepflow customers forget`), keeping what must stay.

What goes: the profile (email, phone, LINE user id, name, locale, time zone, consents, attributes,
scores), whether their LINE id follows the shop's account (`line_friends`), every event about
them, their runs' contexts (which Temporal's histories reference by hash), the recipient,
subject, body and provider text of every message to them, and the line items of their orders.
What stays, without anything that names or reaches the person:
- the customer id, as a row with nothing else, because orders, messages and runs point at it;
- the message rows (sequence, step, status, times), so reports keep counting what was sent;
- order totals and currency, so revenue reports stay right (they are the shop's books);
- delivery feedback events (`message.*`), reduced to which message and what happened;
- suppressions, with the address replaced by its hash: the next send to that address is still
  refused, which is the one thing the person asked for that must outlive their data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, delete, or_, select, update
from sqlalchemy.orm import Session

from keepflow.language.channels import CHANNEL_FACTS
from keepflow.store.line_friends import LineFriend
from keepflow.store.models import Customer, Event, Message, Order
from keepflow.store.payload_parts import PayloadPart
from keepflow.store.scores import CustomerScore
from keepflow.store.suppressions import FORGOTTEN_PREFIX, Suppression, hashed_address


@dataclass
class Erased:
    customers: int = 0
    events_deleted: int = 0
    events_scrubbed: int = 0
    messages: int = 0
    orders: int = 0
    suppressions_hashed: int = 0
    line_friends: int = 0
    contexts: int = 0
    addresses: list[tuple[str, str]] = field(default_factory=list)


def erase(session: Session, customer_ids: list[str], addresses: list[tuple[str, str]]) -> Erased:
    """Erase these customers, and every trace of these (channel, normalised address) pairs."""
    done = Erased()
    found = list(session.scalars(select(Customer).where(Customer.id.in_(customer_ids)))) if customer_ids else []
    contacts = set(addresses)
    for customer in found:
        for channel in CHANNEL_FACTS.values():
            address = getattr(customer, channel.address_field)
            contacts |= {(channel.name, address)} if address else set()
    done.addresses = sorted(contacts)
    plain = [address for _, address in contacts]

    for customer in found:
        customer.first_name = customer.locale = customer.timezone = None
        for channel in CHANNEL_FACTS.values():
            setattr(customer, channel.address_field, None)
            setattr(customer, f"{channel.address_field}_problem", None)
        customer.consents, customer.attributes, customer.last_seen_at = {}, {}, None
    done.customers = len(found)
    if customer_ids:
        session.execute(delete(CustomerScore).where(CustomerScore.customer_id.in_(customer_ids)))
        # Their runs' contexts (keepflow/runtime/payload_parts.py): the runs were ended first, and
        # their histories in Temporal are left holding hashes of nothing.
        done.contexts = _count(session.execute(delete(PayloadPart).where(PayloadPart.customer_id.in_(customer_ids))))

    # Events: theirs, and any other that carries one of their addresses (an SMS STOP from their
    # number). Delivery feedback keeps its place in the reports, with nothing but the message id.
    text = cast(Event.payload, String)
    about = or_(Event.customer_id.in_(customer_ids), *(text.contains(a) for a in plain))
    for event in session.scalars(select(Event).where(about, Event.type.like("message.%"))):
        data = (event.payload or {}).get("data") or {}
        event.payload = {"data": {"message_id": data.get("message_id"), "source": data.get("source")}}
        done.events_scrubbed += 1
    done.events_deleted = _count(session.execute(
        delete(Event).where(about, ~Event.type.like("message.%")).execution_options(synchronize_session=False)))

    # An unfollow that blocked them stays in force as a hashed suppression (below). LINE's
    # redeliveries are still known by their webhookEventId (deliveries hold nothing personal), and a
    # follow older than that unfollow, first delivered after this, is older than the suppression
    # and changes nothing (keepflow/sending/line_friends.py).
    line_ids = [address for channel, address in contacts if channel == "line"]
    if line_ids:
        done.line_friends = _count(session.execute(delete(LineFriend).where(LineFriend.user_id.in_(line_ids))))

    to_them = or_(Message.customer_id.in_(customer_ids), Message.recipient.in_(plain))
    done.messages = _count(session.execute(update(Message).where(to_them).values(
        recipient=None, subject=None, body=None, error=None, delivery_detail=None,
    ).execution_options(synchronize_session=False)))
    if customer_ids:
        done.orders = _count(session.execute(update(Order).where(Order.customer_id.in_(customer_ids)).values(items=[])
                                             .execution_options(synchronize_session=False)))

    rows = list(session.scalars(select(Suppression).where(or_(
        Suppression.customer_id.in_(customer_ids), Suppression.address.in_(plain)))))
    for row in rows:
        if not row.address.startswith(FORGOTTEN_PREFIX):
            row.address = hashed_address(row.channel, row.address)
            done.suppressions_hashed += 1
        row.detail = None
    return done


def _count(result: Any) -> int:
    # A DML statement's result is a CursorResult; Session.execute is typed for selects.
    return result.rowcount or 0
