# activities/loyalty.py
"""`add_loyalty_points`: an activity that keeps data of its own (docs/activities.md).

It goes in activities/loyalty.py; its migration, versions/loyalty_awards.py here, goes in
keepflow/migrations/versions/.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, Field
from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from keepflow import ActivityContext, activity
from keepflow.store import Base


class LoyaltyAward(Base):
    """Points given to a customer by one step of one run."""

    __tablename__ = "loyalty_awards"

    # The step's ctx.key: a retried step finds its award instead of giving the points again.
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    points: Mapped[int]
    awarded_at: Mapped[datetime]


class AddPointsArgs(BaseModel):
    points: int = Field(gt=0, le=10_000, description="points to add")


class Points(BaseModel):
    balance: int


@activity("add_loyalty_points")
def add_loyalty_points(args: AddPointsArgs, ctx: ActivityContext) -> Points:
    """Give the run's customer loyalty points (once per step, however often it is retried)."""
    customer_id = ctx.run["customer"]["id"]
    with ctx.session() as session:
        if session.get(LoyaltyAward, ctx.key) is None:
            session.add(LoyaltyAward(key=ctx.key, customer_id=customer_id, points=args.points,
                                     awarded_at=datetime.now(timezone.utc)))
            session.flush()
        balance = session.scalar(select(func.sum(LoyaltyAward.points)).where(LoyaltyAward.customer_id == customer_id))
    return Points(balance=balance)
