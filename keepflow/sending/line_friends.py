"""Who may get LINE messages, as LINE's own webhook says: a follow makes a friend, an unfollow (the
user blocked or removed the shop's account) ends it.

How consent works on LINE. A LINE user can only be pushed to while they have the shop's official
account as a friend, and adding it is their own act, so a follow counts as consent to LINE
marketing: it sets `consents.line` of every customer with that LINE user id (and of a customer
linked to it later, keepflow/runtime/routing.py). The shop's word still wins: a `consents.line`
of false that the shop sent is never overridden, and Keepflow itself only ever writes true, so a
false is always the shop's. An unfollow revokes through the suppressions, as an SMS STOP does: the
address is suppressed for everything (LINE delivers nothing to a user who blocked the account), and a
later follow lifts it, as START does. `consents.line` is left as it was, so the refollow restores
exactly what the shop and the first follow had said.

LINE may deliver events late and out of order. Each carries the time it happened; a row moves only
for an event newer than the last one applied to it, so an old follow never undoes a newer
unfollow. At the same millisecond the unfollow wins: refusing a message costs less than sending
one to someone who blocked the account.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from keepflow.sending import suppressions
from keepflow.store import Customer, utc
from keepflow.store.line_friends import LineFriend

CHANNEL = "line"
# Both the reason and the source of the suppression an unfollow makes: it has no other source.
UNFOLLOW = "line_unfollow"

Change = Literal["follow", "unfollow"]


def apply(session: Session, change: Change, user_id: str, at: datetime, detail: str | None = None) -> bool:
    """Record a follow or unfollow that happened at `at`. False if a newer one is recorded already."""
    row = session.get(LineFriend, user_id)
    if change == "follow" and _blocked_since(session, user_id, at):
        return False
    if row is None:
        row = LineFriend(user_id=user_id)
        session.add(row)
    elif not _newer(row, change, at):
        return False
    if change == "follow":
        row.followed_at = at
        # An unfollow's suppression, or a provider's refusal of an id that now follows again.
        suppressions.lift(session, channel=CHANNEL, address=user_id, scopes=[suppressions.ALL, suppressions.MARKETING],
                          at=at)
        for customer in _customers(session, user_id):
            grant(customer)
    else:
        row.unfollowed_at = at
        customers = _customers(session, user_id)
        suppressions.suppress(session, channel=CHANNEL, address=user_id, scope=suppressions.ALL, reason=UNFOLLOW,
                              source=UNFOLLOW, detail=detail, customer_id=customers[0].id if customers else None, at=at)
    session.flush()
    return True


def grant(customer: Customer) -> None:
    """LINE consent from a follow, where the shop has said nothing (its no, or its yes, stands)."""
    consents = customer.consents or {}
    if not isinstance(consents.get("line"), bool):
        customer.consents = {**consents, "line": True}  # a new dict: the JSON column sees the change


def is_friend(session: Session, user_id: str) -> bool:
    row = session.get(LineFriend, user_id)
    if row is None or row.followed_at is None:
        return False
    return row.unfollowed_at is None or utc(row.followed_at) > utc(row.unfollowed_at)


def _newer(row: LineFriend, change: Change, at: datetime) -> bool:
    times = [utc(t) for t in (row.followed_at, row.unfollowed_at) if t is not None]
    latest = max(times, default=None)
    if latest is None or at > latest:
        return True
    return at == latest and change == "unfollow" and row.followed_at is not None and utc(row.followed_at) == at


def _blocked_since(session: Session, user_id: str, at: datetime) -> bool:
    """An unfollow at or after `at` still in force, found by its suppression: that outlives the
    friend's row, which erasure deletes while it keeps the suppression, hashed. So a follow older
    than the unfollow, delivered only after the customer was forgotten, still changes nothing."""
    return any(row.reason == UNFOLLOW and utc(row.created_at) >= at
               for row in suppressions.active(session, CHANNEL, user_id))


def _customers(session: Session, user_id: str) -> list[Customer]:
    return list(session.scalars(select(Customer).where(Customer.line_user_id == user_id).order_by(Customer.id)))
