"""Keepflow's own event format: what stores, apps and providers tell us happened."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class _Edge(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(_Edge):
    id: str = Field(min_length=1, max_length=128)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=32, description="E.164, e.g. +66812345678")
    first_name: str | None = Field(None, max_length=128)
    locale: str | None = Field(None, max_length=35, description="BCP 47, e.g. th-TH, zh-TW, en")
    timezone: str | None = Field(None, max_length=64, description="IANA name, e.g. Asia/Bangkok")
    consents: dict[str, bool] = Field(default_factory=dict, description="per channel: email, sms")


class OrderItem(_Edge):
    sku: str
    title: str
    quantity: int = Field(1, ge=1)
    price: Decimal = Field(ge=0)


class OrderIn(_Edge):
    id: str = Field(min_length=1, max_length=128)
    number: str | None = None
    items: list[OrderItem] = Field(default_factory=list)
    total: Decimal = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class EventIn(_Edge):
    id: str = Field(min_length=1, max_length=255, description="the sender's id; repeats are ignored")
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    occurred_at: AwareDatetime
    customer: CustomerIn
    order: OrderIn | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        """What a run started by this event sees as `customer`, `order` and `event`."""
        ctx: dict[str, Any] = {
            "customer": self.customer.model_dump(mode="json"),
            "event": {"id": self.id, "type": self.type, "occurred_at": self.occurred_at.isoformat(), "data": self.data},
        }
        if self.order:
            ctx["order"] = self.order.model_dump(mode="json")
        return ctx


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything Keepflow stores is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
