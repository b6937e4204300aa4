"""Unsubscribe links: signed tokens, RFC 8058 one-click POST, the confirmation page, resubscribe."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from keepflow.http.app import create_app
from keepflow.sending import suppressions
from keepflow.sending.unsubscribe_links import LIFETIME, InvalidToken, headers_for, link_for, token_for, verify
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


def test_the_token_does_not_show_who_it_is_for(settings):
    token = token_for(settings, customer_id="cus_1", channel="email", address="nok@example.com")
    readable = [token]
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        for part in token.split("."):
            try:
                readable.append(decode(part + "=" * (-len(part) % 4)).decode("latin-1"))
            except ValueError:
                pass
    assert not any("nok" in text or "cus_1" in text for text in readable)


def test_link_without_public_url_uses_the_http_host_and_port(tmp_path):
    settings = make_settings(tmp_path, public_url=None, http_host="127.0.0.1", http_port=8123)
    assert link_for(settings, customer_id="c", channel="email", address="a@example.com").startswith(
        "http://127.0.0.1:8123/unsubscribe/")


def test_every_link_is_new_and_says_the_same(settings):
    def make(**kw):
        return token_for(settings, **{"customer_id": "cus_1", "channel": "email", "address": "nok@example.com",
                                      "scope": "marketing", **kw})

    first, second = make(), make(address="NOK@example.com")
    assert first != second  # a fresh IV each time: two links cannot be matched up by their text
    assert verify(settings, first) == verify(settings, second)
    others = [verify(settings, make(customer_id="cus_2")), verify(settings, make(address="ann@example.com")),
              verify(settings, make(scope="group:winback"))]
    assert verify(settings, first) not in others and len(set(others)) == 3


def test_a_scope_that_is_not_marketing_or_a_group_is_refused(settings):
    with pytest.raises(ValueError):
        token_for(settings, customer_id="c", channel="email", address="a@example.com", scope="all")


def test_a_link_works_for_a_year_then_expires(settings):
    sent = datetime(2026, 1, 10, tzinfo=timezone.utc)
    token = token_for(settings, customer_id="c", channel="email", address="a@example.com", at=sent)
    assert verify(settings, token, at=sent + LIFETIME - timedelta(minutes=1)).customer_id == "c"
    with pytest.raises(InvalidToken, match="expired"):
        verify(settings, token, at=sent + LIFETIME + timedelta(minutes=1))


async def test_an_expired_link_changes_nothing(settings, db, http):
    old = token_for(settings, customer_id="cus_1", channel="email", address="nok@example.com",
                    at=datetime.now(timezone.utc) - LIFETIME - timedelta(days=1))
    response = await http.post(f"/unsubscribe/{old}", content="List-Unsubscribe=One-Click", headers={"content-type": FORM})
    assert response.status_code == 400 and "expired" in response.headers["x-keepflow-error"]
    assert rows(db) == []


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:]


def bad_tokens(settings: Settings, tmp_path: Path) -> dict[str, str]:
    good = token_for(settings, customer_id="cus_1", channel="email", address="nok@example.com")
    forger = make_settings(tmp_path, unsubscribe_secret="a-secret-an-attacker-guessed")
    return {
        "forged": token_for(forger, customer_id="cus_1", channel="email", address="nok@example.com"),
        "altered_mac": _flip(good, len(good) - 5),
        "altered_ciphertext": _flip(good, len(good) // 2),
        "altered_timestamp": _flip(good, 4),
        "truncated": good[:-10],
        "garbage": "not-a-token",
        "non_ascii": f"{good[:-1]}é",
        "legacy_forged": legacy_token(_legacy_key("a-secret-an-attacker-guessed")),
        "legacy_altered_address": legacy_token(_legacy_key(SECRET), a="victim@example.com", tamper=True),
        "legacy_unknown_key_id": legacy_token((b"k", "AAAAAAAA")),
    }


@pytest.mark.parametrize("kind", ["forged", "altered_mac", "altered_ciphertext", "altered_timestamp", "truncated",
                                  "garbage", "non_ascii", "legacy_forged", "legacy_altered_address",
                                  "legacy_unknown_key_id"])
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


async def test_old_links_keep_working_after_a_rotation(tmp_path, db):
    before = make_settings(tmp_path, unsubscribe_secret=OLD_SECRET)
    old_url = link(before)
    rotated = make_settings(tmp_path, unsubscribe_secret=f"{SECRET}, {OLD_SECRET}")
    new_url = link(rotated)
    # The new secret encrypts: the old one alone cannot read the new link.
    with pytest.raises(InvalidToken):
        verify(before, new_url.rsplit("/", 1)[1])
    async with serving(rotated, db) as http:
        assert_plain_200(await http.post(old_url, content="List-Unsubscribe=One-Click", headers={"content-type": FORM}))
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]
    # Once the old secret is dropped, its links stop working.
    with pytest.raises(InvalidToken):
        verify(make_settings(tmp_path, unsubscribe_secret=SECRET), old_url.rsplit("/", 1)[1])


def test_with_no_secret_at_all_the_dev_secret_is_shared_like_keepflow_dev(tmp_path):
    # The worker (which makes links) and the web server (which checks them) are separate processes;
    # with no secret configured (only `keepflow dev` and tests start so) both use the dev secret file,
    # whatever webhook secret each was given.
    worker = make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=None)
    server = make_settings(tmp_path, unsubscribe_secret=None, webhook_secret=new_secret())
    token = token_for(worker, customer_id="c", channel="email", address="a@example.com")
    assert (tmp_path / "webhook-secret").is_file()
    assert verify(server, token).address == "a@example.com"


# --- links made before tokens were encrypted, already in inboxes ----------------------------------


def _legacy_key(secret: str | bytes) -> tuple[bytes, str]:
    raw = secret.encode() if isinstance(secret, str) else secret
    key_id = base64.urlsafe_b64encode(hmac.new(raw, b"keepflow/sending/unsubscribe_links/key-id/v1",
                                               hashlib.sha256).digest()[:6]).rstrip(b"=").decode()
    return raw, key_id


def legacy_token(key: tuple[bytes, str], tamper: bool = False, **changes) -> str:
    """A link as the previous release wrote it: base64 JSON, key id, HMAC-SHA256."""
    secret, key_id = key

    def payload(**fields) -> str:
        body = {"c": "cus_1", "ch": "email", "a": "nok@example.com", "s": "marketing", **fields}
        return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
                                        ).rstrip(b"=").decode()

    signed = payload() if tamper else payload(**changes)
    mac = base64.urlsafe_b64encode(hmac.new(secret, b"keepflow/sending/unsubscribe_links/token/v1." +
                                            f"{key_id}.{signed}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"{payload(**changes)}.{key_id}.{mac}"


async def test_a_link_from_before_encryption_still_unsubscribes_while_its_secret_is_listed(settings, db, http, tmp_path):
    old = legacy_token(_legacy_key(SECRET))
    assert verify(settings, old).address == "nok@example.com"
    assert_plain_200(await http.post(f"/unsubscribe/{old}", content="List-Unsubscribe=One-Click",
                                     headers={"content-type": FORM}))
    assert rows(db) == [("email", "nok@example.com", "marketing", "unsubscribe", "unsubscribe_link", "cus_1", True)]
    # Signed, before, with the key the old code derived from the webhook secret (no unsubscribe secret set).
    webhook = new_secret()
    derived = hmac.new(webhook.encode(), b"keepflow/sending/unsubscribe_links/derived-secret/v1", hashlib.sha256).digest()
    assert verify(make_settings(tmp_path, webhook_secret=webhook), legacy_token(_legacy_key(derived))).customer_id == "cus_1"
    with pytest.raises(InvalidToken):
        verify(make_settings(tmp_path, unsubscribe_secret="another-secret"), old)


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

    resubscribed = await http.post(f"{url}/resubscribe", data={"csrf": csrf_of(page.text)})
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


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


async def test_a_cross_site_resubscribe_is_refused_and_changes_nothing(settings, db, http):
    url = link(settings)
    assert_plain_200(await http.post(url))
    unsubscribed = rows(db)
    # Another link's page (a token the attacker could get for their own address) does not do either.
    assert_plain_200(await http.post(link(settings, customer_id="cus_2", address="ann@example.com")))
    own_page = await http.get(link(settings, customer_id="cus_2", address="ann@example.com"))
    other = csrf_of(own_page.text)
    for form in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": other}):
        response = await http.post(f"{url}/resubscribe", data=form, headers={"origin": "https://evil.example"})
        assert response.status_code == 403
    assert rows(db)[0] == unsubscribed[0]
    with db.transaction() as connection:
        assert suppressions.blocking_reason(connection, channel="email", address="nok@example.com",
                                            category="marketing", group="education") is not None


async def test_every_page_forbids_framing_scripts_and_referrers(settings, db, http):
    url = link(settings)
    pages = [await http.get(url), await http.post(url), await http.get(url), await http.get("/unsubscribe/not-a-token")]
    for page in pages:
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        nonce = re.search(r"style-src 'nonce-([^']+)'", csp).group(1)
        assert f'<style nonce="{nonce}">' in page.text and " style=" not in page.text


def test_the_route_is_registered_in_the_app(settings, db):
    app = create_app(settings, catalog=CATALOG, db=db, client=None, webhook_secrets=[new_secret()])
    paths = app.openapi()["paths"]
    assert set(paths["/unsubscribe/{token}"]) == {"get", "post"}
    assert set(paths["/unsubscribe/{token}/resubscribe"]) == {"post"}
