"""What crosses the workflow/activity boundary. Plain pydantic models, small and JSON-safe."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, field_validator

from keepflow.language.channels import ChannelName
from keepflow.language.dsl import Cap, Category, QuietHours, Rules, Snapshot


def _none(value: Any) -> bool:
    return value is None


# A field left out of the JSON when None: every send request and result, and every run's input
# and result, is kept in Temporal's history, where a `"drop":null` is bytes too. Decoding reads
# an absent field as None, so payloads from before, which spell the nulls out, read the same.
OPTIONAL: dict[str, Any] = {"default": None, "exclude_if": _none}


class EventSignal(BaseModel):
    id: str
    type: str
    occurred_at: str
    data: dict[str, Any] = Field(default_factory=dict)


class StepRecord(BaseModel):
    path: str
    kind: str  # the step's word in YAML (`dsl.STEP_KINDS`)
    outcome: str

    @field_validator("kind")
    @classmethod
    def _legacy_spelling(cls, kind: str) -> str:
        # Runs that continued as new before the kinds were spelled one way carry "waitfor" in
        # the steps they had done; read it as the kind it is, so one run reports one spelling.
        return "wait_for" if kind == "waitfor" else kind


class Resume(BaseModel):
    """Where a run that continued as new (its history grew long) picks up again."""

    path: str  # the step it was waiting in
    until: datetime  # when that wait ends, in workflow time
    expires_at: datetime | None = None  # a held send's `expires_after`, counted from its first try
    started_at: datetime  # the run's first start
    inbox: list[EventSignal]  # events not yet taken that a later step may still wait for
    seen: list[str]  # ids of the latest events, so a redelivered one is still ignored
    events_count: int
    done: list[StepRecord]
    waiting_at: str | None = None  # the KeepflowStep value already set (runs that set it)
    continued: int = 0


# Snapshots already validated in this process, by (hash, root). A snapshot is frozen and its hash is
# the sha256 of its definitions, so one validated object serves every run started from it: a new
# run's first workflow task then skips validating every step of every sequence it may start, the
# largest part of decoding its input. Bounded: deploys come and go, a process lives long.
_SNAPSHOTS: dict[tuple[str, str], Snapshot] = {}
_SNAPSHOTS_KEPT = 64


class RunInput(BaseModel):
    # Runs recorded before `keepflow demo` moved to the time-skipping server carry `time_scale`
    # (always 1 outside the demo's throwaway servers): they must still decode, and replay.
    model_config = ConfigDict(extra="ignore")

    snapshot: Snapshot
    key: str
    # customer, order, the trigger event and `brand`: what conditions and templates can see.
    context: dict[str, Any]
    resume: Resume | None = Field(**OPTIONAL)
    # Whether the run sets the KeepflowStep search attribute as it settles into a wait. Runs started
    # before the dashboard read positions from the store carry no such field and did, so they
    # replay as recorded; keepflow/runtime/starts.py sets it False for every new run, which costs
    # no patch marker and no upsert (Actions Temporal Cloud bills). docs/operations.md: retiring it.
    step_attribute: bool = True

    @field_validator("snapshot", mode="wrap")
    @classmethod
    def _validated_once(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Snapshot:
        named = (value.get("hash"), value.get("root")) if isinstance(value, dict) else None
        if named is None or not isinstance(named[0], str) or not isinstance(named[1], str):
            return handler(value)
        key = (named[0], named[1])
        known = _SNAPSHOTS.get(key)
        if known is None:
            known = handler(value)
            if len(_SNAPSHOTS) >= _SNAPSHOTS_KEPT:
                _SNAPSHOTS.clear()
            _SNAPSHOTS[key] = known
        return known


class SendTerms(BaseModel):
    """What the sending rules need of the run's definition; keepflow/runtime/send_rules.py resolves them."""

    group: str  # the sequence's unsubscribe group
    quiet_hours: QuietHours | None = None  # the sequence's own `quiet_hours:`, if it sets them
    on_cap: Literal["defer", "skip"] = "defer"
    rules: Rules = Field(default_factory=Rules)  # the snapshot's shop-wide `rules:`


class SendPolicy(BaseModel):
    """The sending rules that apply to one send, as keepflow/runtime/send_rules.py resolves them. Runs from
    before that carried it resolved, in `SendRequest.policy`."""

    group: str
    quiet_hours: QuietHours | None = None
    fallback_timezones: list[str] = Field(default_factory=lambda: ["UTC"])
    cap: Cap | None = None
    on_cap: Literal["defer", "skip"] = "defer"


class SendRequest(BaseModel):
    # Sends scheduled by earlier code, still retrying across a deploy, carry `time_scale`.
    model_config = ConfigDict(extra="ignore")

    workflow_id: str
    sequence_id: str
    step: str
    channel: ChannelName
    template: str
    category: Category
    context: dict[str, Any]
    # The step's `fallback:`: where the message goes when the customer cannot be reached on
    # `channel` (keepflow/runtime/send_rules.py decides, at send time).
    fallback: ChannelName | None = Field(**OPTIONAL)
    # The run's clock (workflow time) when this attempt was asked for; None in runs from before
    # the compliance rules, which fall back to the activity's clock.
    now: datetime | None = Field(**OPTIONAL)
    terms: SendTerms | None = Field(**OPTIONAL)
    # Sends scheduled before the rules were resolved in the activity carry `policy` instead of
    # `terms`; a retry of one after a deploy keeps to it.
    policy: SendPolicy | None = Field(**OPTIONAL)
    # Drop instead of sending when the run's clock is past this (`expires_after`).
    expires_at: datetime | None = Field(**OPTIONAL)
    # Set when the workflow already knows the message must not go (a superseding event arrived).
    drop: str | None = Field(**OPTIONAL)
    # The context name of the coupon this message offers (`coupon:` on the step).
    coupon: str | None = Field(**OPTIONAL)


SendStatus = Literal["sent", "failed", "skipped", "unknown", "deferred"]


class SendResult(BaseModel):
    status: SendStatus
    # The message row, which holds the provider's id, the recipient and the body: the run needs
    # none of them, so its history does not carry them (results from before carried the id).
    message_id: int | None = Field(**OPTIONAL)
    reason: str | None = Field(**OPTIONAL)
    # For `deferred`: ask again at this time on the run's clock (quiet hours end, a cap slot frees).
    retry_at: datetime | None = Field(**OPTIONAL)
    # The channel the message went on (or was held on), when it is the step's `fallback:`, not its
    # own; `reason` then says why ("on sms (fallback: no LINE account)").
    channel: ChannelName | None = Field(**OPTIONAL)


class DoRequest(BaseModel):
    workflow_id: str
    sequence_id: str
    step: str
    args: dict[str, Any]
    context: dict[str, Any]


class RunStatus(BaseModel):
    sequence_id: str
    key: str
    definition_hash: str
    current_step: str | None = Field(**OPTIONAL)
    steps_done: list[StepRecord]
    # this run's events; after a continue-as-new, those it carried over
    events_received: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    exit_reason: str | None
    # every event the run was told about, across continue-as-new
    events_count: int = Field(0, exclude_if=lambda v: not v)
    continued: int = Field(0, exclude_if=lambda v: not v)  # times the run continued as new


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
