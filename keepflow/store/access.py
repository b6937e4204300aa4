"""Who may open the dashboard, and what they saw there.

`users` holds the local accounts (`keepflow users add`), each with an Argon2id hash (argon2-cffi,
its default parameters: RFC 9106's second recommendation) and a role; people who sign in with
OpenID Connect have no row here, their role comes from the settings when they sign in.
`audit` gets a row for every page that showed one customer's data unmasked (`keepflow audit`
lists them). Importing this module registers both tables on `Base.metadata`; Alembic owns the
schema (0008).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from keepflow.store.db import Database, utc
from keepflow.store.models import Base

Role = Literal["marketer", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
# NIST SP 800-63B asks for at least 8; a dashboard that shows every customer's data asks for more.
MIN_PASSWORD = 12

_hasher = PasswordHasher()


@lru_cache(maxsize=1)
def _nobody() -> str:
    """Checked against when the name is unknown, so a wrong name costs the time a wrong password does."""
    return _hasher.hash("no such user")


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """One page view that showed a customer's data unmasked: who, when, which page, about what."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_customer_at", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    # The local user's name, or the email (else `oidc:<sub>`) of someone signed in with OpenID Connect.
    who: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    # customer (a timeline), message (one message with its body), messages (a page of the list)
    view: Mapped[str] = mapped_column(String(32))
    # No foreign keys: the record outlives what it is about.
    customer_id: Mapped[str | None] = mapped_column(String(128))
    message_id: Mapped[int | None]
    # What else identifies the page: the search typed, the list's filter and rows.
    detail: Mapped[str | None] = mapped_column(String(512))


class UserError(ValueError):
    """A user that cannot be added or removed as asked; the message says why."""


def add_user(db: Database, name: str, password: str, role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name.strip() or name != name.strip():
        raise UserError("a name cannot be empty or start or end with spaces")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    with db.session() as session:
        if session.get(User, name) is not None:
            raise UserError(f"there is already a user {name!r} (`keepflow users remove {name}` first)")
        session.add(User(name=name, password_hash=_hasher.hash(password), role=role,
                         created_at=datetime.now(timezone.utc)))


def remove_user(db: Database, name: str) -> None:
    with db.session() as session:
        user = session.get(User, name)
        if user is None:
            raise UserError(f"there is no user {name!r}")
        session.delete(user)


def list_users(db: Database) -> list[User]:
    with db.session() as session:
        return list(session.scalars(select(User).order_by(User.name)))


def signed_in_role(db: Database, name: str, password: str) -> str | None:
    """The user's role if the password is theirs, else None. A hash made with older parameters is
    replaced by one with the current ones while the password is at hand."""
    with db.session() as session:
        user = session.get(User, name)
    # Outside the transaction: a check takes about 0.1 s.
    try:
        _hasher.verify(user.password_hash if user else _nobody(), password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        with db.session() as session:
            session.execute(update(User).where(User.name == name).values(password_hash=_hasher.hash(password)))
    return user.role


def role_of(db: Database, name: str) -> str | None:
    """The current role of a local user, None once the user is removed."""
    with db.session() as session:
        return session.scalar(select(User.role).where(User.name == name))


@dataclass(frozen=True)
class Viewed:
    view: str
    customer_id: str | None = None
    message_id: int | None = None
    detail: str | None = None


def record_view(db: Database, who: str, role: str, viewed: Viewed) -> None:
    with db.session() as session:
        session.add(AuditEntry(at=datetime.now(timezone.utc), who=who, role=role, view=viewed.view,
                               customer_id=viewed.customer_id, message_id=viewed.message_id,
                               detail=(viewed.detail or "")[:512] or None))


def audit_entries(db: Database, since: datetime, *, who: str | None = None, customer_id: str | None = None,
                  limit: int = 100) -> list[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry).where(AuditEntry.at >= since).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if who:
        query = query.where(AuditEntry.who == who)
    if customer_id:
        query = query.where(AuditEntry.customer_id == customer_id)
    with db.session() as session:
        entries = list(session.scalars(query.limit(limit)))
    for entry in entries:
        entry.at = utc(entry.at)
    return entries
