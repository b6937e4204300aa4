"""Every deployed version of `sequences.yaml`, kept for good (see keepflow/runtime/deployments.py).

A version is never changed or deleted: rolling back deploys the old text again as a new version,
so the list reads as what was live, when. Each version also records the definition hash of every
sequence in it (the hash a run carries in its snapshot), which is how the dashboard tells which
version a run started on. Importing this module registers both tables on `Base.metadata`; the
schema itself is owned by Alembic (revision 0009).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from keepflow.store.models import Base


class Definition(Base):
    __tablename__ = "definitions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # sha256 of the file's text: the same text deployed twice has the same hash.
    hash: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(Text)
    # A unified diff against the version before (empty for the first).
    diff: Mapped[str] = mapped_column(Text)
    deployed_at: Mapped[datetime]
    # Who made it live: `keepflow deploy`, a process that started on a file nobody had deployed,
    # or `keepflow dev` seeing the file saved.
    origin: Mapped[str] = mapped_column(String(64))


class DefinitionSequence(Base):
    __tablename__ = "definition_sequences"
    __table_args__ = (Index("ix_definition_sequences_hash", "sequence_id", "snapshot_hash"),)

    version: Mapped[int] = mapped_column(ForeignKey("definitions.version"), primary_key=True)
    sequence_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    snapshot_hash: Mapped[str] = mapped_column(String(64))


def newest(session: Session) -> Definition | None:
    """The live version: the newest deployed."""
    return session.scalars(select(Definition).order_by(Definition.version.desc()).limit(1)).first()
