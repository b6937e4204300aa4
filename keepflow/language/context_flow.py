"""`keepflow validate` checks that follow a run along its path: what a template may use, and timing.

Template variables: a template may use what the run's context holds when the send happens:
`customer`, `brand`, `event`, `variants`, `locale`, `order` (a sequence keyed on or triggered by
an order event), `unsubscribe_url` (a marketing email), and every `as:` name an earlier step on
every path to the send defines. A sequence started by another also has what the starter had at
its `start:`. A name the template reads only under `{% if x is defined %}` or through
`x | default(...)` is a warning: it renders, just without that part.

Timing (warnings, a simple heuristic): a template named like "review" sent less than 7 days of
`wait:` after a `wait_for: order.delivered` (or after the `start:` that follows it), as the
customer has barely unpacked; a `wait_for` timeout under an hour or over 30 days; a marketing
text in a sequence whose quiet hours do not cover SMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, assert_never

from jinja2 import TemplateError, meta, nodes

from keepflow.language.channels import CHANNEL_FACTS
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
    step_path,
)
from keepflow.language.durations import format_duration
from keepflow.language.problems import Severity
from keepflow.language.rendering import Renderer, locale_files, relative_template, template_source
from keepflow.language.yaml_source import StepAt


class Semantics(Protocol):
    """What `checks.Semantics` shares with these checks (a protocol, so neither imports the other)."""

    file: SequencesFile
    steps: list[list[StepAt]]
    templates_dir: Path
    renderer: Renderer | None

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None: ...

BASE_NAMES = {"customer", "brand", "event", "variants", "locale"}
# Jinja's own names inside a template, never looked up in the context.
JINJA_NAMES = {"self", "super", "loop", "varargs", "kwargs", "caller"}
REVIEW_AFTER = timedelta(days=7)
SHORT_TIMEOUT = timedelta(hours=1)
LONG_TIMEOUT = timedelta(days=30)


@dataclass
class _State:
    """What a run knows at a point of its path."""

    names: frozenset[str]
    # Time since `order.delivered` could have arrived (None: not after it on this path).
    since_delivered: timedelta | None = None


@dataclass
class _Entry:
    """What a started sequence inherits, merged over every `start:` that reaches it."""

    names: frozenset[str] | None = None
    since_delivered: timedelta | None = None


def check(semantics: Semantics) -> None:
    """Add this module's problems to `semantics` (`checks.Semantics`), at each step's position."""
    Checker(semantics).run()


class Checker:
    def __init__(self, semantics: Semantics):
        self.sem = semantics
        self.rules = semantics.file.rules
        self.entries: dict[str, _Entry] = {}
        self.variables_cache: dict[str, tuple[set[str], set[str]] | None] = {}

    def run(self) -> None:
        sequences = list(zip(self.sem.file.sequences, self.sem.steps))
        # What each started sequence inherits settles after as many passes as the longest chain
        # of `start:`s (cycles are an error of their own elsewhere).
        for _ in range(len(sequences)):
            self.next_entries: dict[str, _Entry] = {}
            for seq, steps in sequences:
                self.walk(seq, steps, report=False)
            self.entries = self.next_entries
        for seq, steps in sequences:
            self.walk(seq, steps, report=True)

    def entry_state(self, seq: Sequence) -> _State:
        base = set(BASE_NAMES)
        if _about_orders(seq):
            base.add("order")
        entry = self.entries.get(seq.id)
        if seq.trigger is None and entry is not None and entry.names is not None:
            return _State(frozenset(base | entry.names), entry.since_delivered)
        return _State(frozenset(base))

    def walk(self, seq: Sequence, steps: list[StepAt], report: bool) -> None:
        by_path = {at.path: at for at in steps}
        self.steps(seq, seq.steps, "", self.entry_state(seq), by_path, report)

    def steps(self, seq: Sequence, steps: list[Step], prefix: str, state: _State, by_path: dict[str, StepAt],
              report: bool) -> _State:
        for index, step in enumerate(steps):
            path = step_path(prefix, index, step)
            at = by_path.get(path)
            match step:
                case SendStep():
                    if report and at is not None:
                        self.send(seq, step, at, state)
                case WaitStep():
                    state = _State(state.names, _plus(state.since_delivered, step.wait))
                case WaitForStep():
                    if report and at is not None and step.timeout <= timedelta(days=90):
                        if step.timeout < SHORT_TIMEOUT or step.timeout > LONG_TIMEOUT:
                            self.sem.add(at.pos("timeout"),
                                         f"wait_for {step.wait_for} gives up after {format_duration(step.timeout)}; "
                                         "under an hour is rarely enough for it to arrive, over 30 days the "
                                         "customer has moved on", "warning")
                    since = timedelta(0) if step.wait_for == "order.delivered" else state.since_delivered
                    names = state.names | {step.as_} if step.as_ else state.names
                    after = _State(names, since)
                    if isinstance(step.on_timeout, list):
                        late = self.steps(seq, step.on_timeout, f"{path}.on_timeout",
                                          _State(state.names, _plus(state.since_delivered, step.timeout)), by_path,
                                          report)
                        after = _State(after.names & late.names | ({step.as_} if step.as_ else set()),
                                       after.since_delivered)
                    state = after
                case DoStep():
                    if step.as_:
                        state = _State(state.names | {step.as_}, state.since_delivered)
                case IfStep():
                    then = self.steps(seq, step.then, f"{path}.then", state, by_path, report)
                    other = self.steps(seq, step.else_, f"{path}.else", state, by_path, report)
                    state = _State(then.names & other.names, state.since_delivered)
                case SplitStep():
                    ends = [self.steps(seq, v.steps, f"{path}.{v.variant}", state, by_path, report) for v in step.split]
                    state = _State(frozenset.intersection(*(e.names for e in ends)), state.since_delivered)
                case StartStep():
                    if not report:
                        self.started(seq, step, state)
                case ExitStep():
                    pass  # it adds no name a template may use and takes no time
                case _:
                    assert_never(step)
        return state

    def started(self, seq: Sequence, step: StartStep, state: _State) -> None:
        entry = self.next_entries.setdefault(step.start, _Entry())
        entry.names = state.names if entry.names is None else entry.names & state.names
        if state.since_delivered is not None:
            entry.since_delivered = (state.since_delivered if entry.since_delivered is None
                                     else min(entry.since_delivered, state.since_delivered))

    # the checks at a send

    def send(self, seq: Sequence, step: SendStep, at: StepAt, state: _State) -> None:
        marketing = (step.category or seq.category) == "marketing"
        quiet = seq.quiet_hours or self.rules.quiet_hours
        # The step's own channel and its `fallback:`: the message may go on either.
        channels = [(step.send, "send"), *([(step.fallback, "fallback")] if step.fallback else [])]
        for channel, field in channels:
            facts = CHANNEL_FACTS[channel]
            if marketing and facts.interrupts and channel not in quiet.channels:
                self.sem.add(at.pos(field), f"a marketing {facts.noun} in a sequence without quiet hours for {channel}: "
                             f"it may arrive at night; add {channel} to quiet_hours channels", "warning")
        if "review" in step.template and state.since_delivered is not None and state.since_delivered < REVIEW_AFTER:
            when = (f"{format_duration(state.since_delivered)} after" if state.since_delivered
                    else "as soon as")
            self.sem.add(at.pos("template"),
                         f"{step.template} may go out {when} the order is delivered; ask for a review "
                         "after at least 7 days, once the customer has used the product", "warning")
        reported: set[str] = set()
        for channel, _ in channels:
            self.template_names(step, channel, marketing, at, state, reported)

    def template_names(self, step: SendStep, channel: str, marketing: bool, at: StepAt, state: _State,
                       reported: set[str]) -> None:
        """Each name a channel's templates of this step read that the run's context lacks there."""
        known = set(state.names)
        optional = set()
        if marketing and CHANNEL_FACTS[channel].unsubscribe_link:
            known.add("unsubscribe_url")
        else:
            # Left out of transactional mail on purpose; a template may show it when present.
            optional.add("unsubscribe_url")
        if step.coupon:
            known.add(step.coupon)
        for file in locale_files(self.sem.templates_dir, channel, step.template).values():
            relative = relative_template(self.sem.templates_dir, file)
            found = self.variables(relative)
            if found is None:
                continue
            required, guarded = found
            available = ", ".join(sorted(known))
            for name in sorted(required - known - optional - reported):
                reported.add(name)
                self.sem.add(at.pos("template"),
                             f"template {relative} uses {name!r}, which this step's context does not have; "
                             f"available here: {available}")
            for name in sorted(guarded - required - known - optional - reported):
                reported.add(name)
                self.sem.add(at.pos("template"),
                             f"template {relative} uses {name!r} only where it is defined, and this step's "
                             f"context never has it, so that part never shows; available here: {available}",
                             "warning")

    def variables(self, relative: str) -> tuple[set[str], set[str]] | None:
        """(names read unguarded, names read only under `is defined`/`default`) by a template and
        every template it extends, includes or imports."""
        if relative in self.variables_cache:
            return self.variables_cache[relative]
        if self.sem.renderer is None:
            self.sem.renderer = Renderer(self.sem.templates_dir)
        env = self.sem.renderer.env
        required: set[str] = set()
        guarded: set[str] = set()
        pending, seen = [relative], set()
        try:
            while pending:
                name = pending.pop()
                if name in seen:
                    continue
                seen.add(name)
                source = template_source(env, name)
                ast = env.parse(source, name)
                # `_private` names are refused by `checks` already, with their own message.
                undeclared = {n for n in meta.find_undeclared_variables(ast) if not n.startswith("_")}
                undeclared -= JINJA_NAMES | set(env.globals)
                unguarded = _unguarded_names(ast) & undeclared
                required |= unguarded
                guarded |= undeclared - unguarded
                pending.extend(r for r in meta.find_referenced_templates(ast) if r)
        except TemplateError:
            result = None  # a syntax error or missing file: `checks` reports it already
        else:
            result = (required, guarded)
        self.variables_cache[relative] = result
        return result


def _about_orders(seq: Sequence) -> bool:
    trigger = seq.trigger if isinstance(seq.trigger, str) else ""
    return trigger.startswith("order.") or seq.key.startswith("order.")


def _plus(since: timedelta | None, wait: timedelta) -> timedelta | None:
    return None if since is None else since + wait


def _base_name(node: nodes.Node) -> str | None:
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        node = node.node
    return node.name if isinstance(node, nodes.Name) else None


def _defined_tests(test: nodes.Node) -> set[str]:
    """Names an `if` test checks with `is defined` (anywhere in it, e.g. `a is defined and a`)."""
    found = set()
    for t in [test, *test.find_all(nodes.Test)]:
        if isinstance(t, nodes.Test) and t.name == "defined":
            base = _base_name(t.node)
            if base:
                found.add(base)
    return found


def _unguarded_names(node: nodes.Node, guarded: frozenset[str] = frozenset()) -> set[str]:
    """Names loaded outside any `{% if x is defined %}` for them, and not as `x | default(...)`."""
    found: set[str] = set()
    if isinstance(node, nodes.Name) and node.ctx == "load":
        if node.name not in guarded:
            found.add(node.name)
        return found
    if isinstance(node, nodes.Test) and node.name == "defined":
        return found
    if isinstance(node, nodes.Filter) and node.name == "default" and node.node is not None:
        inner = node.node
        if isinstance(inner, nodes.Name):
            for child in node.iter_child_nodes():
                if child is not inner:
                    found |= _unguarded_names(child, guarded)
            return found
    if isinstance(node, (nodes.If, nodes.CondExpr)):
        inside = guarded | _defined_tests(node.test)
        found |= _unguarded_names(node.test, guarded | _defined_tests(node.test))
        body: list[Any] = node.body if isinstance(node, nodes.If) else [node.expr1]
        for child in body:
            found |= _unguarded_names(child, frozenset(inside))
        rest: list[Any] = ([*node.elif_, *node.else_] if isinstance(node, nodes.If)
                           else [node.expr2] if node.expr2 is not None else [])
        for child in rest:
            found |= _unguarded_names(child, guarded)
        return found
    for child in node.iter_child_nodes():
        found |= _unguarded_names(child, guarded)
    return found
