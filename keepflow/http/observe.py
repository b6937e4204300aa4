"""What the HTTP side tells Prometheus and tracing: event requests counted by their answer (each
the root span of its trace when tracing is on), and /metrics.

Counted by the answer's status in one middleware, so every refusal (a bad signature, a body that
does not parse, a busy database) is counted the same way whichever route or helper refused it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keepflow import metrics, tracing


class CountEvents:
    """Pure ASGI, not BaseHTTPMiddleware: a dictionary lookup and a counter per request, no task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = metrics.SOURCES.get(scope["path"]) if scope["type"] == "http" else None
        if source is None:
            await self.app(scope, receive, send)
            return
        status = 500  # unless an answer starts: an exception the app did not turn into one

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if tracing.on():
                headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
                with tracing.server_span(scope["method"], scope["path"], headers) as answered:
                    try:
                        await self.app(scope, receive, noting)
                    finally:
                        answered(status)
            else:
                await self.app(scope, receive, noting)
        finally:
            metrics.count_request(source, status)


def metrics_router() -> APIRouter:
    """GET /metrics: counts and timings only, no customer, event, message or address in any label
    (keepflow/metrics.py), so Prometheus scrapes it without signing in (docs/operations.md)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics")
    def scrape() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
