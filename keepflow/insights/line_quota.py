"""LINE's monthly message quota (`rules.line.monthly_quota`) against the store: the customers a
LINE message can reach, for `keepflow lint`'s worst case, and the messages sent this calendar month,
for `keepflow report`.

LINE counts each push its API accepted; a row with status `sent` is one (a retry LINE answered with
409 is the same push, and the same row). The month is the shop's (`rules.timezone`, else UTC).
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from keepflow.store import Customer, Database, Message


def line_customers(db: Database) -> int:
    """Customers with a LINE user id that is not flagged as invalid: who a LINE message can reach."""
    with db.session() as session:
        query = select(func.count()).select_from(Customer).where(
            Customer.line_user_id.is_not(None), Customer.line_user_id_problem.is_(None))
        return int(session.scalar(query) or 0)


def month_bounds(now: datetime, zone: str) -> tuple[datetime, datetime]:
    """The first moment of `now`'s calendar month in `zone`, and of the next one (aware, in `zone`)."""
    local = now.astimezone(ZoneInfo(zone))
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, following


def line_sent_in_month(db: Database, now: datetime, zone: str = "UTC") -> tuple[str, int]:
    """("2026-12", LINE messages sent in it) for the calendar month holding `now` in `zone`."""
    start, following = month_bounds(now, zone)
    # The store keeps times in UTC.
    since, until = start.astimezone(timezone.utc), following.astimezone(timezone.utc)
    with db.session() as session:
        query = select(func.count()).select_from(Message).where(
            Message.channel == "line", Message.status == "sent", Message.sent_at >= since, Message.sent_at < until)
        return f"{start:%Y-%m}", int(session.scalar(query) or 0)
