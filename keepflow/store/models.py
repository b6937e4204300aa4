"""Tables. The schema itself is owned by Alembic (`keepflow/migrations`); these map it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, Numeric, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    first_name: Mapped[str | None] = mapped_column(String(128))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Why a stored contact point cannot be used (failed validation); None when it is fine.
    email_problem: Mapped[str | None] = mapped_column(String(255))
    phone_problem: Mapped[str | None] = mapped_column(String(255))
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
    created_at: Mapped[datetime]


class Message(Base):
    """One row per send step of one run: the idempotency record and the message log at once."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_customer_created", "customer_id", "created_at"),
        Index("ix_messages_customer_counted", "customer_id", "channel", "counted_at"),
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
    # quiet hours or the cap. See activities/send.py.
    status: Mapped[str] = mapped_column(String(16), index=True)
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # When this marketing message took its slot under the frequency cap (None: not counted).
    counted_at: Mapped[datetime | None]
    # Provider feedback: the latest delivery state (delivered, bounced, dropped, undelivered, ...).
    delivery_status: Mapped[str | None] = mapped_column(String(32))
    delivery_detail: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One run of one sequence: written when it starts, and when it reaches its goal."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_sequence_customer_started", "sequence_id", "customer_id", "started_at"),)

    # The workflow id, `<sequence>/<key>`. A sequence that may run again for the same key after
    # its cool-down (win-back) reuses the id, so the row is replaced by the newer run.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    sequence_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime]
    trigger_event_id: Mapped[str | None] = mapped_column(String(255))
    converted_at: Mapped[datetime | None]
    converted_event_id: Mapped[str | None] = mapped_column(String(255))


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
