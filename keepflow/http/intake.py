"""One accepted event: stored, then routed with a bounded wait, so a sender is never kept waiting.

Shopify gives up on a webhook after 5 s and counts a failure. Once the event is stored it is
safe (routing that stops part way leaves it for the reconciler), so the answer waits at most
ROUTE_WAIT for routing, and less when storing took long (it may wait up to the lock timeout for
another writer): never past ANSWER_WITHIN in all. Routing that takes longer (Temporal
restarting, a store write waiting on a lock) goes on in the background and the answer says so.
A routing that fails within the wait is a 503 naming what failed, so the sender's retry gives
it one more chance besides the reconciler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from temporalio.client import Client
from temporalio.service import RPCError

from keepflow import logs, tracing
from keepflow.http.services import Services
from keepflow.runtime import routing
from keepflow.runtime.client import why_unreachable
from keepflow.runtime.events import EventIn

log = logging.getLogger("keepflow.http")

# How long an answer waits for routing once the event is stored.
ROUTE_WAIT = 2.0
# How long after intake starts the answer leaves, whatever storing and routing waited for: under
# Shopify's 5 s, with room for reading the body and the network.
ANSWER_WITHIN = 4.0
# How long routing in the background may take before it gives up and leaves the event to the reconciler.
ROUTE_TIMEOUT = 60.0
# What a 503 asks the sender to wait before retrying.
RETRY_AFTER = "30"


class Accepted(BaseModel):
    id: str
    duplicate: bool
    started: list[str]
    signalled: list[str]
    # "in progress": stored, and routing goes on after this answer (it will finish, or the
    # reconciler will); the runs it starts are not listed then.
    routing: Literal["done", "in progress"]


class Routings:
    """The routings this process has running: they outlive the answer, and the reconciler leaves
    their events alone."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[routing.Routed]] = {}
        self._admitting: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def admitting(self, event_id: str) -> AsyncIterator[None]:
        """Copies of one event stored and started one at a time: the copy that stores the event has
        started its routing before another copy looks, so that one is the answer that lists it."""
        lock, users = self._admitting.get(event_id, (asyncio.Lock(), 0))
        self._admitting[event_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._admitting[event_id]
            if users == 1:
                del self._admitting[event_id]
            else:
                self._admitting[event_id] = (lock, users - 1)

    def start(self, event_id: str, work: Callable[[], Awaitable[routing.Routed]]) -> tuple[asyncio.Task[routing.Routed], bool]:
        """The routing of `event_id`, and whether this call started it (not a copy's)."""
        running = self._tasks.get(event_id)
        if running is not None:
            return running, False  # the sender retried while the first routing still runs
        task = asyncio.ensure_future(asyncio.wait_for(work(), ROUTE_TIMEOUT))
        self._tasks[event_id] = task
        task.add_done_callback(lambda done: self._finished(event_id, done))
        return task, True

    def _finished(self, event_id: str, task: asyncio.Task[routing.Routed]) -> None:
        self._tasks.pop(event_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("event %s stored, not yet routed: %s", event_id, describe(task.exception()))

    @property
    def busy(self) -> set[str]:
        return set(self._tasks)

    async def close(self, grace: float = 5.0) -> None:
        """Let running routings finish for a moment; the reconciler routes what they leave."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task


async def ingest(services: Services, routings: Routings, event: EventIn, delivery: tuple[str, str],
                 connect: Callable[[], Awaitable[Client]]) -> JSONResponse:
    # Routing runs in a task started inside: it inherits both, and its spans and lines are the event's.
    with logs.about(event_id=event.id), tracing.span("keepflow.intake", {
            "keepflow.event.id": event.id, "keepflow.event.type": event.type, "keepflow.event.source": delivery[0]}):
        answer = await _ingest(services, routings, event, delivery, connect)
        tracing.note(**{"http.response.status_code": answer.status_code})
        return answer


async def _ingest(services: Services, routings: Routings, event: EventIn, delivery: tuple[str, str],
                  connect: Callable[[], Awaitable[Client]]) -> JSONResponse:
    began = time.monotonic()
    # One catalog for both: the runs `accept` claims are the ones routing starts, even across a deploy.
    catalog = services.catalog
    async with routings.admitting(event.id):
        stored = await asyncio.to_thread(routing.accept, services.db, catalog, event, delivery)
        new = stored.new
        if new is False:
            return _answer(routing.Routed(event.id, duplicate=True), "done", 200)

        async def route() -> routing.Routed:
            if services.client is None:
                services.client = await connect()
            return await routing.route_stored(services.client, catalog, services.db, event,
                                              services.settings.task_queue, duplicate=new is None, stored=stored)

        task, first = routings.start(event.id, route)
    wait = min(ROUTE_WAIT, ANSWER_WITHIN - (time.monotonic() - began))
    done, _ = await asyncio.wait({task}, timeout=max(wait, 0.0))
    if not done:
        log.info("event %s stored; routing continues after the answer", event.id)
        return _answer(routing.Routed(event.id, duplicate=new is not True), "in progress", 202)
    error = task.exception()
    if error is not None:
        return JSONResponse({"detail": f"stored, not yet routed: {describe(error)}; routing will follow"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER})
    if new is not True and not first:
        # A copy that came while the first was being routed: what it did is the first's answer.
        return _answer(routing.Routed(event.id, duplicate=True), "done", 200)
    # The request that stored the event is the one that is no duplicate, even when a copy that
    # came at the same moment found it stored first and started its routing.
    routed = dataclasses.replace(task.result(), duplicate=new is not True)
    return _answer(routed, "done", 200 if routed.duplicate else 202)


def describe(error: BaseException | None) -> str:
    """What really failed, in words an integrator can act on."""
    if isinstance(error, OperationalError):
        return "the database is busy or unreachable"
    if isinstance(error, (RPCError, RuntimeError, ConnectionError, OSError, asyncio.TimeoutError)):
        return f"Temporal is unreachable ({why_unreachable(error)})"
    return f"routing failed ({type(error).__name__}: {error})"


def _answer(routed: routing.Routed, state: Literal["done", "in progress"], status: int) -> JSONResponse:
    body = Accepted(id=routed.event_id, duplicate=routed.duplicate, started=routed.started,
                    signalled=routed.signalled, routing=state)
    return JSONResponse(body.model_dump(), status_code=status)
