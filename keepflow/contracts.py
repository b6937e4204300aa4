"""What crosses the workflow/activity boundary. Plain pydantic models, small and JSON-safe."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from keepflow.dsl import Category, Channel, Snapshot


class RunInput(BaseModel):
    snapshot: Snapshot
    key: str
    # customer, order, the trigger event and `brand`: what conditions and templates can see.
    context: dict[str, Any]
    # Real seconds per definition second; 1/86400 makes a day last a second (`keepflow demo`).
    time_scale: float = Field(1.0, gt=0)


class EventSignal(BaseModel):
    id: str
    type: str
    occurred_at: str
    data: dict[str, Any] = Field(default_factory=dict)


class SendRequest(BaseModel):
    workflow_id: str
    sequence_id: str
    step: str
    channel: Channel
    template: str
    category: Category
    context: dict[str, Any]


SendStatus = Literal["sent", "failed", "skipped", "unknown"]


class SendResult(BaseModel):
    status: SendStatus
    message_id: int | None = None
    provider_message_id: str | None = None
    reason: str | None = None


class DoRequest(BaseModel):
    workflow_id: str
    sequence_id: str
    step: str
    args: dict[str, Any]
    context: dict[str, Any]


class StepRecord(BaseModel):
    path: str
    kind: str
    outcome: str


class RunStatus(BaseModel):
    sequence_id: str
    key: str
    definition_hash: str
    current_step: str | None
    steps_done: list[StepRecord]
    events_received: list[str]
    exit_reason: str | None


class ScanCursor(BaseModel):
    """Where a page of the inactivity scan ended: customers are walked by (last_seen_at, id)."""

    last_seen_at: datetime
    customer_id: str


class ScanTotals(BaseModel):
    scanned: int = 0
    started: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)

    def plus(self, page: ScanPageResult) -> ScanTotals:
        skipped = dict(self.skipped)
        for reason, count in page.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        return ScanTotals(scanned=self.scanned + page.scanned, started=self.started + page.started, skipped=skipped)


class ScanInput(BaseModel):
    # None: the time the scan starts (its workflow time). Kept across continue-as-new.
    as_of: datetime | None = None
    after: ScanCursor | None = None
    page_size: int = Field(500, gt=0, le=10_000)
    totals: ScanTotals = Field(default_factory=ScanTotals)


class ScanPage(BaseModel):
    as_of: datetime
    after: ScanCursor | None
    limit: int


class ScanPageResult(BaseModel):
    scanned: int
    started: int
    skipped: dict[str, int]
    next: ScanCursor | None

ScanTotals.model_rebuild()
