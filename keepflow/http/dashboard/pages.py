"""Rendering the dashboard's pages: one Jinja environment per way of seeing customers.

A marketer's pages come from an environment whose `finalize` masks every value it prints
(keepflow/http/dashboard/masking.py); an admin's from one that prints them whole. Anyone not signed
in (a refused form) gets the masked one.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context
from jinja2.runtime import Context
from markupsafe import escape

from keepflow.http.dashboard import masking
from keepflow.http.dashboard.sessions import CSRF_FIELD, Viewer, csrf_token
from keepflow.insights.report import format_money
from keepflow.store import utc

# Sent with every answer of the admin app (keepflow/http/admin.py). The pages run no script, load
# nothing from elsewhere, and may not be framed. An email shown in its preview frame (a sandboxed
# srcdoc, which inherits this policy) may not load its remote images either: they are tracking
# pixels, and an admin's look would count as the customer opening it.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Pages show customers' data: no copy in the browser's or a proxy's cache.
    "Cache-Control": "no-store",
}


def _environment(masked: bool) -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                      finalize=masking.finalize if masked else None)
    env.filters["money"] = format_money
    env.filters["pct"] = lambda rate: "-" if rate is None else f"{rate:.1%}"
    env.filters["when"] = _when
    # A field that is a contact point and nothing else: hidden from a marketer even when malformed.
    env.filters["contact"] = masking.mask_contact if masked else (lambda value: value)
    return env


@pass_context
def _when(context: Context, at: datetime | None) -> str:
    """A stored (UTC) time in the shop's time zone (`rules.timezone`), which the page names."""
    if at is None:
        return "-"
    return f"{utc(at).astimezone(ZoneInfo(context.get('zone') or 'UTC')):%Y-%m-%d %H:%M}"


_MASKED, _WHOLE = _environment(masked=True), _environment(masked=False)


def render(request: Request, name: str, status: int = 200, *, masked: bool | None = None, **context: Any) -> HTMLResponse:
    """Page `name` for whoever `request` comes from, with their CSRF token for its forms. Masked
    unless the viewer is an admin; `masked=False` only for a page that shows no customer's data
    (the sign-in page, which gives back the address it was asked for as it was typed)."""
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    if masked is None:
        masked = viewer is None or viewer.masked
    env = _MASKED if masked else _WHOLE
    # The viewer's own name is no customer's data: escaped here, so the masking leaves it alone.
    services = getattr(request.app.state, "services", None)
    zone = (services.catalog.file.rules.timezone if services is not None else None) or "UTC"
    html = env.get_template(name).render(viewer=viewer, viewer_name=escape(viewer.name) if viewer else None,
                                         csrf_field=CSRF_FIELD, csrf_token=csrf_token(request), zone=zone, **context)
    return HTMLResponse(html, status_code=status)


def problem(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    return render(request, "problem.html", status, title=title, text=text)
