"""`keepflow lint`: what the sequences do together, which `validate` (one step at a time) cannot see.

- The most marketing messages one customer can get per channel in a day and in a week if every
  sequence they can enter runs at once, against the frequency cap.
- Marketing emails without an unsubscribe link or postal address (the rules of `template_rules`).
- Marketing texts in a sequence whose quiet hours do not cover SMS.
- Sequences nobody can enter.
- With `rules.line.monthly_quota`: the most LINE messages one customer can get in a month, times the
  customers with a LINE user id, against the quota.

How the worst case is counted, so a marketer can trust (and argue with) the numbers: each entry
point (a sequence with a `trigger:`) is followed along every path, with `start:` followed into the
started sequence at that moment; `wait:` adds its time, a `wait_for:` event is taken to arrive at
once (or at its timeout, for the `on_timeout:` steps), `if:`/`split:` try every branch, and a send
with `fallback:` tries each of its two channels (one message, on one or the other). The
busiest path of each entry point counts, and the entry points are added up, as a customer may be
in all of them at the same time. A started sequence is counted inside the one that starts it, not
again on its own.

LINE's quota counts every push, transactional ones too, in a calendar month: so a month is taken as
31 days, and transactional LINE messages count beside the marketing ones. Where the frequency cap
limits LINE (max per window), marketing ones in a month are at most max × the windows that fit in
31 days (rounded up). Each sequence is taken to be entered once in the month.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, assert_never

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from keepflow.language import template_checks
from keepflow.language.channels import CHANNEL_FACTS, ChannelName
from keepflow.language.dsl import (
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    Sequence,
    SequencesFile,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
)
from keepflow.language.durations import format_duration

Severity = Literal["error", "warning", "info"]
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
# The longest calendar month, as LINE's quota counts.
MONTH = timedelta(days=31)
# Paths multiply at every branch; past this many the busiest found so far is reported.
MAX_PATHS = 5000


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str
    message: str


@dataclass(frozen=True)
class Volume:
    """Worst-case marketing messages on one channel for one customer."""

    channel: str
    per_day: int
    per_week: int
    cap_max: int | None
    cap_per: timedelta | None
    in_cap_window: int  # worst case within the cap's own window
    by_sequence: dict[str, tuple[int, int]]  # entry sequence -> (per day, per week)


@dataclass(frozen=True)
class LineQuota:
    """The worst month of LINE messages against `rules.line.monthly_quota`."""

    quota: int
    marketing: int  # per customer, after the frequency cap
    transactional: int  # per customer
    customers: int | None  # with a LINE user id; None: not known

    @property
    def per_customer(self) -> int:
        return self.marketing + self.transactional

    @property
    def worst_month(self) -> int | None:
        return None if self.customers is None else self.per_customer * self.customers


@dataclass(frozen=True)
class LintResult:
    findings: list[Finding]
    volumes: list[Volume]
    line_quota: LineQuota | None = None

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)


# A path is the sends it makes: (time from the run's start, channel, whether it is marketing).
Path_ = tuple[tuple[timedelta, ChannelName, bool], ...]


def lint(file: SequencesFile, templates_dir: Path, line_customers: int | None = None) -> LintResult:
    """`line_customers`: how many customers have a LINE user id, for the quota; None if not known."""
    findings: list[Finding] = []
    # Every path of every entry point, walked once for both the cap's figures and the quota's.
    paths = _entry_paths(file)
    volumes = worst_case(file, paths)
    quota = line_quota(file, line_customers, paths)
    if quota is not None:
        findings += _quota_findings(quota)
    for volume in volumes:
        if volume.cap_max is not None and volume.in_cap_window > volume.cap_max:
            held = volume.in_cap_window - volume.cap_max
            findings.append(Finding(
                "warning", f"{volume.channel} cap",
                f"up to {volume.in_cap_window} marketing {_noun(volume.channel, volume.in_cap_window)} in "
                f"{_window(volume.cap_per)}; the cap of {volume.cap_max} will hold back {held} "
                f"(deferred or skipped, as each sequence's on_cap says)"))
        elif volume.cap_max is None and volume.per_day:
            findings.append(Finding("warning", f"{volume.channel} cap",
                                    f"no frequency cap for {volume.channel}: up to {volume.per_day} marketing "
                                    f"{_noun(volume.channel, volume.per_day)} a day can go out"))
    for seq in file.sequences:
        quiet = seq.quiet_hours or file.rules.quiet_hours
        for path, step in seq.walk():
            if not isinstance(step, SendStep):
                continue
            marketing = (step.category or seq.category) == "marketing"
            for problem in template_checks.marketing_email_problems(seq, step, templates_dir):
                findings.append(Finding("error", f"{seq.id} step {path}", problem))
            for channel in _channels(step):
                facts = CHANNEL_FACTS[channel]
                if marketing and facts.interrupts and channel not in quiet.channels:
                    findings.append(Finding(
                        "warning", f"{seq.id} step {path}",
                        f"marketing {facts.noun} {step.template!r} can go out at night: the quiet hours of this "
                        f"sequence do not include {channel}; add {channel} to quiet_hours channels"))
    started = {s.start for seq in file.sequences for _, s in seq.walk()
               if isinstance(s, StartStep) and s.start != seq.id}
    for seq in file.sequences:
        if seq.trigger is None and seq.id not in started:
            findings.append(Finding("warning", seq.id,
                                    "no customer can ever enter this sequence: it has no trigger and no "
                                    "other sequence starts it"))
    return LintResult(findings, volumes, quota)


def line_quota(file: SequencesFile, customers: int | None,
               paths_by_entry: dict[str, list[Path_]] | None = None) -> LineQuota | None:
    if file.rules.line is None:
        return None
    paths_by_entry = paths_by_entry if paths_by_entry is not None else _entry_paths(file)
    marketing = sum(max((_busiest(p, "line", MONTH) for p in paths), default=0) for paths in paths_by_entry.values())
    transactional = sum(max((_busiest(p, "line", MONTH, marketing=False) for p in paths), default=0)
                        for paths in paths_by_entry.values())
    cap = file.rules.frequency_cap.get("line")
    if cap is not None:
        marketing = min(marketing, cap.max * math.ceil(MONTH / cap.per))
    return LineQuota(file.rules.line.monthly_quota, marketing, transactional, customers)


def _quota_findings(quota: LineQuota) -> list[Finding]:
    per = (f"up to {quota.per_customer} LINE {'message' if quota.per_customer == 1 else 'messages'} per customer "
           f"in a month ({quota.marketing} marketing, {quota.transactional} transactional)")
    if quota.worst_month is None:
        return [Finding("info", "line quota",
                        f"{per}; how many customers have a LINE user id is not known here, so the quota of "
                        f"{quota.quota} is not compared: give --customers N, or run it where the store is")]
    if quota.worst_month <= quota.quota:
        return []
    return [Finding("warning", "line quota",
                    f"{per} to {quota.customers} customers with a LINE user id: {quota.worst_month} a month, over "
                    f"the plan's monthly_quota of {quota.quota}; LINE refuses pushes past it until the month ends. "
                    "Send fewer LINE messages, move some to email, or raise the plan")]


def _entry_paths(file: SequencesFile) -> dict[str, list[Path_]]:
    sequences = file.by_id()
    return {s.id: _paths(s, sequences) for s in file.sequences if s.trigger is not None}


def worst_case(file: SequencesFile, paths_by_entry: dict[str, list[Path_]] | None = None) -> list[Volume]:
    paths_by_entry = paths_by_entry if paths_by_entry is not None else _entry_paths(file)
    channels = sorted({ch for paths in paths_by_entry.values() for p in paths for _, ch, marketing in p if marketing}
                      | set(file.rules.frequency_cap))
    volumes = []
    for channel in channels:
        cap = file.rules.frequency_cap.get(channel)
        by_sequence = {}
        in_cap = 0
        for seq_id, paths in paths_by_entry.items():
            day = max((_busiest(p, channel, DAY) for p in paths), default=0)
            week = max((_busiest(p, channel, WEEK) for p in paths), default=0)
            if cap is not None:
                in_cap += max((_busiest(p, channel, cap.per) for p in paths), default=0)
            if day or week:
                by_sequence[seq_id] = (day, week)
        volumes.append(Volume(
            channel=channel, per_day=sum(d for d, _ in by_sequence.values()),
            per_week=sum(w for _, w in by_sequence.values()),
            cap_max=cap.max if cap else None, cap_per=cap.per if cap else None,
            in_cap_window=in_cap, by_sequence=by_sequence))
    return volumes


def _busiest(path: Path_, channel: str, window: timedelta, marketing: bool = True) -> int:
    """The most marketing (or transactional) sends on `channel` within any `window` (a rolling
    window, as the cap counts)."""
    times = sorted(t for t, ch, is_marketing in path if ch == channel and is_marketing == marketing)
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def _paths(seq: Sequence, sequences: dict[str, Sequence]) -> list[Path_]:
    ends = _walk(seq.steps, seq, sequences, [((), timedelta(0), False)], {seq.id})
    return [sends for sends, _, _ in ends] or [()]


# A partial path: (sends so far, clock, ended by `exit`).
_Partial = tuple[Path_, timedelta, bool]


def _walk(steps: list[Step], seq: Sequence, sequences: dict[str, Sequence], partials: list[_Partial],
          active: set[str]) -> list[_Partial]:
    for step in steps:
        live = [p for p in partials if not p[2]]
        if not live:
            break
        done = [p for p in partials if p[2]]
        partials = done + _step(step, seq, sequences, live, active)
        if len(partials) > MAX_PATHS:
            partials = sorted(partials, key=lambda p: -len(p[0]))[:MAX_PATHS]
    return partials


def _step(step: Step, seq: Sequence, sequences: dict[str, Sequence], partials: list[_Partial],
          active: set[str]) -> list[_Partial]:
    match step:
        case SendStep():
            marketing = (step.category or seq.category) == "marketing"
            # One message, on its channel or its fallback: a path for each, never both on one.
            return [((*sends, (clock, channel, marketing)), clock, False) for sends, clock, _ in partials
                    for channel in _channels(step)]
        case WaitStep():
            return [(sends, clock + step.wait, False) for sends, clock, _ in partials]
        case WaitForStep():
            arrived = partials  # worst case: the event comes at once
            late = [(sends, clock + step.timeout, step.on_timeout == "exit") for sends, clock, _ in partials]
            if isinstance(step.on_timeout, list):
                late = _walk(step.on_timeout, seq, sequences, late, active)
            return arrived + late
        case IfStep():
            return (_walk(step.then, seq, sequences, partials, active)
                    + _walk(step.else_, seq, sequences, partials, active))
        case SplitStep():
            return [p for v in step.split for p in _walk(v.steps, seq, sequences, partials, active)]
        case StartStep():
            target = sequences.get(step.start)
            if target is None or target.id in active:
                return partials  # `validate` reports unknown targets and cycles
            child = _walk(target.steps, target, sequences, [((), timedelta(0), False)], active | {target.id})
            # The started run goes on by itself: its sends join this path from now on, whatever
            # this run does next.
            return [(sends + tuple((clock + t, ch, m) for t, ch, m in child_sends), clock, False)
                    for sends, clock, _ in partials for child_sends, _, _ in child]
        case ExitStep():
            return [(sends, clock, True) for sends, clock, _ in partials]
        case DoStep():
            return partials
        case _:
            assert_never(step)


def _channels(step: SendStep) -> list[ChannelName]:
    """Where a send step's message may go: its channel, and its `fallback:` if it has one."""
    return [step.send, *([step.fallback] if step.fallback else [])]


def _noun(channel: str, n: int) -> str:
    word = CHANNEL_FACTS[channel].noun
    return word if n == 1 else f"{word}s"


def _window(per: timedelta | None) -> str:
    if per == DAY:
        return "a day"
    if per == WEEK:
        return "a week"
    return f"{format_duration(per)}" if per else "any window"


# --- the command -------------------------------------------------------------------------------

def read_file(path: Path) -> tuple[SequencesFile | None, list[str]]:
    """The sequences as written, or why they cannot be read (then `keepflow validate` says where)."""
    try:
        data = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
        return SequencesFile.model_validate(data), []
    except FileNotFoundError:
        return None, [f"{path}: file not found"]
    except (YAMLError, ValidationError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        return None, [f"{path} cannot be read ({first}); run `keepflow validate` to see where"]


def run_lint(path: Path, templates_dir: Path, line_customers: Callable[[], int | None] | None = None) -> int:
    """`line_customers` counts the customers with a LINE user id (asked only where a LINE quota is set)."""
    from rich.console import Console
    from rich.table import Column, Table

    console = Console()
    file, problems = read_file(path)
    if file is None:
        for problem in problems:
            console.print(f"[red]error[/red]: {problem}", highlight=False)
        return 1
    customers = line_customers() if line_customers is not None and file.rules.line is not None else None
    result = lint(file, templates_dir, customers)
    table = Table("channel", Column("worst day", justify="right"), Column("worst week", justify="right"), "frequency cap",
                  "from (day/week)", title="Marketing messages one customer can get if every sequence runs at once")
    for v in result.volumes:
        cap = (f"{v.cap_max} per {format_duration(v.cap_per)}" if v.cap_max is not None and v.cap_per is not None
               else "none")
        sources = ", ".join(f"{s} {d}/{w}" for s, (d, w) in v.by_sequence.items()) or "-"
        table.add_row(v.channel, str(v.per_day), str(v.per_week), cap, sources)
    console.print(table)
    if (quota := result.line_quota) is not None:
        reach = "(customers unknown)" if quota.customers is None else (
            f"× {quota.customers:,} customers = {quota.worst_month:,}")
        console.print(f"LINE: up to {quota.per_customer} a customer a month {reach} of the monthly quota of "
                      f"{quota.quota:,}", highlight=False)
    colours = {"error": "red", "warning": "yellow", "info": "blue"}
    for f in result.findings:
        console.print(f"[{colours[f.severity]}]{f.severity}[/]: {f.where}: {f.message}", highlight=False)
    warnings = sum(f.severity == "warning" for f in result.findings)
    console.print(f"{result.errors} error(s), {warnings} warning(s)")
    return 1 if result.errors else 0
