"""The checks behind `keepflow validate` that the schema cannot express: ids, templates,
expressions, activities and their arguments, `start:` targets and cycles (and, through
`context_flow`, what each template may use at its point of a run)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Protocol, assert_never

from jinja2 import ChainableUndefined, TemplateSyntaxError, meta
from jinja2 import nodes as jinja_nodes
from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from keepflow.language import context_flow, flex, key_checks, sample_values, sendgrid_groups, template_checks
from keepflow.language.as_names import as_shapes
from keepflow.language.channels import CHANNEL_FACTS
from keepflow.language.dsl import (
    ActivityOptions,
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    Sequence,
    SequencesFile,
    SplitStep,
    StartStep,
    WaitForStep,
    WaitStep,
)
from keepflow.language.context_fields import LEVELS, SEGMENTS, Shape, context_shapes, impossible_values, unknown_fields
from keepflow.language.durations import format_duration
from keepflow.language.events import BUILTIN_EVENTS
from keepflow.language.expressions import ExpressionError, check_syntax, parse, refusal, refused
from keepflow.language.problems import Report, Severity
from keepflow.language.rendering import (
    FALLBACK_LOCALE,
    Renderer,
    both_kinds,
    is_flex,
    locale_files,
    relative_template,
    template_path,
    template_source,
)
from keepflow.language.schema_errors import aliases, did_you_mean, friendly
from keepflow.language.syntax_messages import jinja_message
from keepflow.language.yaml_source import StepAt, has_key, key_pos, locate, point, steps_at, value_pos

LONG_WAIT = timedelta(days=90)


def _private_names(ast: jinja_nodes.Template) -> Iterator[tuple[jinja_nodes.Node, str]]:
    """`x.__class__`, `x['_secret']`, `_private`: what the sandbox refuses at send time, caught here."""
    for node in ast.find_all((jinja_nodes.Getattr, jinja_nodes.Getitem, jinja_nodes.Name)):
        if isinstance(node, jinja_nodes.Getattr):
            name = node.attr
        elif isinstance(node, jinja_nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, jinja_nodes.Const) and isinstance(node.arg.value, str) else ""
        elif isinstance(node, jinja_nodes.Name):
            name = node.name
        else:
            continue  # find_all yields only the three kinds asked for
        if name.startswith("_"):
            yield node, name


class KnownActivity(Protocol):
    """What the language needs of a registered activity (the runtime's registry has these)."""

    @property
    def args_model(self) -> type[BaseModel]: ...

    @property
    def options(self) -> ActivityOptions | None: ...

    @property
    def result_model(self) -> type[BaseModel] | None: ...


# What a `do:` step may call, by name.
Activities = Mapping[str, KnownActivity]


class Semantics:
    def __init__(self, file: SequencesFile, tree: CommentedMap, templates_dir: Path,
                 activities: Activities, report: Report):
        self.file = file
        self.tree = tree
        self.templates_dir = templates_dir
        self.activities = activities
        self.report = report
        self.seq_nodes: list[CommentedMap] = list(tree["sequences"])
        self.steps: list[list[StepAt]] = [
            list(steps_at(seq.steps, node.get("steps"), "")) for seq, node in zip(file.sequences, self.seq_nodes)
        ]
        self.renderer: Renderer | None = None
        self.templates_checked: set[str] = set()
        # An `as:` name that reuses `customer` or `order` holds whatever its step put there.
        named = {s.as_ for seq in file.sequences for _, s in seq.walk() if isinstance(s, (DoStep, WaitForStep))}
        self.shapes: dict[str, Shape] = {k: v for k, v in context_shapes(file.brand).items() if k not in named}
        results = {name: known.result_model for name, known in activities.items()}
        self.shapes.update(as_shapes(file, results, taken=context_shapes(file.brand)))

    def run(self) -> None:
        self.sequence_ids()
        self.event_types()
        self.inactivity_filters()
        for seq, node, steps in zip(self.file.sequences, self.seq_nodes, self.steps):
            if has_key(node, "key"):
                self.expression(node, "key", seq.key)
            self.step_ids(seq, steps)
            for at in steps:
                self.step(at)
                for problem in template_checks.marketing_email_problems(seq, at.step, self.templates_dir):
                    self.add(at.pos("template"), problem)
        context_flow.check(self)
        key_checks.check(self)
        self.starts()
        for pos, message in sendgrid_groups.problems(self.file, self.tree):
            self.add(pos, message)

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None:
        self.report.add(pos, message, severity)

    def sequence_ids(self) -> None:
        first: dict[str, int] = {}
        for seq, node in zip(self.file.sequences, self.seq_nodes):
            pos = value_pos(node, "id")
            if seq.id in first:
                self.add(pos, f"duplicate sequence id {seq.id!r} (first defined at line {first[seq.id]})")
            else:
                first[seq.id] = pos[0] + 1

    # event types

    def event_types(self) -> None:
        known = [*BUILTIN_EVENTS, *self.file.events]
        for seq, node, steps in zip(self.file.sequences, self.seq_nodes, self.steps):
            if isinstance(seq.trigger, str):
                self.event_type(seq.trigger, value_pos(node, "trigger"), "trigger", known)
            for field in ("exit_on", "goal"):
                for index, event_type in enumerate(getattr(seq, field)):
                    self.event_type(event_type, self.item_pos(node, field, index), field, known)
            for at in steps:
                if isinstance(at.step, WaitForStep):
                    self.event_type(at.step.wait_for, at.pos("wait_for"), "wait_for", known)
                elif isinstance(at.step, SendStep):
                    for index, event_type in enumerate(at.step.superseded_by):
                        node_at = at.node if isinstance(at.node, CommentedMap) else None
                        pos = self.item_pos(node_at, "superseded_by", index) if node_at else at.pos()
                        self.event_type(event_type, pos, "superseded_by", known)

    def inactivity_filters(self) -> None:
        for seq, node in zip(self.file.sequences, self.seq_nodes):
            trigger, trigger_node = seq.inactivity, node.get("trigger")
            if trigger is None or not isinstance(trigger_node, CommentedMap):
                continue
            for field, allowed in (("segment", SEGMENTS), ("level", LEVELS)):
                for index, value in enumerate(getattr(trigger, field) or []):
                    if value in allowed:
                        continue
                    guess = did_you_mean(value, allowed)
                    hint = f"did you mean {guess!r}? " if guess else ""
                    self.add(self.item_pos(trigger_node, field, index),
                             f"trigger {field}: no customer is ever in {field} {value!r}, so this never starts; "
                             f"{hint}the {field}s are: {', '.join(allowed)}")

    @staticmethod
    def item_pos(node: CommentedMap, field: str, index: int) -> tuple[int, int]:
        items = node.get(field)
        return value_pos(items, index) if isinstance(items, CommentedSeq) else value_pos(node, field)

    def event_type(self, event_type: str, pos: tuple[int, int], field: str, known: list[str]) -> None:
        if event_type in known:
            return
        guess = did_you_mean(event_type, known)
        hint = (f"did you mean {guess}?" if guess
                else "Keepflow knows: " + ", ".join(sorted(known)) + ".")
        self.add(pos, f"{field}: no event of type {event_type!r} is ever sent, so this never happens; {hint} "
                      "If your shop sends it to POST /events, add it under events: at the top of the file")

    def step_ids(self, seq: Sequence, steps: list[StepAt]) -> None:
        first: dict[str, int] = {}
        for at in steps:
            step_id = at.step.id
            if step_id is None:
                continue
            pos = at.pos("id")
            if step_id in first:
                self.add(pos, f"duplicate step id {step_id!r} in sequence {seq.id!r} (first at line {first[step_id]})")
            else:
                first[step_id] = pos[0] + 1

    def expression(self, node: CommentedMap, field: str, expression: str) -> None:
        try:
            names = refused(expression)
            if not names:
                check_syntax(expression)
        except ExpressionError as exc:
            self.add(value_pos(node, field), f"{field}: {exc}")
            return
        for name in names:
            self.add(value_pos(node, field), f"{field}: {refusal(name)}")
        if not names:
            tree = parse(expression)
            for unknown in unknown_fields(tree, self.shapes) + impossible_values(tree, self.shapes):
                self.add(value_pos(node, field), f"{field}: {unknown.message}")

    def step(self, at: StepAt) -> None:
        step = at.step
        match step:
            case SendStep():
                self.send(at, step)
            case DoStep():
                self.do(at, step)
            case IfStep():
                self.expression(at.node, "if", step.if_)
            case WaitForStep():
                if step.timeout > LONG_WAIT:
                    self.add(at.pos("timeout"),
                             f"wait_for timeout {format_duration(step.timeout)} is longer than 90 days; "
                             "is the unit right? (s, m, h, d, w)", "warning")
            case SplitStep():
                self.weights(at, step)
            case WaitStep() | StartStep() | ExitStep():
                pass  # start: targets are checked together, in starts()
            case _:
                assert_never(step)

    def weights(self, at: StepAt, step: SplitStep) -> None:
        # The engine divides by the sum, so 50 + 40 runs as 56/44: read as percentages, a sum
        # other than 100 is a mistake the marketer cannot see in the report.
        total = sum(v.weight for v in step.split)
        if abs(total - 100) < 1e-9:
            return
        shares = " and ".join(f"{v.variant} gets {round(100 * v.weight / total)}%" for v in step.split)
        pos = key_pos(at.node, "split") if isinstance(at.node, CommentedMap) else at.pos()
        self.add(pos, f"split: the weights add up to {total:g}, not 100, so {shares}; "
                      "make them add up to 100 (they are percentages)")

    # templates

    def send(self, at: StepAt, step: SendStep) -> None:
        self.templates(at.pos("template"), step.send, step.template)
        if step.fallback is None:
            return
        pos = at.pos("fallback")
        if step.fallback == step.send:
            others = " or ".join(c for c in CHANNEL_FACTS if c != step.send)
            self.add(pos, f"fallback: {step.fallback} is this step's own channel; name another channel ({others}) "
                          "for customers who cannot get it there, or remove fallback")
            return
        ext = CHANNEL_FACTS[step.fallback].template_extension
        self.templates(pos, step.fallback, step.template,
                       why=f"; fallback: {step.fallback} sends templates/{step.fallback}/{step.template}.<locale>.{ext}")
        # A Thai customer who gets the step's own channel in Thai gets the fallback in Thai too.
        have = locale_files(self.templates_dir, step.fallback, step.template)
        for locale in locale_files(self.templates_dir, step.send, step.template):
            if locale != FALLBACK_LOCALE and locale not in have:
                missing = template_path(step.fallback, step.template, locale)
                self.add(pos, f"no template {missing} in {self.templates_dir}: the step has "
                              f"{template_path(step.send, step.template, locale)}, so a customer reading {locale} "
                              f"who gets it on {step.fallback} would read English; add {missing}")

    def templates(self, pos: tuple[int, int], channel: str, template: str, why: str = "") -> None:
        """A channel's templates of one name: the English one there, and every locale compiling."""
        english = template_path(channel, template, FALLBACK_LOCALE)
        files = locale_files(self.templates_dir, channel, template)
        if FALLBACK_LOCALE not in files:
            flex_extension = CHANNEL_FACTS[channel].flex_extension
            also = (f" or, for a Flex message, {template_path(channel, template, FALLBACK_LOCALE, flex_extension)}"
                    if flex_extension else "")
            self.add(pos, f"no template {english}{also} in {self.templates_dir} "
                          f"(every locale falls back to English, so the English one is required{why})")
        for flex_file, text_file in both_kinds(self.templates_dir, channel, template):
            self.add(pos, f"templates {flex_file} and {text_file} are both there and only {flex_file} would be "
                          "sent; delete the one you do not mean")
        for file in files.values():
            relative = relative_template(self.templates_dir, file)
            if relative in self.templates_checked:
                continue
            self.templates_checked.add(relative)
            problems = self.compile(relative, subject_required=CHANNEL_FACTS[channel].html)
            for problem in problems:
                self.add(pos, problem)
            if not problems and is_flex(relative):
                self.flex(pos, relative)

    def flex(self, pos: tuple[int, int], relative: str) -> None:
        """What LINE would refuse of a Flex template, rendered with sample values."""
        assert self.renderer is not None  # compile() made it
        env = self.renderer.flex_env.overlay(undefined=ChainableUndefined)
        source = template_source(env, relative)
        try:
            text, lines = flex.render_placed(env.get_template(relative), source,
                                             sample_values.sample(self.shapes, self.file.brand))
        except Exception as exc:  # a filter given a sample it cannot take: the template may be right
            self.add(pos, f"template {relative} was not checked against LINE's limits: it did not render with "
                          f"sample values ({exc}); `keepflow preview` renders it with a customer's", "warning")
            return
        for finding in flex.problems(text, source, lines):
            self.add(pos, f"template {relative}:{finding}")

    def compile(self, relative: str, subject_required: bool = False) -> list[str]:
        """Jinja syntax errors in a template and in what it extends, includes or imports."""
        if self.renderer is None:
            self.renderer = Renderer(self.templates_dir)
        env = self.renderer.flex_env if is_flex(relative) else self.renderer.env
        try:
            source = template_source(env, relative)
            ast = env.parse(source, relative)
            referenced = [r for r in meta.find_referenced_templates(ast) if r]
            template = env.get_template(relative)
        except TemplateSyntaxError as exc:
            return [f"template {exc.name or relative} line {exc.lineno}: {jinja_message(exc.message or '')}"]
        except UnicodeDecodeError:
            return [f"template {relative} is not UTF-8 text; save it as UTF-8"]
        except Exception as exc:  # anything Jinja cannot compile is a content mistake
            return [f"template {relative}: {exc}"]
        problems = [f"template {relative} line {node.lineno}: '{name}' is not allowed; templates may use the "
                    "context's fields, not Python internals (names starting with _)" for node, name in _private_names(ast)]
        problems += [f"template {relative} line {unknown.lineno}: {unknown.message}"
                     for unknown in unknown_fields(ast, self.shapes) + impossible_values(ast, self.shapes)]
        if subject_required and "subject" not in template.blocks:
            problems.append(f"template {relative} has no {{% block subject %}}: every email needs a subject")
        for other in referenced:
            if other in self.templates_checked:
                continue
            self.templates_checked.add(other)
            if not (self.templates_dir / other).is_file():
                problems.append(f"template {relative} uses {other}, which is not in {self.templates_dir}")
            else:
                problems += self.compile(other)
        return problems

    # activities

    def do(self, at: StepAt, step: DoStep) -> None:
        registered = self.activities.get(step.do)
        if registered is None:
            known = sorted(self.activities)
            guess = did_you_mean(step.do, known)
            hint = f"did you mean {guess!r}?" if guess else "known activities: " + (", ".join(known) or "none")
            self.add(at.pos("do"), f"unknown activity {step.do!r}; {hint}")
            return
        node = at.node
        with_node = node.get("with") if isinstance(node, CommentedMap) else None
        model = registered.args_model
        if model.model_config.get("extra") != "allow":
            fields = aliases(model)
            for name in step.with_:
                if name not in fields:
                    guess = did_you_mean(name, fields)
                    hint = f"did you mean {guess!r}?" if guess else "it takes: " + (", ".join(fields) or "no arguments")
                    pos = key_pos(with_node, name) if isinstance(with_node, CommentedMap) else at.pos("do")
                    self.add(pos, f"unknown argument {name!r} for {step.do}; {hint}")
        try:
            model.model_validate(dict(step.with_))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = tuple(error["loc"])
                if error["type"] == "extra_forbidden":
                    continue  # reported above, with a did-you-mean
                if error["type"] == "missing":
                    pos = key_pos(node, "with") if isinstance(with_node, CommentedMap) else at.pos("do")
                    self.add(pos, f"{step.do} needs argument {'.'.join(map(str, loc))!r} in 'with:'")
                    continue
                if not isinstance(with_node, CommentedMap):
                    self.add(at.pos("do"), f"{step.do} argument {friendly(error, '.'.join(map(str, loc)))}")
                    continue
                found = locate(with_node, loc, step_tags=False)
                pos = point(found.container, found.key, found.node) if found.container is not None else at.pos("with")
                self.add(pos, f"{step.do} argument {friendly(error, '.'.join(map(str, loc)) or found.field)}")

    # start: targets and cycles

    def starts(self) -> None:
        ids = list(dict.fromkeys(s.id for s in self.file.sequences))
        known = set(ids)
        edges: dict[str, list[tuple[StepAt, str]]] = {}
        started: set[str] = set()
        for seq, steps in zip(self.file.sequences, self.steps):
            for at in steps:
                if not isinstance(at.step, StartStep):
                    continue
                target = at.step.start
                if target not in known:
                    guess = did_you_mean(target, ids)
                    hint = f"did you mean {guess!r}?" if guess else "sequences: " + ", ".join(ids)
                    self.add(at.pos("start"), f"start: no sequence {target!r}; {hint}")
                    continue
                edges.setdefault(seq.id, []).append((at, target))
                if target != seq.id:
                    started.add(target)
        self.cycles(ids, edges)
        for seq, node in zip(self.file.sequences, self.seq_nodes):
            if seq.trigger is None and seq.id not in started:
                self.add(value_pos(node, "id"),
                         "never starts: give it a trigger or start it from another sequence", "warning")

    def cycles(self, ids: list[str], edges: dict[str, list[tuple[StepAt, str]]]) -> None:
        state: dict[str, str] = {}  # "open" while on the stack, then "done"
        stack: list[str] = []

        def visit(seq_id: str) -> None:
            state[seq_id] = "open"
            stack.append(seq_id)
            for at, target in edges.get(seq_id, []):
                if state.get(target) == "open":
                    chain = " → ".join([*stack[stack.index(target):], target])
                    self.add(at.pos("start"), f"start: cycle {chain}; these sequences would start each other forever")
                elif target not in state:
                    visit(target)
            stack.pop()
            state[seq_id] = "done"

        for seq_id in ids:
            if seq_id not in state:
                visit(seq_id)
