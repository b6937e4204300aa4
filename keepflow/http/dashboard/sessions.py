"""Who is looking at the dashboard, and the token that proves a form came from it.

A session lives in a cookie signed with itsdangerous (Starlette's SessionMiddleware, set up in
keepflow/http/admin.py: HttpOnly, SameSite=Lax, Secure behind https, 8 hours from sign-in). It
holds who signed in, how, their role, and a CSRF token. Every page is rendered with the token
and every POST must send it back (`check_csrf`): a synchronizer token kept in the signed session,
so a token is good only with the session it was made for. (asgi-csrf and starlette-csrf were
considered: both compare a form or header value with a second cookie not tied to the session,
and starlette-csrf reads only a header, which a page without scripts cannot send.)
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Request

from keepflow.store import access

# The session's keys.
USER, ROLE, VIA, CSRF = "user", "role", "via", "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a form sends its token as.
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str
    # "local" (a users row) or "oidc".
    via: str

    @property
    def masked(self) -> bool:
        """A marketer sees customers' email addresses and phone numbers masked; an admin whole."""
        return self.role != "admin"


class CsrfRefused(Exception):
    """A form without the session's token: keepflow/http/admin.py answers 403 with a page saying so."""


class SignInRequired(Exception):
    """Raised by `viewer`; keepflow/http/admin.py answers it with a redirect to the sign-in page."""

    def __init__(self, back_to: str) -> None:
        super().__init__(back_to)
        self.back_to = back_to

    @property
    def location(self) -> str:
        return f"/signin?next={quote(self.back_to, safe='/')}"


async def viewer(request: Request) -> Viewer:
    """The signed-in viewer (a FastAPI dependency). A local user's role is read again on every
    request, so removing a user (or a new role) takes effect at once, not when the cookie expires."""
    session = request.session
    name, role, via = session.get(USER), session.get(ROLE), session.get(VIA)
    if name and via == "local":
        role = await asyncio.to_thread(access.role_of, request.app.state.services.db, name)
    if not name or role not in access.ROLES:
        session.pop(USER, None)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path if request.method in SAFE_METHODS else "/")
    found = Viewer(name=name, role=role, via=str(via))
    request.state.viewer = found
    return found


def sign_in(request: Request, who: Viewer) -> None:
    """A fresh session for `who`: whatever the session held before (a half-done sign-in, another
    user) is dropped, and the CSRF token is new."""
    request.session.clear()
    request.session.update({USER: who.name, ROLE: who.role, VIA: who.via, CSRF: secrets.token_urlsafe(32)})


def sign_out(request: Request) -> None:
    request.session.clear()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (the sign-in form's session has no user yet)."""
    token = request.session.get(CSRF)
    if not token:
        token = request.session[CSRF] = secrets.token_urlsafe(32)
    return token


async def check_csrf(request: Request) -> None:
    """Refuse (403) a request that may change something unless its form carries the session's token.

    A dependency of every route of the dashboard and of sign-in; routes mounted beside them with
    their own authentication (the codec endpoint) do not take it."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get(CSRF)
    form: Any = await request.form()  # parsed once: the route's own Form() fields read the same
    sent = form.get(CSRF_FIELD)
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
        raise CsrfRefused()
