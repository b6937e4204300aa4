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
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

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
    rows = [{"hash": h, "body": body, "customer_id": customer, "created_at": datetime.now(timezone.utc)}
            for h, body, customer in parts]
    if not rows:
        return
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(insert(PayloadPart).values(rows).on_conflict_do_nothing(index_elements=["hash"]))


def get(connection: Connection, hashes: Iterable[str]) -> dict[str, str]:
    wanted = list(hashes)
    if not wanted:
        return {}
    rows = connection.execute(select(PayloadPart.hash, PayloadPart.body).where(PayloadPart.hash.in_(wanted)))
    return {key: body for key, body in rows}

