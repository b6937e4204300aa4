"""Signing in to the dashboard and out of it.

    GET  /signin                  the form (name and password), and a link to the OpenID Connect provider
    POST /signin                  a local user (`keepflow users add`): Argon2 hash checked, session started
    GET  /signin/oidc             off to the provider (Authlib: state, nonce and PKCE kept in the session)
    GET  /signin/oidc/callback    back from it: the ID token checked, the session started
    POST /signout                 the session ended

OpenID Connect is on when KEEPFLOW_OIDC_ISSUER and KEEPFLOW_OIDC_CLIENT_ID are set. Anyone the
provider signs in for this client is a marketer; an address in KEEPFLOW_OIDC_ADMINS is an admin,
if the provider says it is verified (`email_verified`), so nobody becomes an admin by typing an
address they do not own into their profile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from httpx2 import HTTPError  # what Authlib's client raises

from keepflow.http.dashboard import pages
from keepflow.http.dashboard.sessions import Viewer, check_csrf, sign_in, sign_out
from keepflow.settings import Settings
from keepflow.store import access

log = logging.getLogger("keepflow.http.dashboard.signin")

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])

CALLBACK = "/signin/oidc/callback"
# Where a sign-in goes back to, kept in the session while the provider has the browser.
NEXT = "signin_next"


def oidc_client(settings: Settings) -> Any | None:
    """Authlib's client for the configured provider, or None when OpenID Connect is not set up.
    The provider's discovery document and keys are fetched when the first person signs in."""
    if not (settings.oidc_issuer and settings.oidc_client_id):
        return None
    oauth = OAuth()
    return oauth.register(
        "oidc", client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
        server_metadata_url=f"{settings.oidc_issuer.rstrip('/')}/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256", "timeout": 10},
    )


def _local_path(target: str | None) -> str:
    """Only a path on this dashboard: `next` must not send a person signing in elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _form(request: Request, status: int = 200, next: str = "/", error: str | None = None) -> HTMLResponse:
    settings: Settings = request.app.state.services.settings
    provider = settings.oidc_issuer if request.app.state.oidc is not None else None
    return pages.render(request, "signin.html", status, masked=False, next=_local_path(next), error=error, oidc=provider)


@router.get("/signin", response_class=HTMLResponse)
async def signin_form(request: Request, next: str = "/") -> HTMLResponse:
    return _form(request, next=next)


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")):
    role = await asyncio.to_thread(access.signed_in_role, request.app.state.services.db, name, password)
    if role is None:
        log.info("dashboard sign-in refused for %r", name)
        return _form(request, 401, next=next, error="Wrong name or password.")
    sign_in(request, Viewer(name=name, role=role, via="local"))
    log.info("dashboard: %s signed in (%s)", name, role)
    return RedirectResponse(_local_path(next), status_code=303)


@router.get("/signin/oidc")
async def signin_oidc(request: Request, next: str = "/"):
    client = request.app.state.oidc
    if client is None:
        return pages.problem(request, 404, "No single sign-on", "OpenID Connect is not configured for this dashboard.")
    request.session[NEXT] = _local_path(next)
    settings: Settings = request.app.state.services.settings
    try:
        return await client.authorize_redirect(request, settings.resolved_admin_url + CALLBACK)
    except (HTTPError, OAuthError, ValueError) as err:  # the provider's discovery document unreachable or wrong
        log.warning("OpenID Connect provider unreachable: %r", err)
        return pages.problem(request, 502, "Sign-in unavailable", f"The sign-in provider could not be reached: {err}")


@router.get(CALLBACK)
async def oidc_callback(request: Request):
    client = request.app.state.oidc
    if client is None:
        return pages.problem(request, 404, "No single sign-on", "OpenID Connect is not configured for this dashboard.")
    try:
        # State, nonce and the PKCE verifier from the session; the ID token's signature (the
        # provider's published keys), issuer, audience and expiry checked.
        token = await client.authorize_access_token(request)
        claims = dict(token["userinfo"])
        if "email" not in claims:
            # Many providers put the address in the ID token only when asked to: the UserInfo
            # endpoint has it, and must name the same subject (OpenID Connect Core 5.3.2).
            more = await client.userinfo(token=token)
            if more.get("sub") != claims["sub"]:
                raise OAuthError(description="the UserInfo endpoint answered for another subject")
            claims = {**more, **claims}
    except (HTTPError, OAuthError, KeyError, ValueError) as err:
        log.info("OpenID Connect sign-in refused: %r", err)
        return pages.problem(request, 401, "Sign-in failed", f"The sign-in provider's answer was refused: {err}")
    settings: Settings = request.app.state.services.settings
    email = claims.get("email") if claims.get("email_verified") is True else None
    role = "admin" if email and email.lower() in settings.oidc_admin_emails else "marketer"
    back_to = request.session.get(NEXT, "/")
    sign_in(request, Viewer(name=email or f"oidc:{claims['sub']}", role=role, via="oidc"))
    log.info("dashboard: %s signed in with OpenID Connect (%s)", email or claims["sub"], role)
    return RedirectResponse(_local_path(back_to), status_code=303)


@router.post("/signout")
async def signout(request: Request) -> RedirectResponse:
    sign_out(request)
    return RedirectResponse("/signin", status_code=303)
