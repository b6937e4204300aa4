"""The daily RFM refresh: one activity, run by a Temporal Schedule (keepflow/runtime/schedules.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy


@workflow.defn(name="scores_refresh")
class ScoresRefresh:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity(
            "refresh_scores", workflow.now(), result_type=int,
            start_to_close_timeout=timedelta(hours=1),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=10), maximum_attempts=10),
        )
