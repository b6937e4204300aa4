"""The sequence language: what a marketer may write in `sequences.yaml`.

Each step is a mapping whose first-class key names its kind (`send:`, `wait:`, `wait_for:`,
`if:`, `split:`, `do:`, `start:`, `exit:`); a bare `- exit` is allowed too. The models are the
single source of truth: `catalog.load` validates YAML against them, the workflow interprets them,
and a run receives a frozen, hashed snapshot of them as its input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, assert_never, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator

from keepflow.language.channels import ChannelName
from keepflow.language.durations import Duration

Category = Literal["transactional", "marketing"]

_NAME = r"^[a-z][a-z0-9_]*$"
_EVENT_TYPE = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"

class _Model(BaseModel):
    # Aliases (`if`, `else`, `with`, `as`) are the YAML words; serialising by alias keeps a
    # snapshot readable and lets it validate again unchanged inside the workflow.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)


class _Step(_Model):
    # The kind's word in YAML, written once on each step model: the kind list, the union's tags,
    # a run's step records and the flowchart's node kinds all read it from there.
    kind: ClassVar[str]

    id: str | None = Field(None, pattern=_NAME, description="Optional name, shown in reports and logs.")
    # Words for people ("Tripod offer"): the dashboard shows them instead of the step's path.
    name: str | None = Field(None, min_length=1, max_length=80,
                             description="Optional label for people, shown on the dashboard instead of the step's path.")


class SendStep(_Step):
    kind: ClassVar[str] = "send"
    send: ChannelName
    template: str = Field(pattern=r"^[a-z0-9_][a-z0-9_/-]*$")
    # Where the message goes instead when the customer cannot be reached on `send` (no address on
    # it, no consent, suppressed): still one message. Left out of the snapshot when unset, so the
    # hash of every definition without one stays what it was.
    fallback: ChannelName | None = Field(None, exclude_if=lambda v: v is None, description=(
        "Channel to send on instead when the customer has no address, no consent or a suppressed "
        "address on `send`'s channel."))
    category: Category | None = None
    # A message held back (quiet hours, the cap, a provider outage) longer than this after it was
    # due is dropped, not sent late.
    expires_after: Duration | None = None
    # Dropped if any of these events has reached the run before it goes out ("shipped" held
    # overnight when "delivered" comes in).
    superseded_by: list[Annotated[str, Field(pattern=_EVENT_TYPE)]] = Field(default_factory=list)
    # The name of a coupon in the context (`as:` of a create_coupon step): the message offers it,
    # so it is dropped once the coupon is redeemed or expired, and the coupon's validity starts
    # when the first such message goes out.
    coupon: str | None = Field(None, pattern=_NAME)


class WaitStep(_Step):
    kind: ClassVar[str] = "wait"
    wait: Duration


class WaitForStep(_Step):
    kind: ClassVar[str] = "wait_for"
    wait_for: str = Field(pattern=_EVENT_TYPE)
    timeout: Duration
    on_timeout: Literal["continue", "exit"] | list[Step] = "continue"
    as_: str | None = Field(None, alias="as", pattern=_NAME)


class IfStep(_Step):
    kind: ClassVar[str] = "if"
    if_: str = Field(alias="if", min_length=1)
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")


class Variant(_Model):
    variant: str = Field(pattern=_NAME)
    weight: float = Field(gt=0)
    steps: list[Step] = Field(default_factory=list)


class SplitStep(_Step):
    kind: ClassVar[str] = "split"
    split: list[Variant] = Field(min_length=2)

    @field_validator("split")
    @classmethod
    def _unique_variants(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.variant for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        return variants


class DoStep(_Step):
    kind: ClassVar[str] = "do"
    do: str = Field(pattern=_NAME)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    as_: str | None = Field(None, alias="as", pattern=_NAME)


class StartStep(_Step):
    kind: ClassVar[str] = "start"
    start: str = Field(pattern=_NAME)


class ExitStep(_Step):
    kind: ClassVar[str] = "exit"
    exit: str = "done"


# Every step kind, once. The type checker reads this union to tell a `match step:` that misses a
# kind; the kind list, the tagged union pydantic validates with and kind-by-class derive from it.
# Its order is the order in which a mapping's keys are tried when it names more than one kind.
AnyStep = Union[SendStep, WaitForStep, WaitStep, IfStep, SplitStep, DoStep, StartStep, ExitStep]
STEP_CLASSES: tuple[type[AnyStep], ...] = get_args(AnyStep)
STEP_KINDS: tuple[str, ...] = tuple(c.kind for c in STEP_CLASSES)
STEP_CLASS_BY_KIND: dict[str, type[AnyStep]] = {c.kind: c for c in STEP_CLASSES}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value == "exit" else None
    if isinstance(value, dict):
        keys = {k.rstrip("_") for k in value}
        return next((k for k in STEP_KINDS if k in keys), None)
    return type(value).kind if type(value) in STEP_CLASSES else None


def _bare_exit(value: Any) -> Any:
    return {"exit": "done"} if value == "exit" else value


if TYPE_CHECKING:
    # The checker sees the plain union, so `match step:` narrows it and `assert_never` flags a
    # missing kind; the tags and the discriminator below matter to validation only.
    Step = AnyStep
else:
    _TaggedStep = Annotated[
        Union[tuple(Annotated[c, Tag(c.kind)] for c in STEP_CLASSES)],
        Discriminator(
            _step_kind,
            custom_error_type="unknown_step",
            custom_error_message="a step needs one of: " + ", ".join(STEP_KINDS),
        ),
    ]
    # `- exit` is the one step a marketer may write as a plain word (and the JSON Schema says so).
    Step = Annotated[_TaggedStep, BeforeValidator(_bare_exit, json_schema_input_type=Union[Literal["exit"], _TaggedStep])]


class InactivityTrigger(_Model):
    """Start a run for each customer with no activity for `inactive_for` (the inactivity scan)."""

    inactive_for: Duration
    # Optional filters on the customer's RFM scores (`keepflow segments` lists the names).
    segment: list[str] | None = None
    level: list[str] | None = None


EventType = Annotated[str, Field(pattern=_EVENT_TYPE)]

# A mapping is an inactivity trigger; anything else is read as an event type, so a mistake in
# either is reported once, against what the marketer meant.
Trigger = Annotated[
    Union[Annotated[EventType, Tag("event")], Annotated[InactivityTrigger, Tag("inactive_for")]],
    Discriminator(lambda v: "inactive_for" if isinstance(v, (dict, InactivityTrigger)) else "event"),
]


def _sms_only() -> list[ChannelName]:
    return ["sms"]


class QuietHours(_Model):
    """Local hours in which marketing messages on `channels` are held until `end`."""

    start: time = time(21, 0)
    end: time = time(8, 0)
    channels: list[ChannelName] = Field(default_factory=_sms_only)


class Cap(_Model):
    max: int = Field(ge=1)
    per: Duration


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Asia/Bangkok") from err
    return name


def _known_region(code: str) -> str:
    import phonenumbers  # only sequences files that set a region pay for its metadata

    if code.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {code!r}; use an ISO 3166 country code such as TH")
    return code.upper()


def _default_caps() -> dict[ChannelName, Cap]:
    return {"email": Cap(max=2, per=timedelta(hours=24)), "sms": Cap(max=1, per=timedelta(hours=24))}


class LineRules(_Model):
    """What the shop's LINE official account allows (`rules: {line: {monthly_quota: 5000}}`)."""

    # LINE counts every push (marketing or not) against the plan's messages a month; past it, pushes
    # are refused with 429 until the month ends. `keepflow lint` warns when the sequences can
    # exceed it and `keepflow report` shows this month's use. Nothing holds a message back for it.
    monthly_quota: int = Field(ge=1, description="messages the LINE plan allows a calendar month (every push counts)")


class Rules(_Model):
    """Shop-wide sending rules (`rules:` in sequences.yaml)."""

    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    # For a customer with no known time zone: a message may go out only when it is outside the
    # quiet window in every one of these (the shop's markets), the most restrictive reading.
    fallback_timezones: list[Annotated[str, AfterValidator(_known_zone)]] = Field(default_factory=lambda: ["UTC"], min_length=1)
    # The country a phone number without a country code ("081 234 5678") is read in, when the
    # customer's locale names none. None: such a number is kept but flagged, never texted.
    default_region: Annotated[str, AfterValidator(_known_region)] | None = None
    # The shop's own time zone: what the dashboard shows times in. None: UTC.
    timezone: Annotated[str, AfterValidator(_known_zone)] | None = None
    # Marketing messages per customer per rolling window, across all sequences.
    frequency_cap: dict[ChannelName, Cap] = Field(default_factory=_default_caps)
    # The SendGrid unsubscribe group (asm.group_id) of each unsubscribe group's marketing email
    # (a sequence's `group:`, else its id), so unsubscribing from one offer list leaves the others;
    # a group not named here goes in KEEPFLOW_SENDGRID_ASM_GROUP_ID's.
    sendgrid_unsubscribe_groups: dict[Annotated[str, Field(pattern=_NAME)], Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict)
    # Left out of a run's snapshot when unset, so every definition hash from before it stays the same.
    line: LineRules | None = Field(None, exclude_if=lambda v: v is None)


class Reentry(_Model):
    """When a customer may enter a sequence again under the same key (`reentry: {after: 90d}`)."""

    # Counted from the event that let them in last to the new trigger, and their last run must have
    # ended: the router starts a new run under the same id only then, and nothing within the window.
    after: Duration = Field(description="how long after the event that let a customer in last they may enter again, e.g. 90d")


class Sequence(_Model):
    id: str = Field(pattern=_NAME)
    description: str | None = None
    category: Category
    # What "unsubscribe from these emails" covers; sequences sharing a group share the opt-out.
    group: str | None = Field(None, pattern=_NAME)
    # Overrides `rules.quiet_hours` for this sequence.
    quiet_hours: QuietHours | None = None
    # A message over the frequency cap waits for a free slot (defer) or is not sent (skip).
    on_cap: Literal["defer", "skip"] = "defer"
    # An event type, or {inactive_for: 60d}; None for a sequence only ever started by another.
    trigger: Trigger | None = None
    # A Jinja2 expression over the run's context; one run per sequence and key value.
    key: str = "customer.id"
    exit_on: list[EventType] = Field(default_factory=list)
    # Events that mean the sequence worked (a purchase): the run ends as converted.
    goal: list[EventType] = Field(default_factory=list)
    # An inactivity-triggered sequence starts again for a customer only after this long.
    cool_down: Duration = timedelta(days=90)
    # An event-triggered sequence starts one run per key, ever (Temporal refuses a second run under
    # the same id): with this, the trigger starts a new one once the last has ended and `after` has
    # passed. Left out of a snapshot when unset, so the definition hash of every sequence without
    # it stays what it was.
    reentry: Reentry | None = Field(None, exclude_if=lambda v: v is None)
    steps: list[Step] = Field(min_length=1)

    def walk(self) -> Iterator[tuple[str, Step]]:
        """Every step with its path, depth first, in the order a run would meet them."""
        yield from walk_steps(self.steps, "")

    def events_awaited(self) -> set[str]:
        return {s.wait_for for _, s in self.walk() if isinstance(s, WaitForStep)}

    def events_heard(self) -> set[str]:
        """Every event type a run of this sequence must be told about."""
        superseding = {e for _, s in self.walk() if isinstance(s, SendStep) for e in s.superseded_by}
        return self.events_awaited() | set(self.exit_on) | set(self.goal) | superseding

    @property
    def unsubscribe_group(self) -> str:
        return self.group or self.id

    def channels(self) -> set[str]:
        """Every channel it may send on: each send step's own, and its `fallback:`."""
        sends = [s for _, s in self.walk() if isinstance(s, SendStep)]
        return {s.send for s in sends} | {s.fallback for s in sends if s.fallback}

    @property
    def inactivity(self) -> InactivityTrigger | None:
        return self.trigger if isinstance(self.trigger, InactivityTrigger) else None


def step_path(prefix: str, index: int, step: Step) -> str:
    name = step.id or str(index)
    return f"{prefix}.{name}" if prefix else name


def walk_steps(steps: list[Step], prefix: str) -> Iterator[tuple[str, Step]]:
    for index, step in enumerate(steps):
        path = step_path(prefix, index, step)
        yield path, step
        for branch, children in child_branches(step):
            yield from walk_steps(children, f"{path}.{branch}")


def child_branches(step: Step) -> list[tuple[str, list[Step]]]:
    match step:
        case IfStep():
            return [("then", step.then), ("else", step.else_)]
        case SplitStep():
            return [(v.variant, v.steps) for v in step.split]
        case WaitForStep():
            return [("on_timeout", step.on_timeout)] if isinstance(step.on_timeout, list) else []
        case SendStep() | WaitStep() | DoStep() | StartStep() | ExitStep():
            return []
        case _:
            assert_never(step)


class SequencesFile(_Model):
    # Shop-wide facts every template may use as `brand.*` (name, address, support contact).
    brand: dict[str, Any] = Field(default_factory=dict)
    rules: Rules = Field(default_factory=Rules)
    # The shop's own event types (sent to POST /events), besides the ones Keepflow knows; a type
    # in neither list is refused by `validate` as a likely typo, since nothing would ever send it.
    events: list[EventType] = Field(default_factory=list)
    sequences: list[Sequence] = Field(min_length=1)

    def by_id(self) -> dict[str, Sequence]:
        return {s.id: s for s in self.sequences}


class ActivityOptions(_Model):
    """A `do:` activity's own limits, as registered (`@activity("notify_crm", timeout="2m", max_attempts=5)`)."""

    timeout: Duration | None = None  # each attempt's; None: the engine's default
    max_attempts: int | None = Field(None, ge=1)  # the first try included; None: the default


class Snapshot(_Model):
    """The definitions a run needs (its sequence and every one it may `start`), frozen at start."""

    root: str
    sequences: dict[str, Sequence]
    hash: str
    rules: Rules = Field(default_factory=Rules)
    # The limits of the `do:` activities these sequences call that were registered with their own:
    # fixed at start like the rest, so the workflow reads them from its input, never from the
    # worker's code, and a replay schedules each activity as it was scheduled. Left out of the
    # payload when empty: a run without them carries what runs always did.
    activities: dict[str, ActivityOptions] = Field(default_factory=dict, exclude_if=lambda v: not v)

    @classmethod
    def of(cls, root: str, all_sequences: dict[str, Sequence], rules: Rules | None = None,
           activities: dict[str, ActivityOptions] | None = None) -> Snapshot:
        needed: dict[str, Sequence] = {}
        pending = [root]
        while pending:
            seq = all_sequences[pending.pop()]
            if seq.id in needed:
                continue
            needed[seq.id] = seq
            pending.extend(s.start for _, s in seq.walk() if isinstance(s, StartStep))
        rules = rules or Rules()
        called = {s.do for seq in needed.values() for _, s in seq.walk() if isinstance(s, DoStep)}
        options = {name: o for name, o in sorted((activities or {}).items()) if name in called}
        canonical = {"sequences": {k: v.model_dump(mode="json") for k, v in sorted(needed.items())},
                     "rules": rules.model_dump(mode="json")}
        if options:  # absent otherwise, so every hash from before limits existed stays the same
            canonical["activities"] = {k: v.model_dump(mode="json") for k, v in options.items()}
        digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        return cls(root=root, sequences=needed, hash=digest, rules=rules, activities=options)

    def child(self, sequence_id: str) -> Snapshot:
        return self.model_copy(update={"root": sequence_id})

    @property
    def sequence(self) -> Sequence:
        return self.sequences[self.root]


for _model in (WaitForStep, IfStep, Variant, SplitStep, Sequence):
    _model.model_rebuild()
