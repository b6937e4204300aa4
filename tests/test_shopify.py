"""Shopify webhooks into Keepflow events: signatures, headers, and each topic's documented body."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keepflow.http.shopify import (
    SUPPORTED_TOPICS,
    NotRelevant,
    ShopifyDelivery,
    UnsupportedTopic,
    delivery_from_headers,
    to_event,
    verify_hmac,
)
from keepflow.runtime.events import EventIn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "shopify"
SECRET = "shpss_current_4f6c2d1e9a"
PREVIOUS = "shpss_previous_0b7e5a3c11"

ORDER_ID = "820982911946154508"
CUSTOMER_ID = "shopify:115310627314723954"
BANGKOK = timezone(timedelta(hours=7))

FILES = {
    "orders/create": "orders_create.json",
    "orders/fulfilled": "orders_fulfilled.json",
    "orders/cancelled": "orders_cancelled.json",
    "fulfillments/create": "fulfillments_create.json",
    "fulfillments/update": "fulfillments_update.json",
    "fulfillment_events/create": "fulfillment_events_create.json",
    "refunds/create": "refunds_create.json",
    "customers/create": "customers_create.json",
    "customers/update": "customers_update.json",
}


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def body(topic: str) -> dict[str, Any]:
    return json.loads(raw(FILES[topic]))


def sign(payload: bytes, secret: str) -> str:
    """Shopify's documented algorithm, computed here independently of the module."""
    return base64.b64encode(hmac.new(secret.encode(), payload, hashlib.sha256).digest()).decode()


def delivery(topic: str, webhook_id: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
             event_id: str | None = "9f66d8cb-82e2-4fd7-b70d-369ec19ddc2e",
             triggered_at: datetime | None = datetime(2026, 3, 2, 3, 15, 12, tzinfo=timezone.utc)) -> ShopifyDelivery:
    return ShopifyDelivery(topic=topic, webhook_id=webhook_id, event_id=event_id,
                           triggered_at=triggered_at, shop_domain="lumen-camera.myshopify.com")


def event_for(topic: str, payload: dict[str, Any] | None = None, **kw: Any) -> EventIn:
    return to_event(delivery(topic, **kw), body(topic) if payload is None else payload)


# --- verify_hmac ----------------------------------------------------------------------------------

class TestVerifyHmac:
    payload = raw("orders_create.json")

    def test_valid_signature(self):
        assert verify_hmac(self.payload, sign(self.payload, SECRET), [SECRET])

    def test_tampered_body(self):
        tampered = self.payload.replace(b'"total_price": "169.96"', b'"total_price": "0.01"')
        assert tampered != self.payload
        assert not verify_hmac(tampered, sign(self.payload, SECRET), [SECRET])

    def test_reserialised_body_fails(self):
        # Signed over the raw bytes: re-encoding the parsed JSON is not the same message.
        reencoded = json.dumps(json.loads(self.payload)).encode()
        assert not verify_hmac(reencoded, sign(self.payload, SECRET), [SECRET])

    def test_wrong_secret(self):
        assert not verify_hmac(self.payload, sign(self.payload, "shpss_someone_else"), [SECRET])

    def test_previous_secret_during_rotation(self):
        header = sign(self.payload, PREVIOUS)
        assert verify_hmac(self.payload, header, [SECRET, PREVIOUS])
        assert not verify_hmac(self.payload, header, [SECRET])

    @pytest.mark.parametrize("header", [None, "", "   ", "not base64!", "%%%%", "c2hvcnQ=", "é"])
    def test_missing_or_garbage_header(self, header):
        assert not verify_hmac(self.payload, header, [SECRET])

    def test_no_secrets_or_empty_secret(self):
        assert not verify_hmac(self.payload, sign(self.payload, SECRET), [])
        # An HMAC keyed with "" is one anybody can make; it must never pass.
        assert not verify_hmac(self.payload, sign(self.payload, ""), [""])

    def test_header_whitespace_tolerated(self):
        assert verify_hmac(self.payload, f" {sign(self.payload, SECRET)}\n", [SECRET])


# --- delivery_from_headers ------------------------------------------------------------------------

HEADERS = {
    "X-Shopify-Topic": "orders/create",
    "X-Shopify-Hmac-Sha256": "xT6yH5jZfQm6Q3lC8nA0r7sV2bP9dK1eL4wG0hM5nYI=",
    "X-Shopify-Shop-Domain": "lumen-camera.myshopify.com",
    "X-Shopify-API-Version": "2026-07",
    "X-Shopify-Webhook-Id": "545ebdd4-b7be-4d3d-b14e-54aa78e0e0f9",
    "X-Shopify-Triggered-At": "2025-07-10T16:15:47.000000Z",
    "X-Shopify-Event-Id": "59d6d79c-595f-4e7e-bc6f-72f5c3d0c66f",
}


class TestDeliveryFromHeaders:
    def test_reads_documented_headers(self):
        d = delivery_from_headers(HEADERS)
        assert d == ShopifyDelivery(
            topic="orders/create",
            webhook_id="545ebdd4-b7be-4d3d-b14e-54aa78e0e0f9",
            event_id="59d6d79c-595f-4e7e-bc6f-72f5c3d0c66f",
            triggered_at=datetime(2025, 7, 10, 16, 15, 47, tzinfo=timezone.utc),
            shop_domain="lumen-camera.myshopify.com",
        )
        assert d.triggered_at.tzinfo is not None

    @pytest.mark.parametrize("case", [str.lower, str.upper, lambda name: name.replace("Sha256", "SHA256")])
    def test_case_insensitive(self, case):
        assert delivery_from_headers({case(k): v for k, v in HEADERS.items()}) == delivery_from_headers(HEADERS)

    def test_missing_topic(self):
        headers = {k: v for k, v in HEADERS.items() if k != "X-Shopify-Topic"}
        with pytest.raises(ValueError, match="X-Shopify-Topic"):
            delivery_from_headers(headers)

    def test_blank_topic_is_missing(self):
        with pytest.raises(ValueError, match="X-Shopify-Topic"):
            delivery_from_headers({**HEADERS, "X-Shopify-Topic": " "})

    def test_missing_webhook_id(self):
        headers = {k: v for k, v in HEADERS.items() if k != "X-Shopify-Webhook-Id"}
        with pytest.raises(ValueError, match="X-Shopify-Webhook-Id"):
            delivery_from_headers(headers)

    def test_optional_headers(self):
        d = delivery_from_headers({"x-shopify-topic": "orders/create", "x-shopify-webhook-id": "w1"})
        assert (d.event_id, d.triggered_at, d.shop_domain) == (None, None, None)

    @pytest.mark.parametrize("value, expected", [
        ("2026-03-02T03:15:12.123456789Z", datetime(2026, 3, 2, 3, 15, 12, 123456, tzinfo=timezone.utc)),
        ("2026-03-02T10:15:12+07:00", datetime(2026, 3, 2, 3, 15, 12, tzinfo=timezone.utc)),
        ("2026-03-02T03:15:12", datetime(2026, 3, 2, 3, 15, 12, tzinfo=timezone.utc)),
        ("yesterday", None),
    ])
    def test_triggered_at(self, value, expected):
        d = delivery_from_headers({**HEADERS, "X-Shopify-Triggered-At": value})
        assert d.triggered_at == expected
        assert d.triggered_at is None or d.triggered_at.tzinfo is not None


# --- to_event: each documented body ---------------------------------------------------------------

def test_every_supported_topic_has_a_fixture():
    assert set(FILES) == set(SUPPORTED_TOPICS)


def test_orders_create():
    event = event_for("orders/create")
    assert event.type == "order.created"
    assert event.occurred_at == datetime(2026, 3, 2, 10, 15, 9, tzinfo=BANGKOK)
    c = event.customer
    assert c is not None
    assert c.id == CUSTOMER_ID
    assert c.email == "john@example.com"   # the customer's own, before the order's jon@example.com
    assert c.phone == "+66812345678"
    assert c.first_name == "John"
    assert c.locale == "th"
    assert c.timezone is None
    assert c.consents == {"email": True, "sms": True}
    o = event.order
    assert o is not None
    assert (o.id, o.number, o.total, o.currency) == (ORDER_ID, "#9999", Decimal("169.96"), "USD")
    assert [(i.sku, i.title, i.quantity, i.price) for i in o.items] == [
        ("SKU2006-001", "Aviator sunglasses", 1, Decimal("89.99")),
        ("LENS-PROTECT-2YR", "Lens Protection Plan (2 Year)", 1, Decimal("19.99")),
        ("890123456789012345", "Premium Leather Case", 2, Decimal("24.99")),  # blank sku, no variant/product
    ]
    assert event.context()["order"]["id"] == ORDER_ID


def test_orders_fulfilled():
    event = event_for("orders/fulfilled")
    assert event.type == "order.shipped"
    assert event.occurred_at == datetime(2026, 3, 3, 14, 2, 41, tzinfo=BANGKOK)
    assert event.customer is not None and event.customer.id == CUSTOMER_ID
    assert event.order is not None and event.order.id == ORDER_ID and event.order.number == "#9999"
    assert event.data == {
        "order_id": ORDER_ID, "fulfillment_id": "123456", "carrier": "UPS", "tracking_number": "1z827wk74630",
        "tracking_url": "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630",
    }


def test_orders_fulfilled_uses_the_last_fulfillment():
    payload = body("orders/fulfilled")
    second = copy.deepcopy(payload["fulfillments"][0])
    second.update(id=123457, tracking_company="Kerry Express", tracking_number="KEX123",
                  tracking_numbers=["KEX123"], tracking_url=None, tracking_urls=["https://th.kerryexpress.com/track/?track=KEX123"],
                  created_at="2026-03-04T09:00:00+07:00")
    payload["fulfillments"].append(second)
    event = event_for("orders/fulfilled", payload)
    assert event.data["fulfillment_id"] == "123457"
    assert (event.data["carrier"], event.data["tracking_number"]) == ("Kerry Express", "KEX123")
    assert event.data["tracking_url"] == "https://th.kerryexpress.com/track/?track=KEX123"  # from tracking_urls
    assert event.occurred_at == datetime(2026, 3, 4, 9, 0, tzinfo=BANGKOK)


def test_orders_cancelled():
    event = event_for("orders/cancelled")
    assert event.type == "order.cancelled"
    assert event.occurred_at == datetime(2026, 3, 2, 18, 40, tzinfo=BANGKOK)
    assert event.customer is not None and event.customer.id == CUSTOMER_ID
    assert event.order is not None and (event.order.id, event.order.total) == (ORDER_ID, Decimal("169.96"))
    assert event.data == {"cancel_reason": "customer"}


def test_fulfillments_create_names_only_the_order():
    event = event_for("fulfillments/create")
    assert event.type == "order.shipped"
    assert event.occurred_at == datetime(2026, 3, 3, 14, 2, 41, tzinfo=BANGKOK)
    # Shopify's fulfillment carries order_id, an email and a destination, but no customer id.
    assert event.customer is None
    assert event.order is not None and event.order.id == ORDER_ID
    assert (event.order.total, event.order.currency, event.order.items) == (None, None, [])
    assert event.data == {
        "order_id": ORDER_ID, "fulfillment_id": "123456", "carrier": "UPS", "tracking_number": "1z827wk74630",
        "tracking_url": "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630",
    }
    assert event.context()["order"]["id"] == ORDER_ID   # what the fulfilment sequence's key reads


@pytest.mark.parametrize("status", ["cancelled", "error", "failure"])
def test_fulfillments_create_that_failed_is_not_relevant(status):
    payload = {**body("fulfillments/create"), "status": status}
    with pytest.raises(NotRelevant):
        event_for("fulfillments/create", payload)


def test_fulfillments_update_delivered():
    event = event_for("fulfillments/update")
    assert event.type == "order.delivered"
    assert event.occurred_at == datetime(2026, 3, 5, 11, 31, 7, tzinfo=BANGKOK)
    assert event.customer is None
    assert event.order is not None and event.order.id == ORDER_ID
    assert event.data["order_id"] == ORDER_ID and event.data["fulfillment_id"] == "123456"
    assert event.data["tracking_number"] == "1z827wk74630"


@pytest.mark.parametrize("shipment_status", [None, "label_printed", "in_transit", "out_for_delivery",
                                             "attempted_delivery", "failure"])
def test_fulfillments_update_not_delivered_is_not_relevant(shipment_status):
    payload = {**body("fulfillments/update"), "shipment_status": shipment_status}
    with pytest.raises(NotRelevant):
        event_for("fulfillments/update", payload)


def test_fulfillment_event_delivered():
    event = event_for("fulfillment_events/create")
    assert event.type == "order.delivered"
    assert event.occurred_at == datetime(2026, 3, 5, 11, 30, tzinfo=BANGKOK)   # happened_at, not created_at
    assert event.customer is None
    assert event.order is not None and event.order.id == ORDER_ID
    assert event.data == {"order_id": ORDER_ID, "fulfillment_id": "123456", "fulfillment_event_id": "1234567"}


def test_fulfillment_event_falls_back_to_created_at():
    payload = {**body("fulfillment_events/create"), "happened_at": None}
    assert event_for("fulfillment_events/create", payload).occurred_at == datetime(2026, 3, 5, 11, 31, 6, tzinfo=BANGKOK)


def test_fulfillment_event_not_delivered_is_not_relevant():
    payload = json.loads(raw("fulfillment_events_create_in_transit.json"))
    assert payload["status"] == "in_transit"
    with pytest.raises(NotRelevant, match="in_transit"):
        event_for("fulfillment_events/create", payload)


def test_refunds_create():
    event = event_for("refunds/create")
    assert event.type == "order.refunded"
    assert event.occurred_at == datetime(2026, 3, 20, 9, 12, 44, tzinfo=BANGKOK)
    assert event.customer is None
    assert event.order is not None and event.order.id == ORDER_ID
    assert event.data == {"order_id": ORDER_ID, "refund_id": "890088186047892319", "amount": "89.99", "currency": "USD"}


def test_refund_amount_counts_only_successful_refund_transactions():
    payload = body("refunds/create")
    tx = payload["transactions"][0]
    payload["transactions"] += [
        {**tx, "id": 1, "amount": "10.00", "status": "failure"},
        {**tx, "id": 2, "amount": "5.00", "currency": None},
    ]
    assert event_for("refunds/create", payload).data["amount"] == "94.99"
    payload["transactions"] = []   # e.g. a restock-only refund
    data = event_for("refunds/create", payload).data
    assert (data["amount"], data["currency"]) == ("0", "USD")   # currency from the refund line items


def test_customers_create():
    event = event_for("customers/create")
    assert event.type == "customer.updated"
    assert event.order is None
    c = event.customer
    assert c is not None
    assert (c.id, c.email, c.phone, c.first_name) == (CUSTOMER_ID, "john@example.com", "+66812345678", "John")
    assert c.consents == {"email": True, "sms": True}
    assert event.occurred_at == datetime(2026, 3, 2, 10, 14, 2, tzinfo=BANGKOK)


def test_customers_update_withdrawn_sms_consent():
    event = event_for("customers/update")
    assert event.type == "customer.updated"
    assert event.customer is not None and event.customer.consents == {"email": True, "sms": False}
    assert event.occurred_at == datetime(2026, 3, 6, 20, 5, 31, tzinfo=BANGKOK)


# --- customer details -----------------------------------------------------------------------------

def test_email_and_phone_fall_back_to_the_order():
    payload = body("orders/create")
    payload["customer"].update(email=None, phone=None)
    payload["billing_address"]["phone"] = "+66 81 234 5678"
    c = event_for("orders/create", payload).customer
    assert c is not None
    assert c.email == "jon@example.com"
    assert c.phone == "+66812345678"
    payload["email"] = ""
    payload["phone"] = "+66 2 123 4567"
    c = event_for("orders/create", payload).customer
    assert c is not None and (c.email, c.phone) == ("jon@example.com", "+6621234567")  # contact_email; order phone


def test_phone_that_is_not_e164_is_dropped():
    # Shopify's own sample addresses say "555-555-SHIP": not a number a text can go to.
    payload = body("orders/create")
    payload["customer"]["phone"] = None
    assert payload["shipping_address"]["phone"] == "555-555-SHIP"
    c = event_for("orders/create", payload).customer
    assert c is not None and c.phone is None


def test_consents_absent_are_not_a_no():
    payload = body("orders/create")
    del payload["customer"]["email_marketing_consent"]
    payload["customer"]["sms_marketing_consent"] = None
    c = event_for("orders/create", payload).customer
    assert c is not None and c.consents == {}


@pytest.mark.parametrize("state, expected", [("subscribed", True), ("pending", False), ("not_subscribed", False),
                                             ("unsubscribed", False), ("redacted", False), ("invalid", False)])
def test_consent_states(state, expected):
    payload = body("orders/create")
    payload["customer"]["email_marketing_consent"]["state"] = state
    c = event_for("orders/create", payload).customer
    assert c is not None and c.consents["email"] is expected


def test_legacy_accepts_marketing():
    payload = body("customers/update")
    del payload["email_marketing_consent"]
    payload["accepts_marketing"] = True
    c = event_for("customers/update", payload).customer
    assert c is not None and c.consents["email"] is True


def test_locale_passes_through():
    payload = {**body("orders/create"), "customer_locale": "zh-TW"}
    c = event_for("orders/create", payload).customer
    assert c is not None and c.locale == "zh-TW"


def test_order_without_customer_is_not_relevant():
    payload = {**body("orders/create"), "customer": None}
    with pytest.raises(NotRelevant):
        event_for("orders/create", payload)


# --- ids, time, topics ----------------------------------------------------------------------------

def test_event_id_is_stable_across_deliveries_of_one_event():
    first = event_for("orders/create", webhook_id="b54557e4-0001", event_id="9f66d8cb-82e2")
    retry_or_other_subscription = event_for("orders/create", webhook_id="b54557e4-0002", event_id="9f66d8cb-82e2")
    assert first.id == retry_or_other_subscription.id
    assert first.id.startswith("shopify:") and "9f66d8cb-82e2" in first.id


def test_event_id_falls_back_to_the_webhook_id():
    event = event_for("orders/create", webhook_id="b54557e4-0001", event_id=None)
    assert event.id.startswith("shopify:") and event.id.endswith("b54557e4-0001")
    assert event.id != event_for("orders/create", webhook_id="b54557e4-0002", event_id=None).id


def test_one_merchant_action_does_not_collapse_different_events():
    # A checkout can fire customers/create and orders/create; if they shared X-Shopify-Event-Id
    # the order must not be dropped as a repeat of the customer event.
    order = event_for("orders/create", event_id="same-action")
    customer = event_for("customers/create", event_id="same-action")
    assert order.id != customer.id
    # ...while two topics for the same thing are one event.
    assert event_for("orders/fulfilled", event_id="same-action").id == event_for("fulfillments/create", event_id="same-action").id


def test_occurred_at_falls_back_to_triggered_at_then_now():
    payload = {k: v for k, v in body("fulfillment_events/create").items() if k not in ("happened_at", "created_at")}
    triggered = datetime(2026, 3, 5, 4, 31, 6, tzinfo=timezone.utc)
    assert event_for("fulfillment_events/create", payload, triggered_at=triggered).occurred_at == triggered
    before = datetime.now(timezone.utc)
    occurred = event_for("fulfillment_events/create", payload, triggered_at=None).occurred_at
    assert occurred.tzinfo is not None and before <= occurred <= datetime.now(timezone.utc)


def test_unsupported_topic():
    with pytest.raises(UnsupportedTopic, match="products/update"):
        to_event(delivery("products/update"), {"id": 1})


def test_payload_without_order_id_is_rejected():
    payload = {k: v for k, v in body("refunds/create").items() if k != "order_id"}
    with pytest.raises(ValueError, match="order_id"):
        event_for("refunds/create", payload)


def test_one_order_from_created_to_refunded():
    """created → shipped → delivered → refunded all land on the same run key, `order.id`."""
    events = [event_for(topic) for topic in ("orders/create", "fulfillments/create", "fulfillment_events/create",
                                             "refunds/create")]
    assert [e.type for e in events] == ["order.created", "order.shipped", "order.delivered", "order.refunded"]
    assert {e.context()["order"]["id"] for e in events} == {ORDER_ID}
    assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)
    assert len({e.id for e in events}) == len(events)
    assert all(isinstance(e, EventIn) for e in events)
