"""The dashboard's pages: server-rendered HTML, no scripts, nothing fetched from elsewhere.

    GET /                     sequences, their per-step funnels, what is waiting to go out, runs in flight
    GET /sequences/{id}       one sequence: its funnel, and its runs in flight per step (from Temporal)
    GET /messages             recent messages, 50 a page (?page=N&sequence=ID, and a cursor: before/after=ID)
    GET /messages/{id}        one message as the customer saw it, with its status and feedback
    GET /customers?q=...      one customer's timeline, by id or email address
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader
from temporalio.client import Client

from keepflow.http.dashboard import in_flight, queries
from keepflow.insights.report import format_money, parse_since
from keepflow.runtime.client import connect

router = APIRouter(include_in_schema=False)

_templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)
_templates.filters["money"] = format_money
_templates.filters["pct"] = lambda rate: "-" if rate is None else f"{rate:.1%}"
_templates.filters["when"] = lambda at: "-" if at is None else f"{at:%Y-%m-%d %H:%M}"

# The pages run no script of their own, so none may run at all: a message body shown in a
# sandboxed srcdoc frame inherits this policy too, a second lock on the same door.
_HEADERS = {
    "Content-Security-Policy": "script-src 'none'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(name: str, status: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status, headers=_HEADERS)


def _temporal(request: Request):
    """How the pages reach Temporal: the app's client, connected on first use (as routing does)."""
    services = request.app.state.services

    async def client() -> Client:
        if services.client is None:
            services.client = await connect(services.settings)
        return services.client

    return client


def _period(since: str) -> datetime | HTMLResponse:
    try:
        return parse_since(since)
    except ValueError:
        return _page("problem.html", 400, title="Unknown period",
                     text=f"'{since}' is not a period: use a length such as 30d or 12w, or a date such as 2024-03-01.")


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, since: str = "30d") -> HTMLResponse:
    services = request.app.state.services
    start = _period(since)
    if isinstance(start, HTMLResponse):
        return start
    # The SQL (in a thread) and Temporal's counts (on this loop) at the same time.
    (report, sequences), runs = await asyncio.gather(
        asyncio.to_thread(queries.overview, services.db, services.catalog, start),
        in_flight.count_waiting(_temporal(request), services.catalog.file.sequences),
    )
    return _page("overview.html", report=report, sequences=sequences, since=since, in_flight=runs)


@router.get("/sequences/{sequence_id}", response_class=HTMLResponse)
async def sequence(request: Request, sequence_id: str, since: str = "30d") -> HTMLResponse:
    services = request.app.state.services
    known = services.catalog.file.by_id().get(sequence_id)
    if known is None:
        return _page("problem.html", 404, title="No such sequence",
                     text=f"There is no sequence '{sequence_id}' in the current sequences file.")
    start = _period(since)
    if isinstance(start, HTMLResponse):
        return start
    found, runs = await asyncio.gather(
        asyncio.to_thread(queries.sequence_page, services.db, known, start),
        in_flight.count_waiting(_temporal(request), [known]),
    )
    report, view = found
    return _page("sequence.html", report=report, s=view, since=since, in_flight=runs)


@router.get("/messages", response_class=HTMLResponse)
async def messages(request: Request, page: int = Query(1, ge=1), sequence: str | None = None,
                   before: int | None = None, after: int | None = None) -> HTMLResponse:
    services = request.app.state.services
    sequence = sequence or None
    result = await asyncio.to_thread(queries.message_page, services.db, page, sequence, before, after)
    return _page("messages.html", result=result, sequence=sequence, sequences=list(services.catalog.sequences))


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message(request: Request, message_id: int) -> HTMLResponse:
    detail = await asyncio.to_thread(queries.message_detail, request.app.state.services.db, message_id)
    if detail is None:
        return _page("problem.html", 404, title="No such message", text=f"There is no message number {message_id}.")
    return _page("message.html", detail=detail, m=detail.message)


@router.get("/customers", response_class=HTMLResponse)
async def customers(request: Request, q: str = "") -> HTMLResponse:
    db = request.app.state.services.db
    customer = await asyncio.to_thread(queries.find_customer, db, q)
    if customer is None:
        return _page("customer.html", 404 if q.strip() else 200, q=q, timeline=None)
    timeline = await asyncio.to_thread(queries.customer_timeline, db, customer)
    return _page("customer.html", q=q, timeline=timeline)
