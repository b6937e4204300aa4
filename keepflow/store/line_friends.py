"""LINE friends: who has the shop's official account as a friend, as LINE's webhook told us.

Importing this module registers the table on `Base.metadata`; Alembic owns the schema (0013).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from keepflow.store.models import Base


class LineFriend(Base):
    """One LINE user id: when it last followed and last unfollowed (blocked) the account, each at
    the time LINE says it happened. A friend now is one whose follow is the later of the two.

    Only the newer event moves a row, so a follow LINE delivers late never undoes the unfollow
    that came after it (keepflow/sending/line_friends.py)."""

    __tablename__ = "line_friends"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    followed_at: Mapped[datetime | None]
    unfollowed_at: Mapped[datetime | None]
