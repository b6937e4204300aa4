"""Tables. The schema itself is owned by Alembic (`keepflow/migrations`); these map it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, Numeric, String, Table, Text, func
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class Base(DeclarativeBase):
    # Each model maps one table (none maps a join or a select), so `Model.__table__` is a Table
    # that insert() and update() accept; DeclarativeBase can only promise a FromClause.
    __table__: ClassVar[Table]

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Stored normalised (keepflow/sending/contacts.py), so a lookup compares with `=` and uses the index.
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    first_name: Mapped[str | None] = mapped_column(String(128))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Why a stored contact point cannot be used (failed validation); None when it is fine.
    # The customer's LINE user id with the shop's official account (U + 32 hex digits).
    line_user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    email_problem: Mapped[str | None] = mapped_column(String(255))
    phone_problem: Mapped[str | None] = mapped_column(String(255))
    line_user_id_problem: Mapped[str | None] = mapped_column(String(255))
    consents: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Event(Base):
    __tablename__ = "events"

    # The sender's event id: storing it once is what makes a repeated webhook harmless.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), index=True)
    order_id: Mapped[str | None] = mapped_column(String(128), index=True)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    payload: Mapped[dict[str, Any]]
    # Set once the runs it concerns have been started or signalled; NULL means "route me"
    # (the reconciler, or the sender's retry, does it). `runs` counts them: 0 = reached no sequence.
    routed_at: Mapped[datetime | None] = mapped_column(index=True)
    runs: Mapped[int | None]
    # The W3C traceparent of the request that stored it, when tracing is on: routed later by the
    # reconciler, the event's runs and sends still join that request's trace.
    trace_parent: Mapped[str | None] = mapped_column(String(64))


class EventMessageId(ColumnElement[str]):
    """`payload.data.message_id` as text: the message a provider notification is about.

    Spelt out per database with a literal JSON path (a bound path could not use the index), and
    the same text in the index and in the queries, which is what lets them use it."""

    inherit_cache = True
    _traverse_internals = [("payload", InternalTraversal.dp_clauseelement)]
    type = String()

    def __init__(self, payload) -> None:
        self.payload = payload


@compiles(EventMessageId, "sqlite")
def _event_message_id_sqlite(element, compiler, **kw) -> str:
    return f"CAST(json_extract({compiler.process(element.payload, **kw)}, '$.data.message_id') AS TEXT)"


@compiles(EventMessageId)
def _event_message_id_postgresql(element, compiler, **kw) -> str:
    return f"({compiler.process(element.payload, **kw)} #>> '{{data,message_id}}')"


# The report counts notifications per message: found from the message, by this index.
Index("ix_events_message_id", EventMessageId(Event.__table__.c.payload), Event.__table__.c.type)


class Delivery(Base):
    """A webhook delivery id we have accepted: a sender's retry of it changes nothing."""

    __tablename__ = "deliveries"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(index=True)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    items: Mapped[list[Any]] = mapped_column(default=list)
    # The orders of a period, the start of the report's attribution.
    created_at: Mapped[datetime] = mapped_column(index=True)


class Message(Base):
    """One row per send step of one run: the idempotency record and the message log at once."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_customer_created", "customer_id", "created_at"),
        Index("ix_messages_customer_counted", "customer_id", "channel", "counted_at"),
        # The funnel of a period, read from the index alone (keepflow/insights/report.py groups by these).
        Index("ix_messages_created_funnel", "created_at", "sequence_id", "step", "channel", "template", "status", "id"),
        # Skipped messages (and their reasons) of a period.
        Index("ix_messages_status_created", "status", "created_at"),
        # A customer's sent messages in a time window: what an order is attributed to.
        Index("ix_messages_customer_sent", "customer_id", "status", "sent_at"),
        # One sequence's messages newest first, a page at a time (the dashboard's message list).
        Index("ix_messages_sequence_id", "sequence_id", "id"),
        # Just the ids: counting off a deep page number reads this instead of whole rows (SQLite
        # keeps every column, bodies included, in the primary key's b-tree).
        Index("ix_messages_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # workflow id + step path: stable across retries, resets and continue-as-new.
    key: Mapped[str] = mapped_column(String(512), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(255), index=True)
    sequence_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str | None] = mapped_column(String(128))
    recipient: Mapped[str | None] = mapped_column(String(320))
    locale: Mapped[str | None] = mapped_column(String(35))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    # pending -> sending -> sent | failed | unknown; or skipped; deferred while it waits for
    # quiet hours or the cap. See activities/builtin/send.py.
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sending_at: Mapped[datetime | None]
    # Until when the attempt that marked the row `sending` (the `attempts`-th) may be calling the
    # provider: no other attempt sends before it, and a text is looked up only some time after it.
    lease_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # When this marketing message took its slot under the frequency cap (None: not counted).
    counted_at: Mapped[datetime | None]
    # Provider feedback: the latest delivery state (delivered, bounced, dropped, undelivered, ...).
    delivery_status: Mapped[str | None] = mapped_column(String(32))
    delivery_detail: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One run of one sequence: written when it starts, and when it reaches its goal."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_sequence_customer_started", "sequence_id", "customer_id", "started_at"),
        # Runs started in a period, per sequence, converted or not: from the index alone.
        Index("ix_runs_started", "started_at", "sequence_id", "converted_at", "id"),
    )

    # The workflow id, `<sequence>/<key>`. A sequence that may run again for the same key after
    # its cool-down (win-back) reuses the id, so the row is replaced by the newer run.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    sequence_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime]
    trigger_event_id: Mapped[str | None] = mapped_column(String(255))
    converted_at: Mapped[datetime | None]
    converted_event_id: Mapped[str | None] = mapped_column(String(255))
    # The hash of the definitions it runs (its snapshot's): which deployed version it started on.
    definition_hash: Mapped[str | None] = mapped_column(String(64))


class Coupon(Base):
    __tablename__ = "coupons"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The step that created it: a retried activity returns the same coupon, never a second one.
    key: Mapped[str] = mapped_column(String(512), unique=True)
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    percent: Mapped[int]
    created_at: Mapped[datetime]
    # Provisional until the first message offering it goes out: then it becomes that moment plus
    # valid_for, so "valid for 7 days" counts from when the customer could first read it.
    expires_at: Mapped[datetime]
    valid_for_seconds: Mapped[int | None]
    activated_at: Mapped[datetime | None]
    redeemed_at: Mapped[datetime | None]
    redeemed_order_id: Mapped[str | None] = mapped_column(String(128))
