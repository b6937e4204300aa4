"""What every endpoint shares: the services made once in the app's lifespan, and reading a body safely."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from temporalio.client import Client

from keepflow.language.catalog import Catalog
from keepflow.runtime import deployments
from keepflow.runtime.deployments import LiveCatalog
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


def live_catalog(settings: Settings, db: Database, given: Catalog | None, origin: str) -> LiveCatalog:
    """The catalog given, or the live deployed version (the file, deployed, when there is none)."""
    if given is not None:
        return LiveCatalog(given)
    return deployments.load_live(db, settings.sequences_path, settings.templates_dir, origin)


def follow_deployments(services: Services, live: LiveCatalog) -> asyncio.Task[None]:
    """Serve each newly deployed version from the next request on (cancel the task to stop)."""
    async def switch(catalog: Catalog) -> None:
        services.catalog = catalog

    settings = services.settings
    return asyncio.create_task(deployments.follow(services.db, live, settings.sequences_path,
                                                  settings.templates_dir, switched=switch))


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
