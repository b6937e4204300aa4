"""The plain-text part of an email: what a text-only mail client shows and spam filters compare."""

from __future__ import annotations

from keepflow.language.rendering import Renderer
from tests.engine import SHOP_TEMPLATES

BRAND = {"name": "Shop", "url": "https://shop.example", "postal_address": "99 Sukhumvit Road, Bangkok",
         "support_email": "help@shop.example"}
TRACKING = "https://track.example/parcel/XY123?lang=en&ref=mail"


def test_a_shipped_email_text_keeps_its_lines_and_link_targets() -> None:
    context = {"brand": BRAND, "customer": {"first_name": "Ada"}, "order": {"id": "1001", "number": "#1001"},
               "shipment": {"data": {"carrier": "Kerry", "tracking_number": "XY123", "tracking_url": TRACKING}}}
    rendered = Renderer(SHOP_TEMPLATES).render("email", "order_shipped", "en", context)
    text = rendered.text
    assert TRACKING in text  # the tracking link itself, not only its label
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 6
    assert any(line.strip().startswith("Hi Ada") for line in lines)
    assert "<" not in text.replace("<" + TRACKING, "")  # no markup left (a "<url>" form is fine)
    assert "&amp;" not in text  # entities decoded


def test_the_text_part_has_no_subject_title_or_style() -> None:
    context = {"brand": BRAND, "customer": {"first_name": "Ada"}, "order": {"id": "1001", "number": "#1001"},
               "shipment": {"data": {}}}
    rendered = Renderer(SHOP_TEMPLATES).render("email", "order_shipped", "th", context)
    assert not rendered.text.startswith(rendered.subject or "-")  # <title> is not part of the body
    assert "https://shop.example/orders/1001" in rendered.text
    assert "margin:" not in rendered.text
