"""What crosses the workflow/activity boundary. Plain pydantic models, small and JSON-safe."""

from __future__ import annotations

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
