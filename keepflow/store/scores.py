"""RFM scores per customer and the quintile cut points they were scored with (see keepflow/insights/rfm.py).

Importing this module registers both tables on `Base.metadata`; the schema itself is owned by
Alembic (revision 0004).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from keepflow.store.models import Base


class CustomerScore(Base):
    """One row per customer: written by `rfm.refresh_all` (every customer) and `rfm.refresh_customer`."""

    __tablename__ = "customer_scores"

    customer_id: Mapped[str] = mapped_column(String(128), ForeignKey("customers.id"), primary_key=True)
    # Whole UTC days from the last order to the refresh's as_of; NULL without orders.
    recency_days: Mapped[int | None]
    orders_count: Mapped[int]
    monetary: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    # Quintile scores 1-5; NULL without orders (segment "prospect").
    r: Mapped[int | None]
    f: Mapped[int | None]
    m: Mapped[int | None]
    segment: Mapped[str] = mapped_column(String(32), index=True)
    level: Mapped[str] = mapped_column(String(16))
    fit: Mapped[str] = mapped_column(String(8), index=True)
    computed_at: Mapped[datetime]


class ScoreCutoffs(Base):
    """The quintile cut points of the last full refresh: one row, id 1.

    Each list has four entries, the smallest value that scores 2, 3, 4 and 5 (None when no
    customer reached that score): ISO dates of the last order for R, order counts for F,
    decimal strings of the amount spent for M.
    """

    __tablename__ = "score_cutoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    as_of: Mapped[datetime]
    computed_at: Mapped[datetime]
    # How many customers (with at least one order) the cut points were taken over.
    scored: Mapped[int]
    recency: Mapped[list[Any]]
    frequency: Mapped[list[Any]]
    monetary: Mapped[list[Any]]
