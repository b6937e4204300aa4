"""Suppressions: who must not get what, per channel and address, with the reason and its source.

Importing this module registers the table on `Base.metadata`; Alembic owns the schema (0005).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keepflow.store.models import Base

FORGOTTEN_PREFIX = "sha256:"


def hashed_address(channel: str, address: str) -> str:
    """How a forgotten customer's address is kept (`keepflow customers forget`): enough to match
    the next send to it and refuse it, not enough to write to the person. Unkeyed, so it survives
    every rotation of every secret; the address must be normalised first, as every writer does."""
    return FORGOTTEN_PREFIX + hashlib.sha256(f"{channel}:{address}".encode()).hexdigest()


class Suppression(Base):
    """One (channel, address, scope). `lifted_at` set means it no longer applies (a resubscribe,
    an SMS START); the row stays as the audit trail and is re-armed by the next opt-out.

    scope: "all"        nothing may go there, transactional included (hard bounce, invalid number)
           "marketing"  no marketing (unsubscribe from everything, spam report, SMS STOP)
           "group:<g>"  no marketing from sequences in group <g> (a sequence's `group:`, else its id)
    """

    __tablename__ = "suppressions"
    __table_args__ = (Index("ux_suppressions_address_scope", "channel", "address", "scope", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    # Normalised: lower-cased email, E.164 phone number; or, once its customer was forgotten,
    # `hashed_address(channel, address)`.
    address: Mapped[str] = mapped_column(String(320))
    scope: Mapped[str] = mapped_column(String(140))
    # hard_bounce, spam_report, unsubscribe, sms_stop, provider_error, invalid
    reason: Mapped[str] = mapped_column(String(32))
    # unsubscribe_link, sendgrid, twilio, operator, ...
    source: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime]
    lifted_at: Mapped[datetime | None]
