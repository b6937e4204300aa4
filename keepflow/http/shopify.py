"""Shopify webhooks into Keepflow events: verify the signature, read the headers, map the body.

Pure functions, no I/O. Bodies are the REST Admin API webhook JSON (see
tests/fixtures/shopify/README.md for the payload reference they follow).

Shopify's fulfillment, fulfillment-event and refund payloads carry an `order_id` but neither the
order nor its customer. Their events therefore reference the order by id alone
(`order: {"id": ...}`, no total or currency) and have no `customer`: Keepflow routes them by
`order.id` and finds the customer through the order it stored at `order.created`. That needs the
EventIn relaxation described in the module's report (customer optional, an order reference);
until then only the order topics and the customer topics validate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from keepflow.runtime.events import EventIn

SUPPORTED_TOPICS = frozenset({
    "orders/create", "orders/fulfilled", "fulfillments/create", "fulfillments/update",
    "fulfillment_events/create", "orders/cancelled", "refunds/create", "customers/update",
    "customers/create",
})

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
EVENT_ID_HEADER = "X-Shopify-Event-Id"
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"
SHOP_DOMAIN_HEADER = "X-Shopify-Shop-Domain"

# A fulfillment Shopify did not complete: nothing left the warehouse.
_FAILED_FULFILLMENT = {"cancelled", "error", "failure"}
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_PHONE_PUNCTUATION = re.compile(r"[\s\-().]")
_FRACTION = re.compile(r"(\.\d{6})\d+")


class UnsupportedTopic(ValueError):
    """A topic Keepflow does not subscribe to."""


class NotRelevant(Exception):
    """A supported topic whose payload maps to no Keepflow event (e.g. a parcel still in transit)."""


@dataclass(frozen=True)
class ShopifyDelivery:
    topic: str                      # X-Shopify-Topic
    webhook_id: str                 # X-Shopify-Webhook-Id: one delivery (stable across its retries)
    event_id: str | None            # X-Shopify-Event-Id: one merchant action, across subscriptions
    triggered_at: datetime | None   # X-Shopify-Triggered-At, timezone-aware
    shop_domain: str | None         # X-Shopify-Shop-Domain


def verify_hmac(raw_body: bytes, header_value: str | None, secrets: list[str]) -> bool:
    """True when X-Shopify-Hmac-Sha256 is base64(HMAC-SHA256(secret, raw body)) for one of `secrets`.

    Pass the current client secret and, during a rotation, the previous one. Empty secrets are
    skipped: an HMAC keyed with "" is one anybody can compute.
    """
    if not header_value:
        return False
    try:
        given = base64.b64decode(header_value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(given) != hashlib.sha256().digest_size:
        return False
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).digest()
        if hmac.compare_digest(expected, given):
            return True
    return False


def delivery_from_headers(headers: Mapping[str, str]) -> ShopifyDelivery:
    """Read the delivery headers (names case-insensitive). ValueError names a missing required one."""
    lowered = {str(name).lower(): value for name, value in headers.items()}

    def header(name: str) -> str | None:
        value = lowered.get(name.lower())
        value = value.strip() if isinstance(value, str) else None
        return value or None

    topic = header(TOPIC_HEADER)
    if topic is None:
        raise ValueError(f"missing header {TOPIC_HEADER}")
    webhook_id = header(WEBHOOK_ID_HEADER)
    if webhook_id is None:
        raise ValueError(f"missing header {WEBHOOK_ID_HEADER}")
    return ShopifyDelivery(
        topic=topic,
        webhook_id=webhook_id,
        event_id=header(EVENT_ID_HEADER),
        triggered_at=_parse_time(header(TRIGGERED_AT_HEADER)),
        shop_domain=header(SHOP_DOMAIN_HEADER),
    )


def to_event(delivery: ShopifyDelivery, payload: dict) -> EventIn:
    """The Keepflow event this delivery stands for.

    Raises UnsupportedTopic for a topic outside SUPPORTED_TOPICS, NotRelevant when the payload
    means nothing to Keepflow, and pydantic's ValidationError when the body is malformed.
    """
    if delivery.topic not in SUPPORTED_TOPICS:
        raise UnsupportedTopic(f"unsupported Shopify topic {delivery.topic!r}")
    if not isinstance(payload, dict):
        raise ValueError(f"{delivery.topic}: expected a JSON object, got {type(payload).__name__}")
    mapper = _MAPPERS[delivery.topic]
    event_type, fields = mapper(payload)
    occurred_at = fields.pop("occurred_at", None) or delivery.triggered_at or datetime.now(timezone.utc)
    return EventIn.model_validate({
        # Shopify's event id is the same for every retry and every subscription of one event. It may
        # also be shared by the other topics one merchant action fires (a checkout sends
        # customers/create and orders/create), so the Keepflow type is part of the id: two topics
        # for the same thing (orders/fulfilled, fulfillments/create) collapse, different things don't.
        "id": f"shopify:{event_type}:{delivery.event_id or delivery.webhook_id}",
        "type": event_type,
        "occurred_at": occurred_at,
        **fields,
    })


# --- topics ---------------------------------------------------------------------------------------

def _order_created(order: dict) -> tuple[str, dict]:
    return "order.created", {
        "occurred_at": _first_time(order, "created_at", "processed_at", "updated_at"),
        "customer": _order_customer(order),
        "order": _order(order),
    }


def _order_cancelled(order: dict) -> tuple[str, dict]:
    return "order.cancelled", {
        "occurred_at": _first_time(order, "cancelled_at", "updated_at"),
        "customer": _order_customer(order),
        "order": _order(order),
        "data": {"cancel_reason": order.get("cancel_reason")},
    }


def _order_fulfilled(order: dict) -> tuple[str, dict]:
    fulfillments = [f for f in order.get("fulfillments") or [] if isinstance(f, dict)]
    fulfillment = fulfillments[-1] if fulfillments else {}
    return "order.shipped", {
        "occurred_at": _first_time(fulfillment, "created_at", "updated_at") or _first_time(order, "updated_at"),
        "customer": _order_customer(order),
        "order": _order(order),
        "data": {"order_id": _id(order.get("id")), "fulfillment_id": _id(fulfillment.get("id")),
                 **_tracking(fulfillment)},
    }


def _fulfillment_created(fulfillment: dict) -> tuple[str, dict]:
    status = fulfillment.get("status")
    if status in _FAILED_FULFILLMENT:
        raise NotRelevant(f"fulfillment {fulfillment.get('id')} has status {status!r}")
    order_id = _required_id(fulfillment, "order_id")
    return "order.shipped", {
        "occurred_at": _first_time(fulfillment, "created_at", "updated_at"),
        "order": {"id": order_id},
        "data": {"order_id": order_id, "fulfillment_id": _id(fulfillment.get("id")), **_tracking(fulfillment)},
    }


def _fulfillment_updated(fulfillment: dict) -> tuple[str, dict]:
    status = fulfillment.get("shipment_status")
    if status != "delivered":
        raise NotRelevant(f"fulfillment {fulfillment.get('id')} has shipment_status {status!r}")
    order_id = _required_id(fulfillment, "order_id")
    return "order.delivered", {
        "occurred_at": _first_time(fulfillment, "updated_at", "created_at"),
        "order": {"id": order_id},
        "data": {"order_id": order_id, "fulfillment_id": _id(fulfillment.get("id")), **_tracking(fulfillment)},
    }


def _fulfillment_event_created(event: dict) -> tuple[str, dict]:
    status = event.get("status")
    if status != "delivered":
        raise NotRelevant(f"fulfillment event {event.get('id')} has status {status!r}")
    order_id = _required_id(event, "order_id")
    return "order.delivered", {
        "occurred_at": _first_time(event, "happened_at", "created_at"),
        "order": {"id": order_id},
        "data": {"order_id": order_id, "fulfillment_id": _id(event.get("fulfillment_id")),
                 "fulfillment_event_id": _id(event.get("id"))},
    }


def _refund_created(refund: dict) -> tuple[str, dict]:
    order_id = _required_id(refund, "order_id")
    amount, currency = _refunded(refund)
    return "order.refunded", {
        "occurred_at": _first_time(refund, "created_at", "processed_at"),
        "order": {"id": order_id},
        "data": {"order_id": order_id, "refund_id": _id(refund.get("id")),
                 "amount": str(amount), "currency": currency},
    }


def _customer_updated(customer: dict) -> tuple[str, dict]:
    address = customer.get("default_address")
    if not isinstance(address, dict):
        address = {}
    return "customer.updated", {
        "occurred_at": _first_time(customer, "updated_at", "created_at"),
        "customer": {
            "id": _customer_id(customer),
            "email": _text(customer.get("email")),
            "phone": _phone(customer.get("phone"), address.get("phone")),
            "first_name": _text(customer.get("first_name")),
            "consents": _consents(customer),
        },
    }


_MAPPERS = {
    "orders/create": _order_created,
    "orders/cancelled": _order_cancelled,
    "orders/fulfilled": _order_fulfilled,
    "fulfillments/create": _fulfillment_created,
    "fulfillments/update": _fulfillment_updated,
    "fulfillment_events/create": _fulfillment_event_created,
    "refunds/create": _refund_created,
    "customers/create": _customer_updated,
    "customers/update": _customer_updated,
}


# --- pieces ---------------------------------------------------------------------------------------

def _order(order: dict) -> dict:
    return {
        "id": _required_id(order, "id"),
        "number": _text(order.get("name")),
        "items": [item for item in map(_item, order.get("line_items") or []) if item is not None],
        "total": order.get("total_price"),
        "currency": order.get("currency"),
        "discount_codes": [d["code"] for d in order.get("discount_codes") or [] if isinstance(d, dict) and d.get("code")],
    }


def _item(line: Any) -> dict | None:
    if not isinstance(line, dict):
        return None
    quantity = line.get("quantity")
    if not isinstance(quantity, int) or quantity < 1:
        return None  # nothing bought on this line
    sku = (_text(line.get("sku")) or _id(line.get("variant_id")) or _id(line.get("product_id"))
           or _id(line.get("id")) or "")
    return {"sku": sku, "title": _text(line.get("title")) or _text(line.get("name")) or "",
            "quantity": quantity, "price": line.get("price")}


def _order_customer(order: dict) -> dict:
    customer = order.get("customer")
    if not isinstance(customer, dict) or customer.get("id") in (None, ""):
        # No customer on the order (e.g. an anonymous POS sale): nobody to write to.
        raise NotRelevant(f"order {order.get('id')} has no customer")
    addresses = [a for a in (order.get("billing_address"), order.get("shipping_address")) if isinstance(a, dict)]
    return {
        "id": _customer_id(customer),
        "email": _text(customer.get("email")) or _text(order.get("email")) or _text(order.get("contact_email")),
        "phone": _phone(customer.get("phone"), order.get("phone"), *(a.get("phone") for a in addresses)),
        "first_name": _text(customer.get("first_name")),
        "locale": _text(order.get("customer_locale")),
        "timezone": None,  # Shopify orders don't say where the customer lives in time
        "consents": _consents(customer),
    }


def _customer_id(customer: dict) -> str:
    return f"shopify:{_required_id(customer, 'id')}"


def _consents(customer: dict) -> dict[str, bool]:
    """Only the channels the payload speaks about: a missing consent object is not a "no"."""
    consents: dict[str, bool] = {}
    email = customer.get("email_marketing_consent")
    if isinstance(email, dict) and email.get("state"):
        consents["email"] = email["state"] == "subscribed"
    elif isinstance(customer.get("accepts_marketing"), bool):  # before API version 2024-04
        consents["email"] = customer["accepts_marketing"]
    sms = customer.get("sms_marketing_consent")
    if isinstance(sms, dict) and sms.get("state"):
        consents["sms"] = sms["state"] == "subscribed"
    return consents


def _tracking(fulfillment: dict) -> dict[str, str | None]:
    numbers = fulfillment.get("tracking_numbers") or []
    urls = fulfillment.get("tracking_urls") or []
    return {
        "carrier": _text(fulfillment.get("tracking_company")),
        "tracking_number": _text(fulfillment.get("tracking_number")) or (_text(numbers[0]) if numbers else None),
        "tracking_url": _text(fulfillment.get("tracking_url")) or (_text(urls[0]) if urls else None),
    }


def _refunded(refund: dict) -> tuple[Decimal, str | None]:
    """Money actually returned: the refund's successful refund transactions."""
    amount, currency = Decimal("0"), None
    for tx in refund.get("transactions") or []:
        if not isinstance(tx, dict) or tx.get("kind") != "refund" or tx.get("status") != "success":
            continue
        try:
            amount += Decimal(str(tx.get("amount")))
        except InvalidOperation:
            continue
        currency = currency or _text(tx.get("currency"))
    if currency is None:
        for line in refund.get("refund_line_items") or []:
            money = ((line or {}).get("subtotal_set") or {}).get("shop_money") or {}
            if money.get("currency_code"):
                currency = money["currency_code"]
                break
    return amount, currency


def _phone(*candidates: Any) -> str | None:
    """The first candidate that is an E.164 number once spaces, dashes, dots and brackets go.

    Order and address phones are free text ("555-555-SHIP", "081 234 5678"); without the country's
    dialling rules a national number can't be made E.164, so such values are passed over.
    """
    for candidate in candidates:
        if isinstance(candidate, str):
            number = _PHONE_PUNCTUATION.sub("", candidate)
            if number.startswith("00"):
                number = "+" + number[2:]
            if _E164.match(number):
                return number
    return None


def _required_id(payload: dict, key: str) -> str:
    value = _id(payload.get(key))
    if value is None:
        raise ValueError(f"payload has no {key!r}")
    return value


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or value == "":
        return None
    return str(value)


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _first_time(payload: dict, *keys: str) -> datetime | None:
    for key in keys:
        value = _parse_time(payload.get(key))
        if value is not None:
            return value
    return None


def _parse_time(value: Any) -> datetime | None:
    """ISO 8601 to an aware datetime; None when absent or unreadable. A naive time is taken as UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION.sub(r"\1", value.strip())  # Shopify may send more than microseconds
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
