"""Who must not be sent what. One place decides, for every channel and every source of opt-outs.

Sources write here (the unsubscribe link, SendGrid's bounce and spam events, Twilio's STOP and
error 21610); `send_message` reads here before every send. Addresses are normalised first, so
"Nok@Example.com" and "nok@example.com" are one address. An address whose customer was forgotten
is kept only as its hash (`hashed_address`), and every lookup here matches both forms, so a
forgotten address stays suppressed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import Connection, bindparam, or_, select
from sqlalchemy.orm import Session

from keepflow import metrics
from keepflow.sending.channels import normalize_address
from keepflow.store import Suppression
from keepflow.store.suppressions import hashed_address

ALL = "all"
MARKETING = "marketing"


def group_scope(group: str) -> str:
    return f"group:{group}"


def forms(channel: str, address: str) -> list[str]:
    """Both ways `address` may be stored: as itself, and hashed once its customer was forgotten."""
    address = normalize_address(channel, address)
    return [address, hashed_address(channel, address)]


def suppress(session: Session, *, channel: str, address: str, scope: str, reason: str, source: str,
             detail: str | None = None, customer_id: str | None = None, at: datetime | None = None) -> Suppression:
    """Add (or re-arm) a suppression. Idempotent: a repeated opt-out changes nothing but the detail."""
    address = normalize_address(channel, address)
    row = session.scalar(select(Suppression).where(
        Suppression.channel == channel, Suppression.address.in_(forms(channel, address)), Suppression.scope == scope))
    now = at or datetime.now(timezone.utc)
    if row is None:
        row = Suppression(channel=channel, address=address, scope=scope, reason=reason, source=source,
                          detail=detail, customer_id=customer_id, created_at=now, lifted_at=None)
        session.add(row)
        session.flush()
        metrics.suppressed(channel, source)
    elif row.lifted_at is not None or row.reason != reason:
        row.reason, row.source, row.detail, row.created_at, row.lifted_at = reason, source, detail, now, None
        row.customer_id = row.customer_id or customer_id
        metrics.suppressed(channel, source)
    return row


def lift(session: Session, *, channel: str, address: str, scopes: Iterable[str], at: datetime | None = None) -> int:
    """Lift the named scopes (a resubscribe, an SMS START). Returns how many were active."""
    rows = session.scalars(select(Suppression).where(
        Suppression.channel == channel, Suppression.address.in_(forms(channel, address)),
        Suppression.scope.in_(list(scopes)), Suppression.lifted_at.is_(None))).all()
    for row in rows:
        row.lifted_at = at or datetime.now(timezone.utc)
    return len(rows)


def active(session: Session, channel: str, address: str) -> list[Suppression]:
    return list(session.scalars(select(Suppression).where(
        Suppression.channel == channel, Suppression.address.in_(forms(channel, address)),
        Suppression.lifted_at.is_(None))))


def is_active(session: Session, channel: str, address: str, scope: str) -> bool:
    return session.scalar(select(Suppression.id).where(
        Suppression.channel == channel, Suppression.address.in_(forms(channel, address)),
        Suppression.scope == scope, Suppression.lifted_at.is_(None)).limit(1)) is not None


def blocking_reason(connection: Connection, *, channel: str, address: str, category: str,
                    group: str) -> tuple[str, str] | None:
    """(reason, source) of the suppression that forbids this send, if any: `all` stops everything;
    `marketing` and the sequence's group stop marketing only."""
    plain, hashed = forms(channel, address)
    params = {"channel": channel, "address": plain, "hashed": hashed}
    if category == "transactional":
        row = connection.execute(_BLOCKING_TRANSACTIONAL, params).first()
    else:
        row = connection.execute(_BLOCKING_MARKETING, {**params, "group": group_scope(group)}).first()
    return None if row is None else (row.reason, row.source)


# Built once, with a fixed number of parameters (an `IN` of a list is rewritten for each
# execution): send_message asks before every send.
_BLOCKING = select(Suppression.reason, Suppression.source).where(
    Suppression.channel == bindparam("channel"),
    Suppression.address.in_([bindparam("address"), bindparam("hashed")]), Suppression.lifted_at.is_(None),
).order_by(or_(Suppression.scope == ALL).desc(), Suppression.id)
_BLOCKING_TRANSACTIONAL = _BLOCKING.where(Suppression.scope == ALL)
_BLOCKING_MARKETING = _BLOCKING.where(Suppression.scope.in_([ALL, MARKETING, bindparam("group")]))
