"""`load_customer`: the customer's current profile and purchase history, for later conditions."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import func, select

from keepflow import ActivityContext, activity
from keepflow.store import Customer, Order


class LoadCustomerArgs(BaseModel):
    pass


class CustomerProfile(BaseModel):
    id: str
    orders_count: int
    total_spent: Decimal
    purchased_skus: list[str]


@activity("load_customer")
def load_customer(args: LoadCustomerArgs, ctx: ActivityContext) -> CustomerProfile:
    """Read the run's customer fresh from the database (a run's own snapshot may be weeks old)."""
    customer_id = ctx.run["customer"]["id"]
    with ctx.session() as session:
        count, spent = session.execute(
            select(func.count(Order.id), func.coalesce(func.sum(Order.total), 0)).where(Order.customer_id == customer_id)
        ).one()
        skus: set[str] = set()
        for items in session.scalars(select(Order.items).where(Order.customer_id == customer_id)):
            skus.update(item["sku"] for item in items)
        known = session.get(Customer, customer_id) is not None
    return CustomerProfile(id=customer_id, orders_count=count if known else 0,
                           total_spent=Decimal(spent), purchased_skus=sorted(skus))
