"""The inactivity scan: walk customers by `last_seen_at` and start win-back runs.

Run by a Temporal Schedule (see keepflow/runtime/schedules.py). Each page is one activity that reads
up to `page_size` customers past the shortest `inactive_for`, checks them and starts their
runs; the workflow holds only a cursor and running totals, so a million customers never sit in
memory or in history. It continues as new every PAGES_PER_RUN pages, and its progress is shown
as the run's current details in the Temporal UI.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from keepflow.runtime.payloads import ScanInput, ScanPage, ScanPageResult, ScanTotals

PAGES_PER_RUN = 100  # about 600 history events per run, far under Temporal's 10,240 warning
PAGE_TIMEOUT = timedelta(minutes=5)
PAGE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2), maximum_attempts=20)


@workflow.defn(name="inactivity_scan")
class InactivityScan:
    @workflow.run
    async def run(self, input: ScanInput) -> ScanTotals:
        as_of = input.as_of or workflow.now()
        totals, after = input.totals, input.after
        for _ in range(PAGES_PER_RUN):
            page = await workflow.execute_activity(
                "scan_inactive_page", ScanPage(as_of=as_of, after=after, limit=input.page_size),
                result_type=ScanPageResult, start_to_close_timeout=PAGE_TIMEOUT, retry_policy=PAGE_RETRY,
            )
            totals = totals.plus(page)
            skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(totals.skipped.items())) or "none"
            workflow.set_current_details(
                f"inactive as of {as_of:%Y-%m-%d %H:%M} UTC: {totals.scanned:,} customers checked, "
                f"{totals.started:,} runs started; skipped: {skipped}"
            )
            if page.next is None:
                return totals
            after = page.next
        workflow.continue_as_new(ScanInput(as_of=as_of, after=after, page_size=input.page_size, totals=totals))
