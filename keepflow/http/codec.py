"""Temporal's remote codec contract, so the Temporal UI and CLI show sealed payloads decoded.

    POST {prefix}/encode   {"payloads": [{"metadata": {...}, "data": "<base64>"}]}  -> the same, sealed
    POST {prefix}/decode   the same shape -> opened (payloads not sealed by Keepflow come back as they were)

The body is Temporal's `Payloads` message in protobuf's JSON form (base64 bytes), the
`X-Namespace` header names the namespace. Who may call is decided by the `authorize` dependency
the app passes in: opening payloads shows customer data. `codec_app` wraps the router with
Starlette's CORS middleware for the origins of a Temporal UI, whose browser calls it directly.

The CLI: `temporal workflow show --codec-endpoint URL --codec-auth "Bearer TOKEN"`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec


def bearer_token(tokens: Sequence[str]) -> Callable[[Request], None]:
    """A dependency letting through `Authorization: Bearer T` for any T in `tokens` (compared in
    constant time); nobody at all when `tokens` is empty."""
    expected = [t.encode() for t in tokens if t]

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and given and any(hmac.compare_digest(given.encode(), t) for t in expected)):
            raise HTTPException(401, "codec: send Authorization: Bearer <KEEPFLOW_CODEC_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})

    return authorize


def codec_router(codec: PayloadCodec, authorize: Callable[..., Any], *, namespace: str | None = None) -> APIRouter:
    """POST /encode and /decode with `codec`, behind `authorize`; `namespace`, when given, is the
    only one answered (a codec holds one namespace's keys)."""
    router = APIRouter(dependencies=[Depends(authorize)], tags=["codec"])

    async def payloads_of(request: Request) -> Payloads:
        if namespace and request.headers.get("x-namespace", namespace) != namespace:
            raise HTTPException(404, f"this codec holds the keys of namespace {namespace!r} only")
        try:
            return json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as err:
            raise HTTPException(400, f"expected {{\"payloads\": [...]}}: {err}") from None

    def answer(payloads: list) -> Response:
        return Response(json_format.MessageToJson(Payloads(payloads=payloads)), media_type="application/json")

    @router.post("/encode")
    async def encode(request: Request) -> Response:
        return answer(await codec.encode((await payloads_of(request)).payloads))

    @router.post("/decode")
    async def decode(request: Request) -> Response:
        try:
            return answer(await codec.decode((await payloads_of(request)).payloads))
        except ValueError as err:  # a key this process lacks, or a payload that fails authentication
            raise HTTPException(422, str(err)) from None

    return router


def codec_app(codec: PayloadCodec, authorize: Callable[..., Any], *, ui_origins: Sequence[str] = (),
              namespace: str | None = None) -> FastAPI:
    """The router as an app to mount (`admin.mount("/codec", codec_app(...))`) or serve alone, with
    CORS for the Temporal UI's origins: its browser sends X-Namespace and, with credentials on,
    cookies, so preflights must be answered for exactly those origins."""
    app = FastAPI(title="Keepflow codec", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(codec_router(codec, authorize, namespace=namespace))
    app.add_middleware(CORSMiddleware, allow_origins=list(ui_origins), allow_methods=["POST"],
                       allow_headers=["content-type", "x-namespace", "authorization"], allow_credentials=True)
    return app
