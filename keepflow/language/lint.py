"""`keepflow lint`: what the sequences do together, which `validate` (one step at a time) cannot see.

- The most marketing messages one customer can get per channel in a day and in a week if every
  sequence they can enter runs at once, against the frequency cap.
- Marketing emails without an unsubscribe link or postal address (the rules of `template_rules`).
- Marketing texts in a sequence whose quiet hours do not cover SMS.
- Sequences nobody can enter.

How the worst case is counted, so a marketer can trust (and argue with) the numbers: each entry
point (a sequence with a `trigger:`) is followed along every path, with `start:` followed into the
started sequence at that moment; `wait:` adds its time, a `wait_for:` event is taken to arrive at
once (or at its timeout, for the `on_timeout:` steps), `if:`/`split:` try every branch, and a send
with `fallback:` tries each of its two channels (one message, on one or the other). The
busiest path of each entry point counts, and the entry points are added up, as a customer may be
in all of them at the same time. A started sequence is counted inside the one that starts it, not
again on its own.
"""

from __future__ import annotations

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
class LintResult:
    findings: list[Finding]
    volumes: list[Volume]

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)


# A path is the marketing sends it makes: (time from the run's start, channel).
Path_ = tuple[tuple[timedelta, ChannelName], ...]


def lint(file: SequencesFile, templates_dir: Path) -> LintResult:
    findings: list[Finding] = []
    volumes = worst_case(file)
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
    return LintResult(findings, volumes)


def worst_case(file: SequencesFile) -> list[Volume]:
    sequences = file.by_id()
    entries = [s for s in file.sequences if s.trigger is not None]
    paths_by_entry = {s.id: _paths(s, sequences) for s in entries}
    channels = sorted({ch for paths in paths_by_entry.values() for p in paths for _, ch in p}
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


def _busiest(path: Path_, channel: str, window: timedelta) -> int:
    """The most sends on `channel` within any `window` (a rolling window, as the cap counts)."""
    times = sorted(t for t, ch in path if ch == channel)
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
            if (step.category or seq.category) != "marketing":
                return partials
            # One message, on its channel or its fallback: a path for each, never both on one.
            return [((*sends, (clock, channel)), clock, False) for sends, clock, _ in partials
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
            return [(sends + tuple((clock + t, ch) for t, ch in child_sends), clock, False)
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


def run_lint(path: Path, templates_dir: Path) -> int:
    from rich.console import Console
    from rich.table import Column, Table

    console = Console()
    file, problems = read_file(path)
    if file is None:
        for problem in problems:
            console.print(f"[red]error[/red]: {problem}", highlight=False)
        return 1
    result = lint(file, templates_dir)
    table = Table("channel", Column("worst day", justify="right"), Column("worst week", justify="right"), "frequency cap",
                  "from (day/week)", title="Marketing messages one customer can get if every sequence runs at once")
    for v in result.volumes:
        cap = (f"{v.cap_max} per {format_duration(v.cap_per)}" if v.cap_max is not None and v.cap_per is not None
               else "none")
        sources = ", ".join(f"{s} {d}/{w}" for s, (d, w) in v.by_sequence.items()) or "-"
        table.add_row(v.channel, str(v.per_day), str(v.per_week), cap, sources)
    console.print(table)
    colours = {"error": "red", "warning": "yellow", "info": "blue"}
    for f in result.findings:
        console.print(f"[{colours[f.severity]}]{f.severity}[/]: {f.where}: {f.message}", highlight=False)
    warnings = sum(f.severity == "warning" for f in result.findings)
    console.print(f"{result.errors} error(s), {warnings} warning(s)")
    return 1 if result.errors else 0
