"""What every endpoint shares: the services made once in the app's lifespan, and reading a body safely."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from temporalio.client import Client

from keepflow.language.catalog import Catalog
from keepflow.settings import Settings
from keepflow.store import Database, upgrade
from keepflow.store.db import LOCK_TIMEOUT


@dataclass
class Services:
    """What the endpoints share, made once in the app's lifespan."""

    settings: Settings
    catalog: Catalog
    db: Database
    client: Client | None
    # The public app's (keepflow/http/app.py); the admin app takes no webhooks.
    webhook_secrets: list[str] = field(default_factory=list)


def open_db(settings: Settings, lock_timeout: timedelta = LOCK_TIMEOUT) -> Database:
    """The store at the newest schema, for an app not handed one."""
    upgrade(settings.resolved_database_url)
    return Database(settings.resolved_database_url, lock_timeout)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def unprocessable(err: Exception) -> RequestValidationError:
    if isinstance(err, ValidationError):
        return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)])
    return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(err), "input": None}])
