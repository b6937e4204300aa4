"""The Temporal Schedule that runs the inactivity scan; created or updated, never duplicated."""

from __future__ import annotations

import logging

from temporalio.client import (
    Client, Schedule, ScheduleActionStartWorkflow, ScheduleAlreadyRunningError, ScheduleIntervalSpec,
    ScheduleOverlapPolicy, SchedulePolicy, ScheduleSpec, ScheduleUpdate,
)

from keepflow.contracts import ScanInput
from keepflow.loader import Catalog
from keepflow.settings import Settings

log = logging.getLogger("keepflow.schedules")

SCAN_SCHEDULE_ID = "keepflow-inactivity-scan"


def scan_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "inactivity_scan", ScanInput(), id="keepflow-inactivity-scan-run", task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=settings.scan_every)]),
        # A scan still going when the next is due has the work in hand: skip, do not pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def sync_schedules(client: Client, settings: Settings, catalog: Catalog) -> str:
    """Make the scan schedule match the settings; remove it when no sequence is inactivity-triggered."""
    handle = client.get_schedule_handle(SCAN_SCHEDULE_ID)
    if not catalog.inactivity_sequences():
        try:
            await handle.delete()
            return "removed the inactivity scan schedule (no sequence uses inactive_for)"
        except Exception:
            return "no inactivity scan needed"
    schedule = scan_schedule(settings)
    try:
        await client.create_schedule(SCAN_SCHEDULE_ID, schedule)
        return f"created schedule {SCAN_SCHEDULE_ID}: inactivity scan every {settings.scan_every}"
    except ScheduleAlreadyRunningError:
        await handle.update(lambda _: ScheduleUpdate(schedule=schedule))
        return f"updated schedule {SCAN_SCHEDULE_ID}: inactivity scan every {settings.scan_every}"
