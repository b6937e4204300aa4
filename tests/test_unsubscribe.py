"""Unsubscribe links: signed tokens, RFC 8058 one-click POST, the confirmation page, resubscribe."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from keepflow.http.app import create_app
from keepflow.sending import suppressions
from keepflow.sending.unsubscribe_links import InvalidToken, headers_for, link_for, token_for, verify
from keepflow.settings import Settings, new_secret
from keepflow.store import Customer, Database, Suppression
from tests.engine import CATALOG, SHOP_SEQUENCES, SHOP_TEMPLATES
from tests.helpers import serving

SECRET = "unsubscribe-secret-current"
OLD_SECRET = "unsubscribe-secret-previous"
FORM = "application/x-www-form-urlencoded"


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"data_dir": tmp_path, "sequences_path": SHOP_SEQUENCES, "templates_dir": SHOP_TEMPLATES,
              "unsubscribe_secret": SECRET, "public_url": "https://mail.shop.example/", "webhook_secret": None}
    return Settings(**{**values, **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def http(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings, db) as client:
        yield client


def add_customer(db: Database, customer_id: str, locale: str | None, email: str = "nok@example.com") -> None:
    with db.session() as session:
        session.add(Customer(id=customer_id, email=email, locale=locale))


def rows(db: Database) -> list[tuple]:
    with db.session() as session:
        return [(r.channel, r.address, r.scope, r.reason, r.source, r.customer_id, r.lifted_at is None)
                for r in session.scalars(select(Suppression).order_by(Suppression.id))]


def count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(Suppression))


def path_of(url: str) -> str:
    return url.removeprefix("https://mail.shop.example")


def link(settings: Settings, customer_id: str = "cus_1", address: str = "Nok@Example.com", scope: str = "marketing") -> str:
    return path_of(link_for(settings, customer_id=customer_id, channel="email", address=address, scope=scope))


def assert_plain_200(response) -> None:
    """RFC 8058 one-click: a final answer, no redirect, nothing for the client to keep."""
    assert response.status_code == 200, response.text
    assert not 300 <= response.status_code < 400
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers


# --- tokens ---------------------------------------------------------------------------------------


def test_token_round_trips_with_the_address_normalised(settings):
    url = link_for(settings, customer_id="cus_1", channel="email", address="  Nok@Example.COM ")
    assert url.startswith("https://mail.shop.example/unsubscribe/")  # trailing slash of public_url dropped
    token = verify(settings, url.rsplit("/", 1)[1])
    assert (token.customer_id, token.channel, token.address, token.scope) == ("cus_1", "email", "nok@example.com", "marketing")
    assert token.key_id


def test_link_without_public_url_uses_the_http_host_and_port(tmp_path):
    settings = make_settings(tmp_path, public_url=None, http_host="127.0.0.1", http_port=8123)
    assert link_for(settings, customer_id="c", channel="email", address="a@example.com").startswith(
        "http://127.0.0.1:8123/unsubscribe/")


def test_tokens_are_stable_and_unique_to_customer_address_and_scope(settings):
    def make(**kw):
        return token_for(settings, **{"customer_id": "cus_1", "channel": "email", "address": "nok@example.com",
                                      "scope": "marketing", **kw})

    assert make() == make(address="NOK@example.com")  # an old email's link is the same link
    others = {make(customer_id="cus_2"), make(address="ann@example.com"), make(scope="group:winback")}
    assert make() not in others and len(others) == 3


def test_a_scope_that_is_not_marketing_or_a_group_is_refused(settings):
    with pytest.raises(ValueError):
        token_for(settings, customer_id="c", channel="email", address="a@example.com", scope="all")


def _recode(token: str, **changes) -> str:
    payload, key_id, mac = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":"), sort_keys=True).encode()).rstrip(b"=")
    return f"{raw.decode()}.{key_id}.{mac}"


def bad_tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    good = token_for(settings, customer_id="cus_1", channel="email", address="nok@example.com")
    other = token_for(settings, customer_id="cus_2", channel="email", address="ann@example.com")
    payload, key_id, mac = good.split(".")
    forger = make_settings(tmp_path, unsubscribe_secret="a-secret-an-attacker-guessed")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    return {
        "forged": token_for(forger, customer_id="cus_1", channel="email", address="nok@example.com"),
        "forged_with_our_key_id": "{0}.{key_id}.{2}".format(
            *token_for(forger, customer_id="cus_1", channel="email", address="nok@example.com").split("."),
            key_id=key_id),
        "altered_mac": f"{payload}.{key_id}.{flipped}",
        "altered_address": _recode(good, a="victim@example.com"),
        "altered_scope": _recode(good, s="group:winback"),
        "customer_swapped": _recode(good, c="cus_2"),
        "payload_of_another_customer": f"{other.split('.')[0]}.{key_id}.{mac}",
        "unknown_key_id": f"{payload}.AAAAAAAA.{mac}",
        "truncated": f"{payload}.{key_id}",
        "garbage": "not-a-token",
        "non_ascii": f"{payload}.{key_id}.{mac[:-1]}é",
    }


@pytest.mark.parametrize("kind", ["forged", "forged_with_our_key_id", "altered_mac", "altered_address",
                                  "altered_scope", "customer_swapped", "payload_of_another_customer",
                                  "unknown_key_id", "truncated", "garbage", "non_ascii"])
async def test_forged_or_altered_tokens_are_refused_and_change_nothing(settings, db, http, tmp_path, kind):
    token = bad_tokens(settings, tmp_path)[kind]
    with pytest.raises(InvalidToken):
        verify(settings, token)
    before = rows(db)
    for path in (f"/unsubscribe/{token}", f"/unsubscribe/{token}/resubscribe"):
        response = await http.post(path, content="List-Unsubscribe=One-Click", headers={"content-type": FORM})
        assert response.status_code in (400, 404), response.text
        assert "location" not in response.headers
    page = await http.get(f"/unsubscribe/{token}")
    assert page.status_code in (400, 404)
    if page.status_code == 400:
        assert "This link does not work" in page.text
    assert rows(db) == before == []


def test_the_signature_covers_the_key_id_too(settings, tmp_path):
    token = token_for(settings, customer_id="cus_1", channel="email", address="nok@example.com")
    payload, _, mac = token.split(".")
    rotated = make_settings(tmp_path, unsubscribe_secret=f"{SECRET} {OLD_SECRET}")
    other_key_id = token_for(make_settings(tmp_path, unsubscribe_secret=OLD_SECRET), customer_id="x",
                             channel="email", address="x@example.com").split(".")[1]
    with pytest.raises(InvalidToken):
        verify(rotated, f"{payload}.{other_key_id}.{mac}")


async def test_old_links_keep_working_after_a_rotation(tmp_path, db):
    before = make_settings(tmp_path, unsubscribe_secret=OLD_SECRET)
    old_url = link(before)
    rotated = make_settings(tmp_path, unsubscribe_secret=f"{SECRET}, {OLD_SECRET}")
    new_url = link(rotated)
    assert new_url != old_url and verify(rotated, new_url.rsplit("/", 1)[1]).key_id != verify(
        rotated, old_url.rsplit("/", 1)[1]).key_id
    async with serving(rotated, db) as http:
        assert_plain_200(await http.post(old_url, content="List-Unsubscribe=One-Click", headers={"content-type": FORM}))
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]
    # Once the old secret is dropped, its links stop verifying.
    with pytest.raises(InvalidToken):
        verify(make_settings(tmp_path, unsubscribe_secret=SECRET), old_url.rsplit("/", 1)[1])


def test_without_an_unsubscribe_secret_one_is_derived_from_the_webhook_secret(tmp_path):
    webhook = new_secret()
    derived = make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=webhook)
    token = token_for(derived, customer_id="c", channel="email", address="a@example.com")
    assert verify(make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=webhook), token).customer_id == "c"
    # Another webhook secret, or the webhook secret used as is, does not verify it: the key is derived.
    for other in (make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=new_secret()),
                  make_settings(tmp_path, unsubscribe_secret=webhook)):
        with pytest.raises(InvalidToken):
            verify(other, token)


def test_with_no_secret_at_all_the_dev_secret_is_shared_like_keepflow_dev(tmp_path):
    # The worker (which makes links) and the web server (which checks them) are separate processes.
    worker = make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=None)
    server = make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=None)
    token = token_for(worker, customer_id="c", channel="email", address="a@example.com")
    assert (tmp_path / "webhook-secret").is_file()
    assert verify(server, token).address == "a@example.com"


# --- headers --------------------------------------------------------------------------------------


def test_headers_are_the_rfc_8058_one_click_pair(settings):
    url = "https://mail.shop.example/unsubscribe/abc.def.ghi"
    assert headers_for(settings, url) == {
        "List-Unsubscribe": "<https://mail.shop.example/unsubscribe/abc.def.ghi>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    with_mailto = settings.model_copy(update={"unsubscribe_mailto": "unsubscribe@shop.example"})
    assert headers_for(with_mailto, url) == {
        "List-Unsubscribe": "<https://mail.shop.example/unsubscribe/abc.def.ghi>, "
                            "<mailto:unsubscribe@shop.example?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


# --- one-click POST -------------------------------------------------------------------------------

BOUNDARY = "----keepflow-test-boundary"
BODIES = {
    "form": ("List-Unsubscribe=One-Click", {"content-type": FORM}),
    "multipart": (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
                  f"One-Click\r\n--{BOUNDARY}--\r\n", {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}),
    "empty": ("", {}),
}


@pytest.mark.parametrize("body", BODIES)
async def test_one_click_post_suppresses_at_once_and_never_redirects(settings, db, http, body):
    content, headers = BODIES[body]
    url = link(settings)
    response = await http.post(url, content=content, headers=headers)
    assert_plain_200(response)
    assert response.headers["content-type"].startswith("text/html")
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]
    with db.transaction() as connection:
        blocked = suppressions.blocking_reason(connection, channel="email", address="NOK@example.com", category="marketing",
                                        group="education")
        assert blocked is not None
        assert suppressions.blocking_reason(connection, channel="email", address="nok@example.com", category="transactional",
                                     group="fulfilment") is None
    # A mail client retrying, or the customer clicking too: the same answer, still one row.
    again = await http.post(url, content=content, headers=headers)
    assert_plain_200(again)
    assert count(db) == 1


async def test_a_group_link_unsubscribes_from_that_group_only(settings, db, http):
    assert_plain_200(await http.post(link(settings, scope="group:winback"), content="List-Unsubscribe=One-Click",
                               headers={"content-type": FORM}))
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="email", address="nok@example.com", category="marketing",
                                     group="winback") is not None
        assert suppressions.blocking_reason(connection, channel="email", address="nok@example.com", category="marketing",
                                     group="education") is None


# --- the page -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "lang", "phrase"), [
    ("th-TH", "th", "ยกเลิกการรับอีเมลจาก"),
    ("th", "th", "ยกเลิกการรับอีเมลจาก"),
    ("zh-Hant", "zh-Hant", "要取消訂閱"),
    ("zh-TW", "zh-Hant", "要取消訂閱"),
    ("zh", "zh-Hant", "要取消訂閱"),
    ("en-GB", "en", "Unsubscribe from"),
    ("ja", "en", "Unsubscribe from"),
    (None, "en", "Unsubscribe from"),
])
async def test_get_asks_in_the_customers_language_and_changes_nothing(settings, db, http, locale, lang, phrase):
    add_customer(db, "cus_1", locale)
    url = link(settings)
    page = await http.get(url)
    assert page.status_code == 200 and "set-cookie" not in page.headers
    assert f'<html lang="{lang}">' in page.text and phrase in page.text
    assert "Lumen Camera Co." in page.text and "nok@example.com" in page.text
    assert f'<form method="post" action="{url}">' in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    # Mail scanners prefetch links: a GET, even several, must leave the table as it was.
    await http.get(url)
    assert count(db) == 0


async def test_get_for_a_customer_we_do_not_know_is_english(settings, db, http):
    page = await http.get(link(settings, customer_id="cus_unknown"))
    assert page.status_code == 200 and '<html lang="en">' in page.text and count(db) == 0


async def test_page_text_is_escaped(settings, db, http):
    page = await http.get(link(settings, address='"><script>alert(1)</script>'))
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


@pytest.mark.parametrize(("locale", "done", "again", "back"), [
    ("th-TH", "ยกเลิกการรับอีเมลเรียบร้อยแล้ว", "สมัครรับอีเมลอีกครั้ง", "สมัครรับอีเมลอีกครั้งเรียบร้อยแล้ว"),
    ("zh-TW", "已取消訂閱", "重新訂閱", "已重新訂閱"),
    ("en", "You are unsubscribed", "Subscribe again", "You are subscribed again"),
])
async def test_unsubscribed_then_resubscribed_in_the_customers_language(settings, db, http, locale, done, again, back):
    add_customer(db, "cus_1", locale)
    url = link(settings)
    unsubscribed = await http.post(url, content="List-Unsubscribe=One-Click", headers={"content-type": FORM})
    assert_plain_200(unsubscribed)
    assert done in unsubscribed.text and f'action="{url}/resubscribe"' in unsubscribed.text

    # Opened again later: it says so, and offers to subscribe again; still one active row.
    page = await http.get(url)
    assert page.status_code == 200 and done in page.text and again in page.text
    assert f'action="{url}/resubscribe"' in page.text
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]

    resubscribed = await http.post(f"{url}/resubscribe")
    assert_plain_200(resubscribed)
    assert back in resubscribed.text and f'action="{url}"' in resubscribed.text
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", False)]
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="email", address="nok@example.com", category="marketing",
                                     group="education") is None
    assert done not in (await http.get(url)).text

    # And out again: the same row is re-armed, not a second one.
    assert_plain_200(await http.post(url))
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]


def test_the_route_is_registered_in_the_app(settings, db):
    app = create_app(settings, catalog=CATALOG, db=db, client=None, webhook_secrets=[new_secret()])
    paths = app.openapi()["paths"]
    assert set(paths["/unsubscribe/{token}"]) == {"get", "post"}
    assert set(paths["/unsubscribe/{token}/resubscribe"]) == {"post"}
