"""Parts of Temporal payloads kept here once instead of in every history (keepflow/runtime/payload_parts.py).

A part is a definition snapshot or a run's context, stored under the sha256 of its bytes (its first
128 bits): the same bytes always have the same key, so a row is never changed, only added (and
deleted when its customer is forgotten). Importing this module registers the table on `Base.metadata`; the schema
itself is owned by Alembic (revision 0010).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import Connection, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from keepflow.store.db import insert_new
from keepflow.store.models import Base


class PayloadPart(Base):
    __tablename__ = "payload_parts"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    # The customer a context is about, so forgetting them deletes it; None for a definition.
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime]


def put(connection: Connection, parts: Iterable[tuple[str, str, str | None]]) -> None:
    """Add (hash, body, customer id) rows; one already there is left as it is (its bytes are the same)."""
    insert_new(connection, PayloadPart.__table__, [
        {"hash": h, "body": body, "customer_id": customer, "created_at": datetime.now(timezone.utc)}
        for h, body, customer in parts], ["hash"])


def get(connection: Connection, hashes: Iterable[str]) -> dict[str, str]:
    wanted = list(hashes)
    if not wanted:
        return {}
    rows = connection.execute(select(PayloadPart.hash, PayloadPart.body).where(PayloadPart.hash.in_(wanted)))
    return {key: body for key, body in rows}

