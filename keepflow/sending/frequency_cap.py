"""The frequency cap: at most N marketing messages per customer and channel per rolling window,
across all sequences.

Taking a slot is one transaction that first takes a per-customer lock and then counts, so two
runs sending to one customer at the same moment cannot both see a free slot. On PostgreSQL the
lock is a transaction-scoped advisory lock on the customer; on SQLite the transaction writes
before it reads, which takes the database's single write lock first.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text, update

from keepflow.language.dsl import Cap
from keepflow.language.durations import format_duration
from keepflow.store import Database, Message, utc

_messages = Message.__table__


def take_slot(db: Database, *, message_id: int, customer_id: str, channel: str, cap: Cap,
              now: datetime) -> datetime | None:
    """Count this message under the cap. None if it fits; else when the next slot frees up."""
    with db.transaction() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                               {"k": f"cap:{customer_id}:{channel}"})
        connection.execute(update(_messages).where(_messages.c.id == message_id).values(counted_at=now))
        others = connection.scalars(
            select(_messages.c.counted_at).where(
                _messages.c.customer_id == customer_id, _messages.c.channel == channel, _messages.c.id != message_id,
                # No upper bound: another run's clock may be a few milliseconds ahead of ours, and
                # its slot counts all the same.
                _messages.c.counted_at.is_not(None), _messages.c.counted_at > now - cap.per,
            ).order_by(_messages.c.counted_at)
        ).all()
        if len(others) < cap.max:
            return None
        connection.execute(update(_messages).where(_messages.c.id == message_id).values(counted_at=None))
        # The slot frees when enough of the counted ones have left the window.
        return utc(others[len(others) - cap.max]) + cap.per


def window_text(cap: Cap, channel: str) -> str:
    return f"{cap.max} {channel} per {format_duration(cap.per)}"
