"""Load `sequences.yaml`, and say exactly where every mistake in it is.

`check()` collects every problem in a file (YAML syntax, schema, then the cross-references the
schema cannot see: sequence ids, `start:` targets and cycles, activities and their arguments,
templates and expressions), each at the line and column a person must edit. `load()` is the
same, but raises `InvalidSequences` when there is any error, and returns the `Catalog` the
engine runs from. `run_validate()` is `keepflow validate`.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import TemplateSyntaxError, meta
from jinja2 import nodes as jinja_nodes
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from keepflow import dsl, template_rules, validate_extra
from keepflow.dsl import (
    STEP_KINDS,
    ActivityOptions,
    DoStep,
    IfStep,
    SendStep,
    Sequence,
    SequencesFile,
    Snapshot,
    SplitStep,
    StartStep,
    Step,
    Variant,
    WaitForStep,
)
from keepflow.durations import format_duration
from keepflow.expressions import ExpressionError, check_syntax, refusal, refused
from keepflow.rendering import FALLBACK_LOCALE, Renderer, template_path

if TYPE_CHECKING:
    from activities.registry import Registered

Severity = Literal["error", "warning"]

# A `wait_for` longer than this is more likely a wrong unit than a plan.
LONG_WAIT = timedelta(days=90)


@dataclass(frozen=True, order=True)
class Problem:
    path: Path
    line: int  # 1-based
    column: int  # 1-based
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"

    def format(self) -> str:
        """`PATH:LINE:COL: message`, with `warning: ` after the position for a warning."""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}:{self.column}: {prefix}{self.message}"


class InvalidSequences(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.format() for p in problems))

    def __str__(self) -> str:
        return "\n".join(p.format() for p in self.problems)


@dataclass(frozen=True)
class Catalog:
    path: Path
    templates_dir: Path
    file: SequencesFile
    # Registered activities' own limits, by name (`@activity(..., timeout=, max_attempts=)`).
    activities: dict[str, ActivityOptions] = field(default_factory=dict)

    @property
    def sequences(self) -> dict[str, Sequence]:
        return self.file.by_id()

    def snapshot(self, sequence_id: str) -> Snapshot:
        return Snapshot.of(sequence_id, self.sequences, self.file.rules, self.activities)

    def triggered_by(self, event_type: str) -> list[Sequence]:
        return [s for s in self.file.sequences if s.trigger == event_type]

    def interested_in(self, event_type: str) -> list[Sequence]:
        """Sequences whose runs `wait_for`, `exit_on` or have as `goal` this event type."""
        return [s for s in self.file.sequences if event_type in s.events_heard()]

    def inactivity_sequences(self) -> list[Sequence]:
        return [s for s in self.file.sequences if s.inactivity is not None]


def default_templates_dir(path: Path) -> Path:
    return path.parent / "templates"


def load(path: Path, templates_dir: Path | None = None,
         activities: dict[str, Registered] | None = None) -> Catalog:
    catalog, problems = check(path, templates_dir, activities)
    if catalog is None or any(p.severity == "error" for p in problems):
        raise InvalidSequences(problems)
    return catalog


def check(path: Path, templates_dir: Path | None = None,
          activities: dict[str, Registered] | None = None) -> tuple[Catalog | None, list[Problem]]:
    """Every problem in the file, in line order; the Catalog only when there is no error."""
    path = Path(path)
    templates_dir = Path(templates_dir) if templates_dir is not None else default_templates_dir(path)
    report = _Report(path)
    tree = _parse(path, report)
    if report.problems:
        return None, report.sorted()
    file = _validate_schema(tree, report)
    if file is None:
        return None, report.sorted()
    if activities is None:
        from activities.registry import discover

        activities = discover()
    _Semantics(file, tree, templates_dir, activities, report).run()
    problems = report.sorted()
    if any(p.severity == "error" for p in problems):
        return None, problems
    limits = {name: r.options for name, r in activities.items() if r.options is not None}
    return Catalog(path=path, templates_dir=templates_dir, file=file, activities=limits), problems


def run_validate(path: Path, templates: Path | None) -> int:
    """`keepflow validate`: problems to stderr (exit 1 on any error), else a summary to stdout."""
    path = Path(path)
    templates_dir = Path(templates) if templates is not None else default_templates_dir(path)
    catalog, problems = check(path, templates_dir)
    for problem in problems:
        print(problem.format(), file=sys.stderr)
    if catalog is None:
        errors = sum(p.severity == "error" for p in problems)
        print(f"{path}: {_plural(errors, 'error')}", file=sys.stderr)
        return 1
    steps = sum(1 for s in catalog.file.sequences for _ in s.walk())
    files, locales = _template_stats(catalog)
    warnings = len(problems)
    suffix = f" ({_plural(warnings, 'warning')})" if warnings else ""
    print(f"{path}: {_plural(len(catalog.file.sequences), 'sequence')}, {_plural(steps, 'step')}, "
          f"{_plural(files, 'template')} in {_plural(locales, 'locale')} — OK{suffix}")
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _template_stats(catalog: Catalog) -> tuple[int, int]:
    used = {(s.send, s.template) for seq in catalog.file.sequences for _, s in seq.walk() if isinstance(s, SendStep)}
    locales: set[str] = set()
    for channel, name in used:
        locales.update(_locale_files(catalog.templates_dir, channel, name))
    return len(used), len(locales)


# --- reading the YAML ---------------------------------------------------------------------------

class _Report:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[Problem] = []

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None:
        """`pos` is ruamel's 0-based (line, column)."""
        self.problems.append(Problem(self.path, pos[0] + 1, pos[1] + 1, message, severity))

    def sorted(self) -> list[Problem]:
        return sorted(set(self.problems))


_START = (0, 0)


def _parse(path: Path, report: _Report) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.add(_START, "file not found")
        return None
    except OSError as exc:
        report.add(_START, f"cannot read the file: {exc.strerror or exc}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(_START, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8")
        return None
    try:
        return YAML(typ="rt").load(text)
    except DuplicateKeyError as exc:
        match = re.search(r'duplicate key "(.*?)"', exc.problem or "")
        key = match.group(1) if match else "?"
        first = f" (the mapping starts at line {exc.context_mark.line + 1})" if exc.context_mark else ""
        report.add(_mark(exc), f"duplicate key {key!r}: a key may appear only once in a mapping{first}")
    except MarkedYAMLError as exc:
        message = f"YAML syntax: {exc.problem or exc.context or 'invalid YAML'}"
        if exc.problem and exc.context:
            message += f" ({exc.context})"
        if "\\t" in message or "\t" in message:
            message += "; indent with spaces, not tabs"
        report.add(_mark(exc), message)
    except YAMLError as exc:
        report.add(_START, f"YAML syntax: {exc}")
    return None


def _mark(exc: MarkedYAMLError) -> tuple[int, int]:
    mark = exc.problem_mark or exc.context_mark
    return (mark.line, mark.column) if mark is not None else _START


def _plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python, for pydantic."""
    if isinstance(node, dict):
        # Keys are words in this language; a number or `null` as a key is just an unknown word.
        return {k if isinstance(k, str) else str(_plain(k)): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or type(node).__name__ == "ScalarBoolean":
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if hasattr(node, "value") and type(node).__name__ == "TaggedScalar":
        return _plain(node.value)
    return node


# --- positions in the ruamel tree ---------------------------------------------------------------

def _node_pos(node: Any, default: tuple[int, int] = _START) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line, lc.col
    return default


def _key_pos(mapping: Any, key: Any) -> tuple[int, int]:
    try:
        line, col = mapping.lc.key(key)
        return line, col
    except Exception:  # merged (`<<:`) keys have no position of their own
        return _node_pos(mapping)


def _value_pos(container: Any, key: Any) -> tuple[int, int]:
    """Where the value for `key` (a mapping key or a list index) starts."""
    try:
        if isinstance(container, CommentedSeq):
            line, col = container.lc.item(key)
        else:
            line, col = container.lc.value(key)
        return line, col
    except Exception:
        if isinstance(container, CommentedMap):
            return _key_pos(container, key)
        return _node_pos(container)


def _point(container: Any, key: Any, value: Any) -> tuple[int, int]:
    """A scalar's own position; a block list or mapping is pointed at by its key."""
    if container is None:
        return _node_pos(value)
    if (value is None or isinstance(value, (CommentedMap, CommentedSeq))) and isinstance(container, CommentedMap):
        return _key_pos(container, key)
    return _value_pos(container, key)


_ALIASES = {"if_": "if", "else_": "else", "with_": "with", "as_": "as"}


@dataclass
class _Found:
    container: Any  # the mapping or list holding `node`; None for the root
    key: Any  # its key or index there
    node: Any
    field: str | None  # the deepest mapping key on the way, for messages


def _locate(root: Any, loc: tuple[Any, ...], step_tags: bool = True) -> _Found:
    """Follow a pydantic `loc` into the ruamel tree as far as it goes.

    Elements that are not in the tree are skipped: pydantic adds the discriminator tag of a
    step (`send`, `wait`, ...) after its index, and a union member's name (`list[...]`).
    """
    found = _Found(None, None, root, None)
    for index, element in enumerate(loc):
        if (step_tags and element in STEP_KINDS and index > 0 and isinstance(loc[index - 1], int)
                and not isinstance(loc[index - 1], bool) and index < len(loc) - 1):
            continue
        element = _ALIASES.get(element, element) if isinstance(element, str) else element
        node = found.node
        key = _find_key(node, element) if isinstance(node, CommentedMap) else _MISSING
        if key is not _MISSING:
            found = _Found(node, key, node[key], element if isinstance(element, str) else found.field)
        elif (isinstance(node, CommentedSeq) and isinstance(element, int) and not isinstance(element, bool)
              and 0 <= element < len(node)):
            found = _Found(node, element, node[element], found.field)
    return found


_MISSING = object()


def _find_key(mapping: CommentedMap, element: Any) -> Any:
    """The key of `mapping` that `element` names (pydantic sees `1:` as the key '1')."""
    if _has_key(mapping, element):
        return element
    if isinstance(element, str):
        return next((k for k in mapping if not isinstance(k, str) and str(_plain(k)) == element), _MISSING)
    return _MISSING


def _has_key(mapping: CommentedMap, key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


# --- schema ---------------------------------------------------------------------------------------

def _pattern_of(model: type[BaseModel], field: str) -> str | None:
    return next((m.pattern for m in model.model_fields[field].metadata if getattr(m, "pattern", None)), None)


_PATTERN_HELP = {
    dsl._NAME: "{value} is not a valid name; use lowercase words joined by underscores, "
               "starting with a letter (e.g. order_followup)",
    dsl._EVENT_TYPE: "{value} is not an event type; write lowercase words joined by dots, e.g. order.shipped",
    _pattern_of(SendStep, "template"):
        "{value} is not a template name; write the name only, without channel, locale or extension "
        "(lowercase letters, digits, _, - and /), e.g. order_shipped",
}

_FIELD_HINTS = {
    "category": " (transactional or marketing)",
    "timeout": " (how long to wait, e.g. 7d)",
    "weight": " (e.g. 50)",
    "steps": " (a list of steps)",
    "sequences": " (a list of sequences)",
}


def _step_class_by_kind() -> dict[str, type[BaseModel]]:
    return {kind: cls for cls, kind in dsl._KIND_BY_CLASS.items()}


def _model_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str]:
    """The model (and how to name it) that owns the mapping at `loc` of a SequencesFile."""
    if not loc:
        return SequencesFile, "the top level of the file"
    if loc[-1] in STEP_KINDS and len(loc) >= 2 and isinstance(loc[-2], int):
        kind = loc[-1]
        article = "an" if kind[0] in "aeiou" else "a"
        return _step_class_by_kind()[kind], f"{article} {kind} step"
    if len(loc) == 2 and loc[0] == "sequences" and isinstance(loc[1], int):
        return Sequence, "a sequence"
    if len(loc) >= 2 and loc[-2] == "split" and isinstance(loc[-1], int):
        return Variant, "a split variant"
    if len(loc) >= 2 and loc[-2:] == ("trigger", "inactive_for"):
        return dsl.InactivityTrigger, "an inactivity trigger"
    return None, "this mapping"


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_AT_LEAST = {"steps": "one step", "split": "two variants", "sequences": "one sequence"}


def _did_you_mean(word: Any, choices: list[str] | tuple[str, ...]) -> str | None:
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _yaml_type(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _friendly(error: dict[str, Any], field: str | None) -> str:
    """A pydantic error about one value, in words a marketer can act on."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    name = field or "value"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        message = f"{name}: expected {expected}, got {value!r}"
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        guess = _did_you_mean(value, options)
        return message + (f"; did you mean {guess!r}?" if guess else "")
    if kind == "string_pattern_mismatch":
        template = _PATTERN_HELP.get(ctx.get("pattern"))
        if template:
            return f"{name}: " + template.format(value=repr(value))
        return f"{name}: {value!r} does not match the pattern {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        return f"{name}: {message}"
    if value is None and kind.endswith("_type"):
        return f"{name} has no value; give it one"
    if kind == "string_type":
        return f"{name}: expected text, got {_yaml_type(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{name}: expected a whole number, got {_yaml_type(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"{name}: expected a number, got {_yaml_type(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name}: expected true or false, got {_yaml_type(value)}"
    if kind == "list_type":
        return f"{name}: expected a list (one '- item' per line), got {_yaml_type(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{name}: expected a mapping ('key: value' lines), got {_yaml_type(value)}"
    if kind == "string_too_short":
        return f"{name} is empty" if ctx.get("min_length") == 1 else f"{name}: needs at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"{name}: at most {ctx.get('max_length')} characters, got {len(str(value))}"
    if kind == "too_short" and name in _AT_LEAST:
        return f"{name}: needs at least {_AT_LEAST[name]}, has {ctx.get('actual_length')}"
    if kind == "too_short":
        return f"{name}: needs at least {ctx.get('min_length')} item{'s' if ctx.get('min_length') != 1 else ''}, has {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"{name}: at most {ctx.get('max_length')} items, has {ctx.get('actual_length')}"
    bounds = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
              "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"{name}: must be {words} {_num(ctx.get(key))}, got {_num(value)}"
    return f"{name}: {error['msg']} (got {_yaml_type(value)})"


def _union_tag(element: Any) -> bool:
    return isinstance(element, str) and "[" in element


def _prune_union_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of a union's alternatives (`on_timeout`: a word or a list), keep the one the input meant."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for error in errors:
        loc = error["loc"]
        tag_at = next((i for i, e in enumerate(loc) if _union_tag(e)), None)
        if tag_at is not None:
            groups.setdefault(loc[:tag_at], []).append(error)
    drop: set[int] = set()
    for prefix, members in groups.items():
        at = len(prefix)
        branches = {e["loc"][at] for e in members}
        lists = {b for b in branches if b.startswith("list[")}
        if not lists or lists == branches:
            continue
        value_is_list = any(isinstance(e.get("input"), list) and len(e["loc"]) == len(prefix) + 1 for e in members)
        for error in members:
            if error["loc"][at].startswith("list[") != value_is_list:
                drop.add(id(error))
            elif error["type"] == "literal_error":
                error["ctx"] = {**error.get("ctx", {}),
                                "expected": error["ctx"]["expected"] + ", or a list of steps"}
    return [e for e in errors if id(e) not in drop]


def _validate_schema(tree: Any, report: _Report) -> SequencesFile | None:
    if tree is None:
        report.add(_START, "the file is empty; it needs a 'sequences:' list")
        return None
    if not isinstance(tree, CommentedMap):
        report.add(_node_pos(tree), "the file must be a mapping with 'sequences:' (and optionally 'brand:') at the top")
        return None
    try:
        return SequencesFile.model_validate(_plain(tree))
    except ValidationError as exc:
        errors = _prune_union_errors(exc.errors(include_url=False))
    # A misspelt field is reported once, as unknown with its correction, not also as missing.
    misspelt: set[tuple[Any, ...]] = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            model, _ = _model_at(error["loc"][:-1])
            guess = _did_you_mean(error["loc"][-1], _aliases(model)) if model else None
            if guess:
                misspelt.add((*error["loc"][:-1], guess))
    for error in errors:
        if error["type"] == "missing" and tuple(error["loc"]) in misspelt:
            continue
        pos, message = _schema_problem(tree, error)
        report.add(pos, message)
    return None


def _schema_problem(tree: Any, error: dict[str, Any]) -> tuple[tuple[int, int], str]:
    loc = tuple(error["loc"])
    kind = error["type"]
    found = _locate(tree, loc)
    if kind == "extra_forbidden":
        key = loc[-1]
        model, what = _model_at(loc[:-1])
        pos = _key_pos(found.container, found.key) if isinstance(found.container, CommentedMap) else _node_pos(found.node)
        if model is not None and what.endswith(" step") and key in STEP_KINDS:
            return pos, f"{key!r} cannot be in {what}: a step has exactly one kind; make it a step of its own"
        allowed = _aliases(model) if model else []
        guess = _did_you_mean(key, allowed)
        hint = f"did you mean {guess!r}?" if guess else "allowed: " + ", ".join(allowed)
        return pos, f"unknown field {key!r} in {what}; {hint}"
    if kind == "missing":
        field = loc[-1]
        _, what = _model_at(loc[:-1])
        subject = "the file" if loc[:-1] == () else what
        return _node_pos(found.node, _point(found.container, found.key, found.node)), \
            f"{subject} needs {field!r}{_FIELD_HINTS.get(field, '')}"
    if kind == "unknown_step":
        return _unknown_step(found, error.get("input"))
    return _point(found.container, found.key, found.node), _friendly(error, found.field)


def _unknown_step(found: _Found, value: Any) -> tuple[tuple[int, int], str]:
    message = "this step has no kind; start it with one of: " + ", ".join(STEP_KINDS)
    pos = _point(found.container, found.key, found.node)
    node = found.node
    if isinstance(node, CommentedMap):
        pos = _node_pos(node, pos)
        for key in node:
            guess = _did_you_mean(key, STEP_KINDS)
            if guess:
                return _key_pos(node, key), f"{message}; did you mean {guess!r} instead of {key!r}?"
    elif isinstance(value, str):
        word, _, rest = value.strip().partition(" ")
        if word in STEP_KINDS and rest:
            return pos, f"{message}; did you mean '{word}: {rest}' (with a colon)?"
        guess = _did_you_mean(value.strip(), STEP_KINDS)
        if guess:
            return pos, f"{message}; did you mean {guess!r}?"
    return pos, message


# --- semantics ------------------------------------------------------------------------------------

@dataclass
class _StepAt:
    """A validated step and where it is written: `container[index]` in the ruamel tree."""

    path: str
    step: Step
    container: CommentedSeq
    index: int

    @property
    def node(self) -> Any:
        return self.container[self.index]

    def pos(self, field: str | None = None) -> tuple[int, int]:
        """The value of `field` in this step, or the step itself."""
        node = self.node
        if field is not None and isinstance(node, CommentedMap) and _has_key(node, field):
            return _value_pos(node, field)
        return _value_pos(self.container, self.index)


def _steps_at(steps: list[Step], container: Any, prefix: str) -> Iterator[_StepAt]:
    if not isinstance(container, CommentedSeq):
        return
    for index, step in enumerate(steps):
        here = _StepAt(dsl.step_path(prefix, index, step), step, container, index)
        yield here
        node = container[index]
        if not isinstance(node, CommentedMap):
            continue
        if isinstance(step, IfStep):
            for key, children in (("then", step.then), ("else", step.else_)):
                if _has_key(node, key):
                    yield from _steps_at(children, node[key], f"{here.path}.{key}")
        elif isinstance(step, SplitStep) and isinstance(node.get("split"), CommentedSeq):
            for variant, variant_node in zip(step.split, node["split"]):
                if isinstance(variant_node, CommentedMap) and _has_key(variant_node, "steps"):
                    yield from _steps_at(variant.steps, variant_node["steps"], f"{here.path}.{variant.variant}")
        elif isinstance(step, WaitForStep) and isinstance(step.on_timeout, list):
            yield from _steps_at(step.on_timeout, node.get("on_timeout"), f"{here.path}.on_timeout")


def _private_names(ast: jinja_nodes.Template) -> Iterator[tuple[jinja_nodes.Node, str]]:
    """`x.__class__`, `x['_secret']`, `_private`: what the sandbox refuses at send time, caught here."""
    for node in ast.find_all((jinja_nodes.Getattr, jinja_nodes.Getitem, jinja_nodes.Name)):
        if isinstance(node, jinja_nodes.Getattr):
            name = node.attr
        elif isinstance(node, jinja_nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, jinja_nodes.Const) and isinstance(node.arg.value, str) else ""
        else:
            name = node.name
        if name.startswith("_"):
            yield node, name


def _locale_files(templates_dir: Path, channel: str, name: str) -> dict[str, Path]:
    """{locale: file} of every variant of a template that exists."""
    english = templates_dir / template_path(channel, name, FALLBACK_LOCALE)
    folder, base, ext = english.parent, name.rsplit("/", 1)[-1], english.suffix
    pattern = re.compile(rf"^{re.escape(base)}\.([^./\\]+){re.escape(ext)}$")
    if not folder.is_dir():
        return {}
    found = {}
    for file in sorted(folder.iterdir()):
        match = pattern.match(file.name)
        if match and file.is_file():
            found[match.group(1)] = file
    return found


class _Semantics:
    def __init__(self, file: SequencesFile, tree: CommentedMap, templates_dir: Path,
                 activities: dict[str, Registered], report: _Report):
        self.file = file
        self.tree = tree
        self.templates_dir = templates_dir
        self.activities = activities
        self.report = report
        self.seq_nodes: list[CommentedMap] = list(tree["sequences"])
        self.steps: list[list[_StepAt]] = [
            list(_steps_at(seq.steps, node.get("steps"), "")) for seq, node in zip(file.sequences, self.seq_nodes)
        ]
        self.renderer: Renderer | None = None
        self.templates_checked: set[str] = set()

    def run(self) -> None:
        self.sequence_ids()
        for seq, node, steps in zip(self.file.sequences, self.seq_nodes, self.steps):
            if _has_key(node, "key"):
                self.expression(node, "key", seq.key)
            self.step_ids(seq, steps)
            for at in steps:
                self.step(at)
                for problem in template_rules.marketing_email_problems(seq, at.step, self.templates_dir):
                    self.add(at.pos("template"), problem)
        validate_extra.check(self)
        self.starts()

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None:
        self.report.add(pos, message, severity)

    def sequence_ids(self) -> None:
        first: dict[str, int] = {}
        for seq, node in zip(self.file.sequences, self.seq_nodes):
            pos = _value_pos(node, "id")
            if seq.id in first:
                self.add(pos, f"duplicate sequence id {seq.id!r} (first defined at line {first[seq.id]})")
            else:
                first[seq.id] = pos[0] + 1

    def step_ids(self, seq: Sequence, steps: list[_StepAt]) -> None:
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
            self.add(_value_pos(node, field), f"{field}: {exc}")
            return
        for name in names:
            self.add(_value_pos(node, field), f"{field}: {refusal(name)}")

    def step(self, at: _StepAt) -> None:
        step = at.step
        if isinstance(step, SendStep):
            self.send(at, step)
        elif isinstance(step, DoStep):
            self.do(at, step)
        elif isinstance(step, IfStep):
            self.expression(at.node, "if", step.if_)
        elif isinstance(step, WaitForStep) and step.timeout > LONG_WAIT:
            self.add(at.pos("timeout"),
                     f"wait_for timeout {format_duration(step.timeout)} is longer than 90 days; "
                     "is the unit right? (s, m, h, d, w)", "warning")

    # templates

    def send(self, at: _StepAt, step: SendStep) -> None:
        english = template_path(step.send, step.template, FALLBACK_LOCALE)
        pos = at.pos("template")
        if not (self.templates_dir / english).is_file():
            self.add(pos, f"no template {english} in {self.templates_dir} "
                          "(every locale falls back to English, so the English one is required)")
        for locale in _locale_files(self.templates_dir, step.send, step.template):
            relative = template_path(step.send, step.template, locale)
            if relative in self.templates_checked:
                continue
            self.templates_checked.add(relative)
            for problem in self.compile(relative, subject_required=step.send == "email"):
                self.add(pos, problem)

    def compile(self, relative: str, subject_required: bool = False) -> list[str]:
        """Jinja syntax errors in a template and in what it extends, includes or imports."""
        if self.renderer is None:
            self.renderer = Renderer(self.templates_dir)
        env = self.renderer.env
        try:
            source, _, _ = env.loader.get_source(env, relative)
            ast = env.parse(source, relative)
            referenced = [r for r in meta.find_referenced_templates(ast) if r]
            template = env.get_template(relative)
        except TemplateSyntaxError as exc:
            return [f"template {exc.name or relative} line {exc.lineno}: {exc.message}"]
        except UnicodeDecodeError:
            return [f"template {relative} is not UTF-8 text; save it as UTF-8"]
        except Exception as exc:  # anything Jinja cannot compile is a content mistake
            return [f"template {relative}: {exc}"]
        problems = [f"template {relative} line {node.lineno}: '{name}' is not allowed; templates may use the "
                    "context's fields, not Python internals (names starting with _)" for node, name in _private_names(ast)]
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

    def do(self, at: _StepAt, step: DoStep) -> None:
        registered = self.activities.get(step.do)
        if registered is None:
            known = sorted(self.activities)
            guess = _did_you_mean(step.do, known)
            hint = f"did you mean {guess!r}?" if guess else "known activities: " + (", ".join(known) or "none")
            self.add(at.pos("do"), f"unknown activity {step.do!r}; {hint}")
            return
        node = at.node
        with_node = node.get("with") if isinstance(node, CommentedMap) else None
        model = registered.args_model
        if model.model_config.get("extra") != "allow":
            fields = _aliases(model)
            for name in step.with_:
                if name not in fields:
                    guess = _did_you_mean(name, fields)
                    hint = f"did you mean {guess!r}?" if guess else "it takes: " + (", ".join(fields) or "no arguments")
                    pos = _key_pos(with_node, name) if isinstance(with_node, CommentedMap) else at.pos("do")
                    self.add(pos, f"unknown argument {name!r} for {step.do}; {hint}")
        try:
            model.model_validate(dict(step.with_))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = tuple(error["loc"])
                if error["type"] == "extra_forbidden":
                    continue  # reported above, with a did-you-mean
                if error["type"] == "missing":
                    pos = _key_pos(node, "with") if isinstance(with_node, CommentedMap) else at.pos("do")
                    self.add(pos, f"{step.do} needs argument {'.'.join(map(str, loc))!r} in 'with:'")
                    continue
                if not isinstance(with_node, CommentedMap):
                    self.add(at.pos("do"), f"{step.do} argument {_friendly(error, '.'.join(map(str, loc)))}")
                    continue
                found = _locate(with_node, loc, step_tags=False)
                pos = _point(found.container, found.key, found.node) if found.container is not None else at.pos("with")
                self.add(pos, f"{step.do} argument {_friendly(error, '.'.join(map(str, loc)) or found.field)}")

    # start: targets and cycles

    def starts(self) -> None:
        ids = list(dict.fromkeys(s.id for s in self.file.sequences))
        known = set(ids)
        edges: dict[str, list[_StepAt]] = {}
        started: set[str] = set()
        for seq, steps in zip(self.file.sequences, self.steps):
            for at in steps:
                if not isinstance(at.step, StartStep):
                    continue
                target = at.step.start
                if target not in known:
                    guess = _did_you_mean(target, ids)
                    hint = f"did you mean {guess!r}?" if guess else "sequences: " + ", ".join(ids)
                    self.add(at.pos("start"), f"start: no sequence {target!r}; {hint}")
                    continue
                edges.setdefault(seq.id, []).append(at)
                if target != seq.id:
                    started.add(target)
        self.cycles(ids, edges)
        for seq, node in zip(self.file.sequences, self.seq_nodes):
            if seq.trigger is None and seq.id not in started:
                self.add(_value_pos(node, "id"),
                         "never starts: give it a trigger or start it from another sequence", "warning")

    def cycles(self, ids: list[str], edges: dict[str, list[_StepAt]]) -> None:
        state: dict[str, str] = {}  # "open" while on the stack, then "done"
        stack: list[str] = []

        def visit(seq_id: str) -> None:
            state[seq_id] = "open"
            stack.append(seq_id)
            for at in edges.get(seq_id, []):
                target = at.step.start
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
