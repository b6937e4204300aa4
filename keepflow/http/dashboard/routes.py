"""The dashboard's pages: server-rendered HTML, no scripts, nothing fetched from elsewhere; served
by the admin app (keepflow/http/admin.py) to people signed in (keepflow/http/dashboard/signin.py).

    GET /                     sequences, their per-step funnels, what is waiting to go out, runs in flight
    GET /sequences/{id}       one sequence: its funnel, and its runs in flight per step (Temporal and the store)
    GET /messages             recent messages, 50 a page (?page=N&sequence=ID, and a cursor: before/after=ID)
    GET /messages/unknown     messages of unknown outcome, each waiting for a decision, and how to settle them
    GET /messages/{id}        one message as the customer saw it, with its status and feedback
    GET /customers?q=...      one customer's timeline, by id or email address

A marketer sees customers' email addresses and phone numbers masked, an admin whole
(keepflow/http/dashboard/pages.py); each page that shows an admin one customer's data, or a page of
the message list, is first written to the audit table (`keepflow audit`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from temporalio.client import Client

from keepflow.http.dashboard import in_flight, queries
from keepflow.http.dashboard.pages import problem, render
from keepflow.http.dashboard.sessions import Viewer, check_csrf, viewer
from keepflow.insights.report import parse_since
from keepflow.runtime.client import connect
from keepflow.sending import unknown_outcomes
from keepflow.store import access
from keepflow.store.access import Viewed

# Every page needs someone signed in; any form that posts must carry the session's CSRF token.
router = APIRouter(include_in_schema=False, dependencies=[Depends(viewer), Depends(check_csrf)])


async def _audit(request: Request, who: Viewer, viewed: Viewed) -> None:
    """An admin sees customers' data whole: record what, before it is shown (no record, no page)."""
    if not who.masked:
        await asyncio.to_thread(access.record_view, request.app.state.services.db, who.name, who.role, viewed)


def _temporal(request: Request):
    """How the pages reach Temporal: the app's client, connected on first use (as routing does)."""
    services = request.app.state.services

    async def client() -> Client:
        if services.client is None:
            services.client = await connect(services.settings)
        return services.client

    return client


def _period(request: Request, since: str) -> datetime | HTMLResponse:
    try:
        return parse_since(since)
    except ValueError:
        return problem(request, 400, "Unknown period",
                       f"'{since}' is not a period: use a length such as 30d or 12w, or a date such as 2024-03-01.")


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, since: str = "30d") -> HTMLResponse:
    services = request.app.state.services
    start = _period(request, since)
    if isinstance(start, HTMLResponse):
        return start
    # The SQL (in a thread) and Temporal's counts (on this loop) at the same time.
    (report, sequences), runs = await asyncio.gather(
        asyncio.to_thread(queries.overview, services.db, services.catalog, start),
        in_flight.count_waiting(_temporal(request), services.db, services.catalog, services.catalog.file.sequences,
                                since=start),
    )
    queries.with_open_runs(sequences, runs)
    return render(request, "overview.html", report=report, sequences=sequences, since=since, in_flight=runs)


@router.get("/sequences/{sequence_id}", response_class=HTMLResponse)
async def sequence(request: Request, sequence_id: str, since: str = "30d") -> HTMLResponse:
    services = request.app.state.services
    known = services.catalog.file.by_id().get(sequence_id)
    if known is None:
        return problem(request, 404, "No such sequence", f"There is no sequence '{sequence_id}' in the current sequences file.")
    start = _period(request, since)
    if isinstance(start, HTMLResponse):
        return start
    found, versions, runs = await asyncio.gather(
        asyncio.to_thread(queries.sequence_page, services.db, known, start),
        asyncio.to_thread(queries.sequence_versions, services.db, sequence_id, start),
        in_flight.count_waiting(_temporal(request), services.db, services.catalog, [known], since=start),
    )
    report, view = found
    queries.with_open_runs([view], runs)
    return render(request, "sequence.html", report=report, s=view, since=since, in_flight=runs, versions=versions)


@router.get("/messages", response_class=HTMLResponse)
async def messages(request: Request, who: Viewer = Depends(viewer), page: int = Query(1, ge=1),
                   sequence: str | None = None, before: int | None = None, after: int | None = None) -> HTMLResponse:
    services = request.app.state.services
    sequence = sequence or None
    result = await asyncio.to_thread(queries.message_page, services.db, page, sequence, before, after)
    if result.rows:
        ids = f"messages {result.rows[-1].id}-{result.rows[0].id}"
        await _audit(request, who, Viewed("messages", detail=f"{ids}, sequence {sequence}" if sequence else ids))
    return render(request, "messages.html", result=result, sequence=sequence, sequences=list(services.catalog.sequences))


# Before /messages/{message_id}, which would take "unknown" for a number and refuse it.
@router.get("/messages/unknown", response_class=HTMLResponse)
async def unknown(request: Request, who: Viewer = Depends(viewer)) -> HTMLResponse:
    rows = await asyncio.to_thread(unknown_outcomes.listing, request.app.state.services.db)
    if rows:
        ids = ", ".join(str(m.id) for m in rows)
        await _audit(request, who, Viewed("messages", detail=f"unknown outcome: {ids}"))
    return render(request, "unknown.html", rows=rows, look_first=unknown_outcomes.LOOK_FIRST,
                  steps=unknown_outcomes.RESOLVE_STEPS, by_itself=unknown_outcomes.BY_ITSELF,
                  list_command=unknown_outcomes.LIST_COMMAND)


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message(request: Request, message_id: int, who: Viewer = Depends(viewer)) -> HTMLResponse:
    detail = await asyncio.to_thread(queries.message_detail, request.app.state.services.db, message_id)
    if detail is None:
        return problem(request, 404, "No such message", f"There is no message number {message_id}.")
    await _audit(request, who, Viewed("message", customer_id=detail.message.customer_id, message_id=message_id))
    return render(request, "message.html", detail=detail, m=detail.message)


@router.get("/customers", response_class=HTMLResponse)
async def customers(request: Request, who: Viewer = Depends(viewer), q: str = "") -> HTMLResponse:
    db = request.app.state.services.db
    customer = await asyncio.to_thread(queries.find_customer, db, q)
    if customer is None:
        return render(request, "customer.html", 404 if q.strip() else 200, q=q, timeline=None)
    timeline = await asyncio.to_thread(queries.customer_timeline, db, customer)
    await _audit(request, who, Viewed("customer", customer_id=customer.id, detail=f"searched for {q.strip()!r}"))
    return render(request, "customer.html", q=q, timeline=timeline)
