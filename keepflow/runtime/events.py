"""Keepflow's own event format: what stores, apps and providers tell us happened."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


# An amount of money: "1e999999" is a finite Decimal, but stored as a float it becomes infinity and
# breaks every sum over orders after it, so more than 20 digits is refused at the door.
Money = Annotated[Decimal, Field(ge=0, max_digits=20, allow_inf_nan=False)]


class _Edge(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(_Edge):
    id: str = Field(min_length=1, max_length=128)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=32, description="E.164, e.g. +66812345678")
    line_user_id: str | None = Field(None, max_length=64,
                                     description="the customer's LINE user id with the shop's official account (U + 32 hex digits)")
    first_name: str | None = Field(None, max_length=128)
    locale: str | None = Field(None, max_length=35, description="BCP 47, e.g. th-TH, zh-TW, en")
    timezone: str | None = Field(None, max_length=64, description="IANA name, e.g. Asia/Bangkok")
    consents: dict[str, bool] = Field(default_factory=dict, description="per channel: email, sms, line")


class OrderItem(_Edge):
    sku: str
    title: str
    quantity: int = Field(1, ge=1)
    price: Money


class OrderIn(_Edge):
    id: str = Field(min_length=1, max_length=128)
    number: str | None = None
    items: list[OrderItem] = Field(default_factory=list)
    # A shipment or refund may name only the order it belongs to.
    total: Money | None = None
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    # Codes used on the order; a Keepflow coupon among them is marked redeemed.
    discount_codes: list[str] = Field(default_factory=list)


class EventIn(_Edge):
    id: str = Field(min_length=1, max_length=255, description="the sender's id; repeats are ignored")
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    occurred_at: AwareDatetime
    # Some store events (a carrier's delivery scan) name only the order, not the customer.
    customer: CustomerIn | None = None
    order: OrderIn | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_someone(self) -> EventIn:
        if self.customer is None and self.order is None:
            raise ValueError("an event needs a customer, an order, or both")
        return self

    def context(self) -> dict[str, Any]:
        """What a run started by this event sees as `customer`, `order` and `event`."""
        ctx: dict[str, Any] = {
            "event": {"id": self.id, "type": self.type, "occurred_at": self.occurred_at.isoformat(), "data": self.data},
        }
        if self.customer:
            ctx["customer"] = self.customer.model_dump(mode="json")
        if self.order:
            ctx["order"] = self.order.model_dump(mode="json")
        return ctx
