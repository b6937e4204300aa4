"""The HTTP side: signed events in, runs started and steered.

    POST /events             Keepflow's own event JSON, signed the Standard Webhooks way
    POST /webhooks/shopify   Shopify's webhooks, verified with X-Shopify-Hmac-Sha256
    POST /webhooks/sendgrid  SendGrid's event webhook (delivered, open, bounce, spam, ...), ECDSA-signed
    POST /webhooks/twilio/inbound   texts to our number: STOP/START/HELP (X-Twilio-Signature)
    POST /webhooks/twilio/status    Twilio delivery status callbacks (X-Twilio-Signature)
    POST /webhooks/line      LINE follows and unfollows (blocks) of the shop's account (X-Line-Signature)
    GET|POST /unsubscribe/{token}   one-click unsubscribe (RFC 8058); GET only shows the page
    GET  /healthz            200 when the database and Temporal answer, else 503

Nothing else: this is the app customers, stores and providers reach. The dashboard and these
endpoints' documentation are in the admin app (keepflow/http/admin.py), on a listener of its own.

Every accepted event is stored before it is routed, and the answer comes after it is stored and
within ROUTE_WAIT more for routing, never later than ANSWER_WITHIN in all (keepflow/http/intake.py):
slower routing goes on after the answer. If routing fails (Temporal cannot be reached) the answer
is 503 (the sender retries) and the event stays stored; the reconciler in this process routes it
as soon as Temporal is back. A database that is locked past its timeout or down is a 503 with
nothing written. Routing is idempotent, so the retry and the reconciler cannot route it twice in
effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from temporalio.client import Client

from keepflow import metrics, tracing
from keepflow.http import sendgrid as sendgrid_webhook
from keepflow.http import intake, shopify, signing
from keepflow.http import line as line_webhook
from keepflow.http import twilio as twilio_webhook
from keepflow.http import unsubscribe_pages as unsubscribe_link
from keepflow.http.observe import CountEvents
from keepflow.http.services import Services, follow_deployments, live_catalog, open_db, read_body, unprocessable
from keepflow.language.catalog import Catalog
from keepflow.runtime import routing
from keepflow.runtime.client import connect, why_unreachable
from keepflow.runtime.events import EventIn
from keepflow.settings import Settings, get_settings
from keepflow.store import Database

log = logging.getLogger("keepflow.http")

RECONCILE_EVERY = 5.0
# How long connecting to Temporal may take before a routing or the reconciler gives up for now.
CONNECT_TIMEOUT = 10.0
# A store write waits this long for another writer's lock, then answers 503: Shopify gives up
# after 5 s, and a sender told to retry loses nothing.
INTAKE_LOCK_WAIT = timedelta(seconds=3)
# What a locked or unreachable database answers: nothing was written, the sender's retry will do.
DATABASE_RETRY_AFTER = "5"


class Ignored(BaseModel):
    ignored: str


def app_from_environment() -> FastAPI:
    """The public app from the environment's settings: what each process of `keepflow serve
    --workers N` serves. Each process exports its own spans when OTEL_* asks for them."""
    tracing.setup("keepflow-serve")
    return create_app(get_settings())


def create_app(settings: Settings, *, catalog: Catalog | None = None, db: Database | None = None,
               client: Client | None = None, webhook_secrets: list[str] | None = None,
               reconcile_every: float = RECONCILE_EVERY) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        store = db or open_db(settings, INTAKE_LOCK_WAIT)
        # An invalid sequences file stops the server here, with every problem listed.
        live = live_catalog(settings, store, catalog, "first start of keepflow serve")
        services = Services(
            settings=settings,
            catalog=live.catalog,
            db=store,
            client=client,
            webhook_secrets=webhook_secrets if webhook_secrets is not None else settings.webhook_secrets,
        )
        if not services.webhook_secrets:
            raise RuntimeError("set KEEPFLOW_WEBHOOK_SECRET (whsec_...) to accept signed events")
        app.state.services = services
        app.state.routings = routings = intake.Routings()
        background = [asyncio.create_task(_reconcile_forever(services, routings, reconcile_every))]
        if catalog is None:  # given one (tests, benchmarks), the app serves it as it is
            background.append(follow_deployments(services, live))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await routings.close()
            if own_db:
                services.db.dispose()

    # No /docs, /redoc or /openapi.json here: the admin app shows this app's schema to people signed in.
    app = FastAPI(title="Keepflow", summary="Events in: start and steer customer sequences.", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/events", status_code=202, response_model=intake.Accepted,
              responses={200: {"description": "already received"}, 401: {}, 413: {}, 422: {}, 503: {}})
    async def post_event(request: Request) -> JSONResponse:
        """Keepflow's own event JSON, signed with `webhook-id`, `webhook-timestamp`, `webhook-signature`."""
        services: Services = request.app.state.services
        body = await read_body(request, services.settings.max_body_bytes)
        if not signing.verify(body, request.headers, services.webhook_secrets):
            raise HTTPException(401, "bad or missing signature, or a timestamp more than 5 minutes off")
        event = _parse(EventIn, body)
        return await _ingest(request, event, ("standard", request.headers["webhook-id"]))

    @app.post("/webhooks/shopify", status_code=202, response_model=intake.Accepted | Ignored,
              responses={200: {"description": "already received, or a topic Keepflow does not use"}, 401: {}, 413: {}, 422: {}, 503: {}})
    async def post_shopify(request: Request) -> JSONResponse:
        """Shopify's webhooks (orders, fulfillments, fulfillment events, refunds, customers)."""
        services: Services = request.app.state.services
        body = await read_body(request, services.settings.max_body_bytes)
        if not shopify.verify_hmac(body, request.headers.get("x-shopify-hmac-sha256"), services.settings.shopify_secrets):
            raise HTTPException(401, "bad or missing X-Shopify-Hmac-Sha256")
        try:
            delivery = shopify.delivery_from_headers(request.headers)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        if delivery.triggered_at and datetime.now(timezone.utc) - delivery.triggered_at > services.settings.shopify_max_age:
            raise HTTPException(401, f"delivery triggered at {delivery.triggered_at.isoformat()} is too old to accept")
        try:
            payload = json.loads(body)
            event = shopify.to_event(delivery, payload)
        except (shopify.UnsupportedTopic, shopify.NotRelevant) as reason:
            return JSONResponse({"ignored": str(reason) or delivery.topic}, status_code=200)
        except (ValueError, ValidationError) as err:
            raise unprocessable(err) from err
        return await _ingest(request, event, ("shopify", delivery.webhook_id))

    @app.exception_handler(OperationalError)
    async def database_busy(request: Request, err: OperationalError) -> JSONResponse:
        # A write that waited past the lock timeout, or a database that is down: rolled back, so
        # nothing is half-written, and the sender's retry will find it free.
        log.warning("%s %s: database busy or unreachable: %s", request.method, request.url.path, err.orig)
        return JSONResponse({"detail": "the database is busy or unreachable; nothing was recorded, retry later"},
                            status_code=503, headers={"Retry-After": DATABASE_RETRY_AFTER})

    app.add_middleware(CountEvents)
    app.include_router(sendgrid_webhook.router)
    app.include_router(unsubscribe_link.router)
    app.include_router(twilio_webhook.router)
    app.include_router(line_webhook.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        checks = {"database": await asyncio.to_thread(_db_ok, services.db), "temporal": await _temporal_ok(services)}
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if healthy else 503)

    return app


def _parse(model: type[EventIn], body: bytes) -> EventIn:
    try:
        # JSON is UTF-8 (RFC 8259). Decoded here, the answer names the bad byte; left to the
        # validator, its error would carry the undecodable input into the 422 and fail to render.
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise unprocessable(ValueError(f"the body is not UTF-8: byte {body[err.start]:#04x} at position {err.start}")) from None
    try:
        event = model.model_validate_json(text)
    except ValidationError as err:
        raise unprocessable(err) from err
    if _holds_nul(event.model_dump()):
        # Valid JSON, but PostgreSQL's text cannot hold U+0000: refused here, not a 500 at the store.
        raise unprocessable(ValueError("a string in the body holds U+0000 (NUL), which cannot be stored"))
    return event


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(v) for v in value)
    return False


async def _ingest(request: Request, event: EventIn, delivery: tuple[str, str]) -> JSONResponse:
    services: Services = request.app.state.services
    return await intake.ingest(services, request.app.state.routings, event, delivery,
                               lambda: asyncio.wait_for(_connect(services.settings), CONNECT_TIMEOUT))


async def _connect(settings: Settings) -> Client:
    return await connect(settings)


def _db_ok(db: Database) -> str:
    try:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as err:
        return f"unreachable: {type(err).__name__}"


async def _temporal_ok(services: Services) -> str:
    try:
        if services.client is None:
            services.client = await asyncio.wait_for(_connect(services.settings), 3)
        await asyncio.wait_for(services.client.service_client.check_health(), 3)
        return "ok"
    except Exception as err:  # say why: a bare class name leaves an operator setting up TLS guessing
        return f"unreachable: {why_unreachable(err)}"


async def _reconcile_forever(services: Services, routings: intake.Routings, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            metrics.unrouted(*await asyncio.to_thread(routing.backlog, services.db))
            if services.client is None:
                services.client = await asyncio.wait_for(_connect(services.settings), CONNECT_TIMEOUT)
            routed = await routing.reconcile(services.db, services.client, services.catalog,
                                             services.settings.task_queue, busy=routings.busy)
            if routed:
                log.info("reconciler routed %d stored event(s)", routed)
        except Exception as err:  # Temporal still away: try again next round
            log.warning("reconciler: %s", err)
