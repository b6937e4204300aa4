"""The unsubscribe link: RFC 8058 one-click, and the page a person sees when they open it.

    GET  /unsubscribe/{token}              a confirmation page; changes nothing
    POST /unsubscribe/{token}              unsubscribes at once (mail clients' one-click, and the page's button)
    POST /unsubscribe/{token}/resubscribe  lifts that unsubscribe again (only with the page's CSRF token)

GET never unsubscribes: mail scanners and link previews fetch every URL in a message, and a
customer must not be unsubscribed by their spam filter. In RFC 8058 (§3.1, §3.2) the mail client
POSTs `List-Unsubscribe=One-Click` (multipart or urlencoded) with no cookies or other context, and
the sender must not answer with a redirect; so the POST needs nothing but the signed token in the
path and reads no body at all (form, multipart or empty are all the same request to it).

Resubscribing is the dangerous direction (it lifts an opt-out), so it needs the `csrf` field that
only the page shown for this token carries: a POST from another site, which cannot read the page,
is refused and changes nothing. Every page forbids framing, scripts and remote content (CSP,
X-Frame-Options) and sends no Referer, so the token in the URL does not leak to other sites.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keepflow.http.unsubscribe_copy import COPY, page_locale
from keepflow.sending import delivery_events, suppressions
from keepflow.sending.unsubscribe_links import InvalidToken, UnsubscribeToken, csrf_matches, csrf_token, verify
from keepflow.store import Customer, Database, Message

router = APIRouter(tags=["unsubscribe"])

_pages = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "pages"),
                     autoescape=select_autoescape(default=True, default_for_string=True))
# The token is in the URL: keep the page out of shared caches and the URL out of Referer headers;
# no frames (clickjacking the buttons), no scripts, nothing loaded from elsewhere.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff"}
# The page's one <style> carries a fresh nonce; forms may only post back here.
_CSP = ("default-src 'none'; style-src 'nonce-{nonce}'; img-src 'none'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
# Long enough to read the page and decide; short enough that a copied form is soon useless.
CSRF_MAX_AGE = timedelta(hours=2)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses={400: {"description": "not a valid link"}})
async def confirm_page(request: Request, token: str) -> HTMLResponse:
    """Asks before unsubscribing; when already unsubscribed, offers to subscribe again."""
    services = request.app.state.services
    parsed = _verified(request, token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    locale, unsubscribed = await asyncio.to_thread(_state, services.db, parsed)
    if unsubscribed:
        return _page(request, locale, parsed, "done", action=_path(request, token, "/resubscribe"), csrf_for=token)
    return _page(request, locale, parsed, "confirm", action=_path(request, token), one_click=True)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses={400: {"description": "not a valid link"}})
async def unsubscribe(request: Request, token: str) -> HTMLResponse:
    """RFC 8058 one-click: unsubscribes now. Idempotent; never redirects; sets no cookie."""
    services = request.app.state.services
    parsed = _verified(request, token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    locale = await asyncio.to_thread(_retrying, _unsubscribe, services.db, parsed)
    return _page(request, locale, parsed, "done", action=_path(request, token, "/resubscribe"), csrf_for=token)


@router.post("/unsubscribe/{token}/resubscribe", response_class=HTMLResponse,
             responses={400: {"description": "not a valid link"}, 403: {"description": "no valid CSRF token"}})
async def resubscribe(request: Request, token: str) -> HTMLResponse:
    """Lifts this link's scope when the form came from this link's page; the page offers to
    unsubscribe again."""
    services = request.app.state.services
    parsed = _verified(request, token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    form = await request.form()
    csrf = form.get("csrf")
    if not csrf_matches(services.settings, token, csrf if isinstance(csrf, str) else None, CSRF_MAX_AGE):
        # Shown as the page again, with a fresh form: a customer whose page sat open too long
        # just presses the button once more.
        locale, _ = await asyncio.to_thread(_state, services.db, parsed)
        page = _page(request, locale, parsed, "done", action=_path(request, token, "/resubscribe"), csrf_for=token)
        page.status_code = 403
        return page
    locale = await asyncio.to_thread(_resubscribe, services.db, parsed)
    return _page(request, locale, parsed, "resubscribed", action=_path(request, token), one_click=True)


def _verified(request: Request, token: str) -> UnsubscribeToken | HTMLResponse:
    try:
        return verify(request.app.state.services.settings, token)
    except InvalidToken as err:
        # The token says nothing trustworthy about the reader, so their browser picks the language.
        accepted = request.headers.get("accept-language", "").split(",")[0].split(";")[0].strip()
        locale = page_locale(accepted)
        copy = COPY[locale]
        nonce = secrets.token_urlsafe(16)
        html = _pages.get_template("unsubscribe.html").render(
            lang=locale, brand=_brand(request), fonts=copy["fonts"], heading=copy["invalid_heading"],
            text=copy["invalid_text"], action=None, button=None, one_click=False, nonce=nonce, csrf=None)
        headers = {**_headers(nonce), "X-Keepflow-Error": str(err)}
        return HTMLResponse(html, status_code=400, headers=headers)


def _headers(nonce: str) -> dict[str, str]:
    return {**_HEADERS, "Content-Security-Policy": _CSP.format(nonce=nonce)}


def _page(request: Request, locale: str, token: UnsubscribeToken, state: str, *, action: str,
          one_click: bool = False, csrf_for: str | None = None) -> HTMLResponse:
    """`csrf_for`: the raw token, when the page carries the resubscribe form that needs a CSRF token."""
    copy = COPY[locale]
    brand, address = _brand(request), token.address
    heading, text, button = {
        "confirm": ("confirm_heading", "confirm_marketing" if token.scope == suppressions.MARKETING else "confirm_group",
                    "unsubscribe_button"),
        "done": ("done_heading", "done_text", "resubscribe_button"),
        "resubscribed": ("resubscribed_heading", "resubscribed_text", "unsubscribe_button"),
    }[state]
    html = _pages.get_template("unsubscribe.html").render(
        lang=locale, brand=brand, fonts=copy["fonts"], heading=copy[heading].format(brand=brand, address=address),
        text=copy[text].format(brand=brand, address=address), action=action, button=copy[button], one_click=one_click,
        nonce=(nonce := secrets.token_urlsafe(16)),
        csrf=csrf_token(request.app.state.services.settings, csrf_for) if csrf_for else None)
    return HTMLResponse(html, headers=_headers(nonce))


def _brand(request: Request) -> str:
    return str(request.app.state.services.catalog.file.brand.get("name", ""))


def _path(request: Request, token: str, suffix: str = "") -> str:
    # A path, not a full URL: behind a proxy the Host this app sees may not be the public one.
    return f"{request.scope.get('root_path', '')}/unsubscribe/{token}{suffix}"


def _locale(session, customer_id: str) -> str:
    customer = session.get(Customer, customer_id)
    return page_locale(customer.locale if customer else None)


def _state(db: Database, token: UnsubscribeToken) -> tuple[str, bool]:
    with db.session() as session:
        active = suppressions.is_active(session, token.channel, token.address, token.scope)
        return _locale(session, token.customer_id), active


def _unsubscribe(db: Database, token: UnsubscribeToken) -> str:
    with db.session() as session:
        row = suppressions.suppress(session, channel=token.channel, address=token.address, scope=token.scope,
                                    reason="unsubscribe", source="unsubscribe_link", customer_id=token.customer_id)
        _credit_last_message(session, token, row.created_at)
        return _locale(session, token.customer_id)


def _credit_last_message(session, token: UnsubscribeToken, at) -> None:
    """`keepflow report` counts unsubscribes per step: credit this one to the last marketing
    message sent to the address, the one whose link was most likely clicked (once per opt-out)."""
    last = session.scalar(select(Message).where(
        Message.customer_id == token.customer_id, Message.channel == token.channel,
        Message.category == "marketing", Message.status == "sent").order_by(Message.id.desc()).limit(1))
    notification = f"{token.customer_id}:{token.scope}:{at.isoformat()}"
    if last is not None and not delivery_events.seen_before(session, "unsubscribe_link", notification):
        delivery_events.record(session, source="unsubscribe_link", notification_id=notification, message=last,
                        kind="unsubscribed", occurred_at=at)


def _resubscribe(db: Database, token: UnsubscribeToken) -> str:
    with db.session() as session:
        suppressions.lift(session, channel=token.channel, address=token.address, scopes=[token.scope])
        return _locale(session, token.customer_id)


def _retrying(work, db: Database, token: UnsubscribeToken) -> str:
    """A mail client's one-click and the customer's own click can land together: the loser of the
    insert finds the winner's row on its second try, and the answer is the same."""
    try:
        return work(db, token)
    except IntegrityError:
        return work(db, token)
