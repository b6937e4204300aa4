"""Pydantic's validation errors for `sequences.yaml`, said in a marketer's words at the right position."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap

from keepflow.language import dsl
from keepflow.language.dsl import STEP_KINDS, SendStep, Sequence, SequencesFile, Variant
from keepflow.language.problems import START, Report
from keepflow.language.yaml_source import Found, key_pos, locate, node_pos, plain, point


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


def step_class_by_kind() -> dict[str, type[BaseModel]]:
    return dict(dsl.STEP_CLASS_BY_KIND)


def _model_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str]:
    """The model (and how to name it) that owns the mapping at `loc` of a SequencesFile."""
    if not loc:
        return SequencesFile, "the top level of the file"
    if loc[-1] in STEP_KINDS and len(loc) >= 2 and isinstance(loc[-2], int):
        kind = loc[-1]
        article = "an" if kind[0] in "aeiou" else "a"
        return step_class_by_kind()[kind], f"{article} {kind} step"
    if len(loc) == 2 and loc[0] == "sequences" and isinstance(loc[1], int):
        return Sequence, "a sequence"
    if len(loc) >= 2 and loc[-2] == "split" and isinstance(loc[-1], int):
        return Variant, "a split variant"
    if len(loc) >= 2 and loc[-2:] == ("trigger", "inactive_for"):
        return dsl.InactivityTrigger, "an inactivity trigger"
    return None, "this mapping"


def aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_AT_LEAST = {"steps": "one step", "split": "two variants", "sequences": "one sequence"}


def did_you_mean(word: Any, choices: list[str] | tuple[str, ...]) -> str | None:
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


def friendly(error: Mapping[str, Any], field: str | None) -> str:
    """A pydantic error about one value, in words a marketer can act on."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    name = field or "value"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        message = f"{name}: expected {expected}, got {value!r}"
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        guess = did_you_mean(value, options)
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


def validate_schema(tree: Any, report: Report) -> SequencesFile | None:
    if tree is None:
        report.add(START, "the file is empty; it needs a 'sequences:' list")
        return None
    if not isinstance(tree, CommentedMap):
        report.add(node_pos(tree), "the file must be a mapping with 'sequences:' (and optionally 'brand:') at the top")
        return None
    try:
        return SequencesFile.model_validate(plain(tree))
    except ValidationError as exc:
        # pydantic's ErrorDetails are plain dicts, which this module reads and amends as such.
        errors = _prune_union_errors(exc.errors(include_url=False))  # type: ignore[arg-type]
    # A misspelt field is reported once, as unknown with its correction, not also as missing.
    misspelt: set[tuple[Any, ...]] = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            model, _ = _model_at(error["loc"][:-1])
            guess = did_you_mean(error["loc"][-1], aliases(model)) if model else None
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
    found = locate(tree, loc)
    if kind == "extra_forbidden":
        key = loc[-1]
        model, what = _model_at(loc[:-1])
        pos = key_pos(found.container, found.key) if isinstance(found.container, CommentedMap) else node_pos(found.node)
        if model is not None and what.endswith(" step") and key in STEP_KINDS:
            return pos, f"{key!r} cannot be in {what}: a step has exactly one kind; make it a step of its own"
        allowed = aliases(model) if model else []
        guess = did_you_mean(key, allowed)
        hint = f"did you mean {guess!r}?" if guess else "allowed: " + ", ".join(allowed)
        return pos, f"unknown field {key!r} in {what}; {hint}"
    if kind == "missing":
        field = loc[-1]
        _, what = _model_at(loc[:-1])
        subject = "the file" if loc[:-1] == () else what
        return node_pos(found.node, point(found.container, found.key, found.node)), \
            f"{subject} needs {field!r}{_FIELD_HINTS.get(field, '')}"
    if kind == "unknown_step":
        return _unknown_step(found, error.get("input"))
    return point(found.container, found.key, found.node), friendly(error, found.field)


def _unknown_step(found: Found, value: Any) -> tuple[tuple[int, int], str]:
    message = "this step has no kind; start it with one of: " + ", ".join(STEP_KINDS)
    pos = point(found.container, found.key, found.node)
    node = found.node
    if isinstance(node, CommentedMap):
        pos = node_pos(node, pos)
        for key in node:
            guess = did_you_mean(key, STEP_KINDS)
            if guess:
                return key_pos(node, key), f"{message}; did you mean {guess!r} instead of {key!r}?"
    elif isinstance(value, str):
        word, _, rest = value.strip().partition(" ")
        if word in STEP_KINDS and rest:
            return pos, f"{message}; did you mean '{word}: {rest}' (with a colon)?"
        guess = did_you_mean(value.strip(), STEP_KINDS)
        if guess:
            return pos, f"{message}; did you mean {guess!r}?"
    return pos, message
