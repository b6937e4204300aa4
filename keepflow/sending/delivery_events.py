"""What providers tell us about a message after it left: delivered, opened, bounced, ...

Every notification becomes one `events` row (`message.<kind>`, `data.message_id`), which is what
`keepflow report` counts, and moves the message's `delivery_status` forward. A provider's retry of
the same notification is recognised by its id in `deliveries` and changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keepflow.store import Delivery, Event, Message

# Later states win; engagement (open, click) never hides a bounce or a delivery.
_RANK = {"processed": 1, "queued": 1, "sent": 2, "deferred": 2, "delivered": 3,
         "undelivered": 4, "failed": 4, "dropped": 4, "bounced": 4, "spam_reported": 5, "unsubscribed": 5}


def seen_before(session: Session, source: str, notification_id: str) -> bool:
    """True if this notification was recorded already; else remember it (in the caller's transaction)."""
    if session.get(Delivery, (source, notification_id)) is not None:
        return True
    session.add(Delivery(source=source, id=notification_id, event_id=f"{source}:{notification_id}",
                         received_at=datetime.now(timezone.utc)))
    session.flush()
    return False


def find_message(session: Session, *, key: str | None = None, provider_message_id: str | None = None) -> Message | None:
    if key:
        found = session.scalar(select(Message).where(Message.key == key))
        if found is not None:
            return found
    if provider_message_id:
        return session.scalar(select(Message).where(Message.provider_message_id == provider_message_id))
    return None


def record(session: Session, *, source: str, notification_id: str, message: Message | None, kind: str,
           occurred_at: datetime, detail: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Store `message.<kind>` for the message and advance its delivery status. `kind` is one of
    processed, delivered, deferred, bounced, dropped, opened, clicked, spam_reported, unsubscribed,
    sent, queued, undelivered, failed."""
    payload = {"data": {"message_id": message.id if message else None, "source": source, **(data or {})}}
    session.add(Event(
        id=f"{source}:{notification_id}", type=f"message.{kind}",
        customer_id=message.customer_id if message else None, order_id=None,
        occurred_at=occurred_at.astimezone(timezone.utc), payload=payload,
        # Feedback is not routed to runs: it is marked routed (to nothing) at once.
        routed_at=datetime.now(timezone.utc), runs=0,
    ))
    if message is not None and kind in _RANK and _RANK[kind] >= _RANK.get(message.delivery_status or "", 0):
        message.delivery_status = kind
        message.delivery_detail = detail
