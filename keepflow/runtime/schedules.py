"""The Temporal Schedule that runs the inactivity scan; created or updated, never duplicated."""

from __future__ import annotations

import logging

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)
from temporalio.service import RPCError

from keepflow.language.catalog import Catalog
from keepflow.runtime.payloads import ScanInput
from keepflow.settings import Settings

log = logging.getLogger("keepflow.runtime.schedules")

SCAN_SCHEDULE_ID = "keepflow-inactivity-scan"
SCORES_SCHEDULE_ID = "keepflow-scores-refresh"


def scan_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "inactivity_scan", ScanInput(), id="keepflow-inactivity-scan-run", task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=settings.scan_every)]),
        # A scan still going when the next is due has the work in hand: skip, do not pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def scores_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow("scores_refresh", id="keepflow-scores-refresh-run",
                                           task_queue=settings.task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=settings.scores_every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def _upsert(client: Client, schedule_id: str, schedule: Schedule, what: str) -> str:
    try:
        await client.create_schedule(schedule_id, schedule)
        return f"created schedule {schedule_id}: {what}"
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(schedule_id).update(lambda _: ScheduleUpdate(schedule=schedule))
        return f"updated schedule {schedule_id}: {what}"


async def sync_schedules(client: Client, settings: Settings, catalog: Catalog) -> list[str]:
    """Make the schedules match the settings and sequences; safe to run on every worker start."""
    done = [await _upsert(client, SCORES_SCHEDULE_ID, scores_schedule(settings),
                          f"RFM scores refreshed every {settings.scores_every}")]
    if catalog.inactivity_sequences():
        done.append(await _upsert(client, SCAN_SCHEDULE_ID, scan_schedule(settings),
                                  f"inactivity scan every {settings.scan_every}"))
    else:
        try:
            await client.get_schedule_handle(SCAN_SCHEDULE_ID).delete()
            done.append(f"removed schedule {SCAN_SCHEDULE_ID}: no sequence uses inactive_for")
        except RPCError:
            pass  # there was none
    return done
