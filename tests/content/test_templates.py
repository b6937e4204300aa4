"""Every shipped message template, in every locale, rendered through the real renderer.

Each template gets only the variables its sequence step really has (see sequences.yaml):
the renderer uses StrictUndefined, so a template that reaches for something it will not
have at run time (say `order` in a win-back email) fails here, not in production.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from babel.dates import format_date
from babel.numbers import format_currency
from ruamel.yaml import YAML

from keepflow.language.rendering import Renderer, TemplateError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
LOCALES = ("en", "th", "zh-Hant")

# template name -> the run variables (besides customer, brand, event) its step can see
EMAILS: dict[str, tuple[str, ...]] = {
    "order_confirmed": ("order",),
    "order_shipped": ("order", "shipment"),
    "order_delivered": ("order", "shipment"),
    "education_basics": ("order",),
    "education_manual": ("order",),
    "cross_sell_tripod": ("order", "profile"),
    "cross_sell_tripod_offer": ("order", "profile", "coupon"),
    "review_request": ("order",),
    "review_reminder": ("order",),
    "winback_offer": ("coupon",),
    "winback_reminder": ("coupon",),
    "winback_last_chance": ("coupon",),
}
SMS: dict[str, tuple[str, ...]] = {
    "order_shipped": ("order", "shipment"),
    "winback_offer": ("coupon",),
    "education_lighting": ("order",),  # the LINE tip's `fallback: sms`
}
LINE: dict[str, tuple[str, ...]] = {
    "education_lighting": ("order",),
}
BY_CHANNEL = {"email": EMAILS, "sms": SMS, "line": LINE}
CASES = [(channel, name, locale) for channel, names in BY_CHANNEL.items() for name in names for locale in LOCALES]
COUPON_TEMPLATES = {"cross_sell_tripod_offer", "winback_offer", "winback_reminder", "winback_last_chance"}

THAI = re.compile(r"[\u0e00-\u0e7f]")
CJK = re.compile(r"[\u4e00-\u9fff]")
MOJIBAKE = ("Ã", "â€", "à¸", "\ufffd")
# Simplified-only forms of characters these templates use: zh-Hant must use 們這時後單優訂攝腳發為說對過還見讓請.
SIMPLIFIED_ONLY = set("们这时后单优订摄脚发为说对过还见让请")

BRAND = YAML(typ="safe").load((ROOT / "sequences.yaml").read_text(encoding="utf-8"))["brand"]
CUSTOMER = {
    "id": "cus_1001",
    "email": "nok@example.com",
    "phone": "+66812345678",
    "first_name": "นก",
    "locale": "th-TH",
    "timezone": "Asia/Bangkok",
    "consents": {"email": True, "sms": True},
}
# As the run context holds it: OrderIn.model_dump(mode="json"), so money arrives as strings.
ORDER = {
    "id": "ord_8f3a21",
    "number": "LC-10042",
    "items": [
        {"sku": "DSLR-D200-KIT", "title": "Lumen D200 DSLR with 18–55 mm lens", "quantity": 1, "price": "24900.00"},
        {"sku": "SD-64-U3", "title": "SD card 64 GB & case", "quantity": 2, "price": "590.00"},
    ],
    "total": "26080.00",
    "currency": "THB",
}
SHIPMENT = {
    "id": "evt_ship_77",
    "type": "order.shipped",
    "occurred_at": "2026-11-03T09:15:00+00:00",
    "data": {
        "carrier": "Kerry Express",
        "tracking_number": "KEX123456789TH",
        "tracking_url": "https://track.example.com/KEX123456789TH",
    },
}
PROFILE = {"id": "cus_1001", "orders_count": 1, "total_spent": "26080.00", "purchased_skus": ["DSLR-D200-KIT", "SD-64-U3"]}
# As create_coupon returns it (pydantic JSON: an aware UTC datetime ends in Z).
TRIPOD_COUPON = {"code": "TRIPOD-4HX7QK", "percent": 10, "expires_at": "2026-11-24T10:00:00.123456Z"}
WINBACK_COUPON = {"code": "BACK-7K2Q9X", "percent": 20, "expires_at": "2026-11-30T10:00:00Z"}
EVENT = {"id": "evt_1", "type": "order.created", "occurred_at": "2026-11-01T08:00:00+00:00", "data": {}}


def context(name: str, channel: str = "email", **overrides) -> dict:
    needs = BY_CHANNEL[channel][name]
    values = {
        "order": ORDER,
        "shipment": SHIPMENT,
        "profile": PROFILE,
        "coupon": WINBACK_COUPON if name.startswith("winback") else TRIPOD_COUPON,
    }
    ctx = {"customer": dict(CUSTOMER), "brand": BRAND, "event": EVENT}
    ctx.update({key: values[key] for key in needs})
    ctx.update(overrides)
    return ctx


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


def babel_locale(locale: str) -> str:
    return locale.replace("-", "_")


def test_every_template_file_is_accounted_for():
    expected = {"email/_base.html"} | {f"email/_layout.{locale}.html" for locale in LOCALES}
    expected |= {f"{channel}/{name}.{locale}.{'html' if channel == 'email' else 'txt'}" for channel, name, locale in CASES}
    on_disk = {str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*") if p.is_file()}
    assert on_disk == expected


@pytest.mark.parametrize("path", sorted(str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.*")))
def test_files_are_utf8(path):
    text = (TEMPLATES / path).read_bytes().decode("utf-8")  # raises if not UTF-8
    assert "\ufeff" not in text, "no byte-order mark"


@pytest.mark.parametrize(("channel", "name", "locale"), CASES)
def test_renders(renderer, channel, name, locale):
    rendered = renderer.render(channel, name, locale, context(name, channel))

    assert rendered.locale == locale
    output = f"{rendered.subject or ''}\n{rendered.body}"
    for marker in ("{{", "}}", "{%", "%}", "{#"):
        assert marker not in output
    for marker in MOJIBAKE:
        assert marker not in output
    assert "None" not in rendered.text
    assert BRAND["name"] in rendered.body

    if locale == "th":
        assert THAI.search(output)
        assert not CJK.search(output)
    elif locale == "zh-Hant":
        assert CJK.search(output)
        assert not THAI.search(output.replace(CUSTOMER["first_name"], ""))
        assert not SIMPLIFIED_ONLY & set(output), f"Simplified characters: {SIMPLIFIED_ONLY & set(output)}"
    else:
        assert not CJK.search(output)
        assert not THAI.search(output.replace(CUSTOMER["first_name"], ""))

    if channel == "email":
        assert rendered.subject and rendered.subject.strip() == rendered.subject
        assert "\n" not in rendered.subject
        body = rendered.body
        assert body.lstrip().startswith("<!DOCTYPE html>")
        assert f'<html lang="{locale}">' in body
        assert '<meta charset="utf-8">' in body
        assert f"<title>{rendered.subject}</title>" in body
        assert "<style" not in body.lower() and "<script" not in body.lower()
        assert BRAND["postal_address"] in body
        assert f"mailto:{BRAND['support_email']}" in body
        assert rendered.text and "<" not in rendered.text
        assert CUSTOMER["first_name"] in body
    else:
        assert rendered.subject is None
        assert rendered.body == rendered.text
        assert "<" not in rendered.body and "&amp;" not in rendered.body
    if channel == "sms":
        assert "\n" not in rendered.body
        assert len(rendered.body) <= 160
    if channel == "line":
        # A chat message: a few short lines, greeting the customer by name, well under LINE's 5,000.
        assert CUSTOMER["first_name"] in rendered.body
        assert len(rendered.body) <= 500


@pytest.mark.parametrize("locale", LOCALES)
def test_order_confirmed_lists_items_and_total(renderer, locale):
    rendered = renderer.render("email", "order_confirmed", locale, context("order_confirmed"))
    money = lambda amount: format_currency(Decimal(amount), "THB", locale=babel_locale(locale))  # noqa: E731

    assert money("26080.00") in rendered.body
    for item in ORDER["items"]:
        assert money(item["price"]) in rendered.body
        assert f">{item['quantity']}<" in rendered.body
    assert "Lumen D200 DSLR with 18–55 mm lens" in rendered.body
    assert "SD card 64 GB &amp; case" in rendered.body  # data is escaped, never raw HTML
    assert ORDER["number"] in rendered.subject
    assert f"{BRAND['url']}/orders/{ORDER['id']}" in rendered.body
    if locale == "th":
        assert "฿26,080.00" in rendered.body


@pytest.mark.parametrize("locale", LOCALES)
def test_order_number_falls_back_to_id(renderer, locale):
    order = {**ORDER, "number": None}
    rendered = renderer.render("email", "order_confirmed", locale, context("order_confirmed", order=order))
    assert ORDER["id"] in rendered.subject
    sms = renderer.render("sms", "order_shipped", locale, context("order_shipped", "sms", order=order))
    assert ORDER["id"] in sms.body


@pytest.mark.parametrize(("channel", "name", "locale"),
                         [case for case in CASES if case[1] in COUPON_TEMPLATES])
def test_coupon_code_and_expiry_appear(renderer, channel, name, locale):
    coupon = WINBACK_COUPON if name.startswith("winback") else TRIPOD_COUPON
    rendered = renderer.render(channel, name, locale, context(name, channel))

    assert coupon["code"] in rendered.body
    assert f"{coupon['percent']}%" in rendered.body
    expiry = format_date(datetime.fromisoformat(coupon["expires_at"]), format="long", locale=babel_locale(locale))
    assert expiry in rendered.body
    if channel == "email":
        assert f"{coupon['percent']}%" in rendered.subject


@pytest.mark.parametrize("locale", LOCALES)
def test_winback_promises_twenty_percent_for_seven_days(renderer, locale):
    rendered = renderer.render("email", "winback_offer", locale, context("winback_offer"))
    assert "20%" in rendered.subject
    assert "7" in rendered.text


@pytest.mark.parametrize(("name", "locale"), [(name, locale) for name in EMAILS for locale in LOCALES])
def test_html_is_autoescaped(renderer, name, locale):
    customer = {**CUSTOMER, "first_name": "<b>Nok</b>"}
    rendered = renderer.render("email", name, locale, context(name, customer=customer))
    assert "&lt;b&gt;Nok&lt;/b&gt;" in rendered.body
    assert "<b>Nok</b>" not in rendered.body


FALLBACK_GREETING = {"en": "Hi there,", "th": "คุณลูกค้า", "zh-Hant": "親愛的顧客，您好："}


@pytest.mark.parametrize(("name", "locale"), [(name, locale) for name in EMAILS for locale in LOCALES])
@pytest.mark.parametrize("first_name", [None, ""])
def test_greeting_without_a_first_name(renderer, name, locale, first_name):
    customer = {**CUSTOMER, "first_name": first_name}
    rendered = renderer.render("email", name, locale, context(name, customer=customer))
    assert FALLBACK_GREETING[locale] in rendered.body
    assert "None" not in rendered.body


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("data", [{}, {"tracking_url": None}, {"carrier": "Thailand Post"}])
def test_shipment_without_tracking_data(renderer, locale, data):
    shipment = {**SHIPMENT, "data": data}
    order_page = f"{BRAND['url']}/orders/{ORDER['id']}"

    email = renderer.render("email", "order_shipped", locale, context("order_shipped", shipment=shipment))
    assert order_page in email.body
    assert "track.example.com" not in email.body and "KEX123456789TH" not in email.body
    assert "None" not in email.text
    if "carrier" in data:
        assert "Thailand Post" in email.body

    sms = renderer.render("sms", "order_shipped", locale, context("order_shipped", "sms", shipment=shipment))
    assert order_page in sms.body
    assert "None" not in sms.body

    delivered = renderer.render("email", "order_delivered", locale, context("order_delivered", shipment=shipment))
    assert delivered.locale == locale


@pytest.mark.parametrize("locale", LOCALES)
def test_shipment_with_tracking_data(renderer, locale):
    email = renderer.render("email", "order_shipped", locale, context("order_shipped"))
    assert 'href="https://track.example.com/KEX123456789TH"' in email.body
    assert "Kerry Express" in email.body and "KEX123456789TH" in email.body
    sms = renderer.render("sms", "order_shipped", locale, context("order_shipped", "sms"))
    assert "https://track.example.com/KEX123456789TH" in sms.body


@pytest.mark.parametrize(
    ("asked", "used"),
    [("th-TH", "th"), ("th", "th"), ("zh-TW", "zh-Hant"), ("zh_HK", "zh-Hant"), ("zh-Hant", "zh-Hant"),
     ("en-GB", "en"), ("fr", "en"), (None, "en"), ("", "en")],
)
def test_locale_fallback(renderer, asked, used):
    rendered = renderer.render("email", "order_confirmed", asked, context("order_confirmed"))
    assert rendered.locale == used
    assert f'<html lang="{used}">' in rendered.body
    sms = renderer.render("sms", "winback_offer", asked, context("winback_offer", "sms"))
    assert sms.locale == used


def test_undefined_variable_is_an_error(renderer):
    ctx = context("order_confirmed")
    del ctx["order"]
    with pytest.raises(TemplateError, match="order"):
        renderer.render("email", "order_confirmed", "en", ctx)


def test_winback_never_needs_an_order(renderer):
    # The win-back run is keyed by customer and has no order: its templates must not reach for one.
    for name in ("winback_offer", "winback_reminder", "winback_last_chance"):
        for locale in LOCALES:
            ctx = context(name)
            assert "order" not in ctx
            renderer.render("email", name, locale, ctx)
