"""`create_coupon`: a single-use discount code, stored so an order can redeem it."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from pydantic import BaseModel, Field
from sqlalchemy import select

from keepflow import ActivityContext, activity
from keepflow.language.durations import Duration
from keepflow.store import Coupon

# No 0/O or 1/I: codes get read aloud and typed from phones.
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class CreateCouponArgs(BaseModel):
    percent: int = Field(ge=1, le=100, description="discount in percent")
    valid_for: Duration = Field(description="how long the code can be redeemed, e.g. 7d")
    prefix: str = Field("KEEP", pattern=r"^[A-Z0-9]{1,12}$")


class CouponOut(BaseModel):
    code: str
    percent: int
    expires_at: datetime


@activity("create_coupon")
def create_coupon(args: CreateCouponArgs, ctx: ActivityContext) -> CouponOut:
    """Create a unique, single-use coupon for the run's customer."""
    with ctx.session() as session:
        # A retried activity finds the coupon its first attempt stored: one step, one coupon.
        existing = session.scalar(select(Coupon).where(Coupon.key == ctx.key))
        if existing is None:
            now = datetime.now(timezone.utc)
            existing = Coupon(
                code=f"{args.prefix}-{''.join(secrets.choice(_ALPHABET) for _ in range(8))}",
                key=ctx.key,
                customer_id=ctx.run.get("customer", {}).get("id"),
                percent=args.percent,
                created_at=now,
                # Provisional: the first message offering it restarts the clock (activities/builtin/send.py).
                expires_at=now + args.valid_for,
                valid_for_seconds=int(args.valid_for.total_seconds()),
            )
            session.add(existing)
        return CouponOut(code=existing.code, percent=existing.percent,
                         expires_at=existing.expires_at.replace(tzinfo=timezone.utc))
