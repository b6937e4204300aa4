"""The admin app: what only the shop's own people reach, on a listener of its own.

    GET  /                    the dashboard (keepflow/http/dashboard/routes.py), signed in
    GET  /docs                the public endpoints' API, from the public app's OpenAPI schema
    GET  /openapi.json        that schema, for tools (Prism, code generators)
    GET  /metrics             Prometheus' scrape of this process (keepflow/metrics.py), no sign-in
    /signin, /signout         keepflow/http/dashboard/signin.py

`keepflow dashboard` serves it on KEEPFLOW_ADMIN_HOST:KEEPFLOW_ADMIN_PORT (127.0.0.1:8001): bind it
to loopback, or put it behind the company's proxy, and never on the address customers reach.
Every answer carries the dashboard's security headers (keepflow/http/dashboard/pages.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.middleware.sessions import SessionMiddleware
from temporalio.client import Client

from keepflow.http.app import create_app
from keepflow.http.dashboard import pages, signin
from keepflow.http.dashboard.routes import router as dashboard_router
from keepflow.http.codec import bearer_token, codec_app
from keepflow.http.observe import metrics_router
from keepflow.http.dashboard.sessions import ROLE, USER, CsrfRefused, SignInRequired, viewer
from keepflow.http.services import Services, follow_deployments, live_catalog, open_db
from keepflow.language.catalog import Catalog
from keepflow.runtime.client import payload_keys
from keepflow.runtime.codec import Chain, EncryptionCodec
from keepflow.runtime.payload_parts import PartsCodec
from keepflow.settings import Settings
from keepflow.store import Database

SESSION_COOKIE = "keepflow_admin"
# A session ends this long after sign-in, whatever happens in between.
SESSION_HOURS = 8


def create_admin_app(settings: Settings, *, catalog: Catalog | None = None, db: Database | None = None,
                     client: Client | None = None, session_secret: str | None = None) -> FastAPI:
    secret = session_secret or (settings.session_secret.get_secret_value() if settings.session_secret else None)
    if not secret:
        raise RuntimeError("set KEEPFLOW_SESSION_SECRET (a long random string) to sign the dashboard's sessions")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        store = db or open_db(settings)
        live = live_catalog(settings, store, catalog, "first start of keepflow admin")
        app.state.services = services = Services(settings=settings, catalog=live.catalog, db=store, client=client)
        # Given a catalog (tests), the dashboard shows that one as it is.
        follower = follow_deployments(services, live) if catalog is None else None
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if own_db:
                app.state.services.db.dispose()

    app = FastAPI(title="Keepflow admin", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.oidc = signin.oidc_client(settings)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in pages.HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # Outermost, so the security headers' middleware and every route see the session.
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_HOURS * 3600, same_site="lax",
                       https_only=settings.resolved_admin_url.startswith("https://"))

    @app.exception_handler(SignInRequired)
    async def to_signin(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(CsrfRefused)
    async def refuse_form(request: Request, exc: CsrfRefused) -> Response:
        return pages.problem(request, 403, "Form refused", "This form has expired or did not come from this "
                                                           "dashboard: reload the page and try again.")

    # Before the dashboard's routes, none of which needs a session: Prometheus does not sign in.
    app.include_router(metrics_router())
    app.include_router(signin.router)
    app.include_router(dashboard_router)
    app.include_router(_api_docs(settings))
    if settings.payload_keys:
        # Temporal's remote codec contract at /codec/encode and /codec/decode, for the web UI (its
        # browser carries a signed-in admin's session cookie when its codec setting includes
        # credentials) and the CLI (`--codec-auth "Bearer $KEEPFLOW_CODEC_TOKEN"`). A marketer may
        # not: decoded payloads hold customers' data whole.
        app.mount("/codec", codec_app(Chain(PartsCodec(settings.resolved_database_url), EncryptionCodec(payload_keys(settings))), _admin_or_token(settings),
                                      ui_origins=settings.codec_ui_origins))
    return app


def _admin_or_token(settings: Settings) -> Callable[[Request], None]:
    by_token = bearer_token([settings.codec_token.get_secret_value()] if settings.codec_token else [])

    def authorize(request: Request) -> None:
        if "session" in request.scope and request.session.get(ROLE) == "admin" and request.session.get(USER):
            return
        by_token(request)

    return authorize


def _api_docs(settings: Settings) -> APIRouter:
    """The public app's schema, built once from its routes (no lifespan runs for it)."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(viewer)])
    schema: dict[str, Any] = create_app(settings).openapi()
    schema["servers"] = [{"url": settings.public_url or f"http://{settings.http_host}:{settings.http_port}"}]

    @router.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(schema)

    @router.get("/docs", response_class=HTMLResponse)
    async def docs(request: Request) -> HTMLResponse:
        # Drawn on the server like every other page: no Swagger UI from a CDN running on the
        # origin that holds the session.
        operations = [(method.upper(), path, op) for path, item in schema["paths"].items() for method, op in item.items()]
        components = {name: json.dumps(body, indent=2, ensure_ascii=False)
                      for name, body in schema.get("components", {}).get("schemas", {}).items()}
        return pages.render(request, "docs.html", schema=schema, operations=operations, components=components)

    return router
