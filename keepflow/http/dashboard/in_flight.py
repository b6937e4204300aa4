"""Runs in flight per step, counted by Temporal: one `count_workflows` per step, all at once.

Each run sets the `KeepflowStep` search attribute (keepflow/runtime/search_attributes.py) when it settles
into a wait: a `wait`, a `wait_for`, or a send held by quiet hours or the frequency cap. So the
steps a run can be found at are those three kinds, and Temporal's visibility store counts the open
runs at each without the dashboard looking at a single run. Where Temporal cannot count (the
time-skipping test server has no visibility store, an older server, Temporal down or slow), the
page says why instead of showing numbers: it never fails because of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import assert_never

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from keepflow.language.dsl import (
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    Sequence,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
)
from keepflow.runtime.search_attributes import STEP, waiting_at

log = logging.getLogger("keepflow.http.dashboard")

# The whole count (connecting included) may take this long before the page gives up on it.
TIMEOUT = 2.0


@dataclass
class InFlight:
    """Open runs waiting per (sequence, step path); `note` instead when they could not be counted."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    note: str | None = None
    # Open runs per sequence started since the page's period began (whatever step they are at).
    started_since: dict[str, int] = field(default_factory=dict)

    def at(self, sequence_id: str, path: str) -> int | None:
        return None if self.note else self.counts.get((sequence_id, path), 0)

    def total(self, sequence_id: str) -> int | None:
        return None if self.note else sum(n for (sid, _), n in self.counts.items() if sid == sequence_id)

    def open_since(self, sequence_id: str) -> int | None:
        return None if self.note or sequence_id not in self.started_since else self.started_since[sequence_id]


def settles(step: Step) -> bool:
    """Whether a run can be found waiting at `step` (the workflow sets KeepflowStep there)."""
    match step:
        case SendStep() | WaitStep() | WaitForStep():
            return True
        case IfStep() | SplitStep() | DoStep() | StartStep() | ExitStep():
            return False
        case _:
            assert_never(step)


def settling_steps(sequence: Sequence) -> list[str]:
    """Paths of the steps a run of `sequence` can be waiting at."""
    return [path for path, step in sequence.walk() if settles(step)]


def open_since(sequence_id: str, since: datetime) -> str:
    """The visibility query for the open runs of `sequence_id` started at or after `since`. A run
    continued as new counts from its continuation's start (the callers clamp to what the store
    says entered)."""
    return (f'WorkflowType="sequence" AND ExecutionStatus="Running" AND WorkflowId STARTS_WITH "{sequence_id}/" '
            f'AND StartTime >= "{since.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"')


async def count_waiting(client: Callable[[], Awaitable[Client]], sequences: Iterable[Sequence],
                        timeout: float = TIMEOUT, since: datetime | None = None) -> InFlight:
    """Count the open runs at every settling step of `sequences`, concurrently, within `timeout`;
    with `since`, also each sequence's open runs started since then."""
    sequences = list(sequences)
    targets = [(s.id, path) for s in sequences for path in settling_steps(s)]
    queries = [waiting_at(sid, path) for sid, path in targets]
    if since is not None:
        queries += [open_since(s.id, since) for s in sequences]
    if not queries:
        return InFlight()

    async def count_all() -> list[int]:
        temporal = await client()
        rpc_timeout = timedelta(seconds=timeout)
        answers = await asyncio.gather(*(temporal.count_workflows(query, rpc_timeout=rpc_timeout)
                                         for query in queries))
        return [a.count for a in answers]

    try:
        counts = await asyncio.wait_for(count_all(), timeout)
    except asyncio.TimeoutError:
        return InFlight(note=f"Temporal did not count the runs in flight within {timeout:g} s; reload to try again.")
    except RPCError as err:
        log.info("runs in flight not counted: %s %s", err.status.name, err.message)
        if err.status == RPCStatusCode.UNIMPLEMENTED:
            return InFlight(note="This Temporal server cannot count workflows (it has no visibility store, as "
                                 "Temporal's time-skipping test server), so runs in flight per step are not shown.")
        if err.status == RPCStatusCode.INVALID_ARGUMENT and STEP.name in (err.message or ""):
            return InFlight(note=f"The search attribute {STEP.name} is not registered on this Temporal namespace "
                                 "yet: a Keepflow worker registers it when it starts.")
        return InFlight(note=f"Temporal could not count the runs in flight ({err.status.name}: {err.message}).")
    except Exception as err:  # unreachable, refused, ...: the rest of the page still stands
        log.info("runs in flight not counted: %r", err)
        return InFlight(note=f"Temporal could not be reached to count the runs in flight ({type(err).__name__}).")
    return InFlight(counts=dict(zip(targets, counts)),
                    started_since={s.id: n for s, n in zip(sequences, counts[len(targets):])} if since else {})
