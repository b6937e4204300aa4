"""Reading `sequences.yaml` with ruamel.yaml, keeping every node's line and column for messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from keepflow.language.dsl import (
    STEP_KINDS,
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
    step_path,
)
from keepflow.language.problems import START, Report
from keepflow.language.syntax_messages import points_at_the_opening, yaml_message


# Far above any shop's sequences (the shipped file is under 10 KB), far below what hurts: a 50 MB
# file took minutes and hundreds of MB to refuse, one of 738 bytes with nested aliases ("billion
# laughs") expanded past a gigabyte.
MAX_BYTES = 1024 * 1024
MAX_VALUES = 100_000
# The tags YAML's core schema resolves to anyway; any other (`!!python/object`, `!custom`) would be
# silently dropped, so it is refused where it stands.
PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")}


def parse(path: Path, report: Report, source: str | None = None) -> Any:
    """The file at `path`, or `source` (a deployed version's text, reported as that file)."""
    try:
        size = path.stat().st_size if source is None else len(source.encode())
        if size > MAX_BYTES:
            report.add(START, f"the file is {size / 1024 / 1024:.1f} MB; a sequences file may be at most "
                              f"{MAX_BYTES // 1024 // 1024} MB: is this the right file?")
            return None
        data = path.read_bytes() if source is None else source.encode()
    except FileNotFoundError:
        report.add(START, "file not found")
        return None
    except OSError as exc:
        report.add(START, f"cannot read the file: {exc.strerror or exc}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(START, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8")
        return None
    root: Any = None
    try:
        root = YAML(typ="rt").load(text)
    except DuplicateKeyError as exc:
        match = re.search(r'duplicate key "(.*?)"', exc.problem or "")
        key = match.group(1) if match else "?"
        first = f" (the mapping starts at line {exc.context_mark.line + 1})" if exc.context_mark else ""
        report.add(mark(exc), f"duplicate key {key!r}: a key may appear only once in a mapping{first}")
    except MarkedYAMLError as exc:
        pos = mark(exc)
        if points_at_the_opening(exc.problem, exc.context) and exc.context_mark is not None:
            pos = (exc.context_mark.line, exc.context_mark.column)
        report.add(pos, yaml_message(exc.problem, exc.context))
    except YAMLError as exc:
        report.add(START, f"YAML syntax: {exc}")
    return root if root is not None and _only_plain_values(root, report) else None


def _only_plain_values(root: Any, report: Report) -> bool:
    """Refuse tags Keepflow would ignore and aliases that multiply the file: counted as the reader
    will see them (an alias counts again each time it is reached), stopping at the budget."""
    seen = 0
    stack: list[tuple[Any, tuple[int, int]]] = [(root, START)]
    while stack:
        node, pos = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            report.add(START, f"the file holds more than {MAX_VALUES:,} values once its aliases (*name) are "
                              "expanded; write the steps out, or reuse fewer anchors (&name)")
            return False
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag and tag not in PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            report.add(pos, f"YAML tag {shown} is not part of the sequence language; remove it and write the plain value")
            return False
        if isinstance(node, CommentedMap):
            stack.extend((value, value_pos(node, key)) for key, value in node.items())
        elif isinstance(node, CommentedSeq):
            stack.extend((value, value_pos(node, i)) for i, value in enumerate(node))
    return True


def mark(exc: MarkedYAMLError) -> tuple[int, int]:
    mark = exc.problem_mark or exc.context_mark
    return (mark.line, mark.column) if mark is not None else START


def plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python, for pydantic."""
    if isinstance(node, dict):
        # Keys are words in this language; a number or `null` as a key is just an unknown word.
        return {k if isinstance(k, str) else str(plain(k)): plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    if isinstance(node, bool) or type(node).__name__ == "ScalarBoolean":
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if hasattr(node, "value") and type(node).__name__ == "TaggedScalar":
        return plain(node.value)
    return node


# --- positions in the ruamel tree ---------------------------------------------------------------

def node_pos(node: Any, default: tuple[int, int] = START) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line, lc.col
    return default


def key_pos(mapping: Any, key: Any) -> tuple[int, int]:
    try:
        line, col = mapping.lc.key(key)
        return line, col
    except Exception:  # merged (`<<:`) keys have no position of their own
        return node_pos(mapping)


def value_pos(container: Any, key: Any) -> tuple[int, int]:
    """Where the value for `key` (a mapping key or a list index) starts."""
    try:
        if isinstance(container, CommentedSeq):
            line, col = container.lc.item(key)
        else:
            line, col = container.lc.value(key)
        return line, col
    except Exception:
        if isinstance(container, CommentedMap):
            return key_pos(container, key)
        return node_pos(container)


def point(container: Any, key: Any, value: Any) -> tuple[int, int]:
    """A scalar's own position; a block list or mapping is pointed at by its key."""
    if container is None:
        return node_pos(value)
    if (value is None or isinstance(value, (CommentedMap, CommentedSeq))) and isinstance(container, CommentedMap):
        return key_pos(container, key)
    return value_pos(container, key)


_ALIASES = {"if_": "if", "else_": "else", "with_": "with", "as_": "as"}


@dataclass
class Found:
    container: Any  # the mapping or list holding `node`; None for the root
    key: Any  # its key or index there
    node: Any
    field: str | None  # the deepest mapping key on the way, for messages


def locate(root: Any, loc: tuple[Any, ...], step_tags: bool = True) -> Found:
    """Follow a pydantic `loc` into the ruamel tree as far as it goes.

    Elements that are not in the tree are skipped: pydantic adds the discriminator tag of a
    step (`send`, `wait`, ...) after its index, and a union member's name (`list[...]`).
    """
    found = Found(None, None, root, None)
    for index, element in enumerate(loc):
        if (step_tags and element in STEP_KINDS and index > 0 and isinstance(loc[index - 1], int)
                and not isinstance(loc[index - 1], bool) and index < len(loc) - 1):
            continue
        element = _ALIASES.get(element, element) if isinstance(element, str) else element
        node = found.node
        key = find_key(node, element) if isinstance(node, CommentedMap) else _MISSING
        if key is not _MISSING:
            found = Found(node, key, node[key], element if isinstance(element, str) else found.field)
        elif (isinstance(node, CommentedSeq) and isinstance(element, int) and not isinstance(element, bool)
              and 0 <= element < len(node)):
            found = Found(node, element, node[element], found.field)
    return found


_MISSING = object()


def find_key(mapping: CommentedMap, element: Any) -> Any:
    """The key of `mapping` that `element` names (pydantic sees `1:` as the key '1')."""
    if has_key(mapping, element):
        return element
    if isinstance(element, str):
        return next((k for k in mapping if not isinstance(k, str) and str(plain(k)) == element), _MISSING)
    return _MISSING


def has_key(mapping: CommentedMap, key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


@dataclass
class StepAt:
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
        if field is not None and isinstance(node, CommentedMap) and has_key(node, field):
            return value_pos(node, field)
        return value_pos(self.container, self.index)


def steps_at(steps: list[Step], container: Any, prefix: str) -> Iterator[StepAt]:
    if not isinstance(container, CommentedSeq):
        return
    for index, step in enumerate(steps):
        here = StepAt(step_path(prefix, index, step), step, container, index)
        yield here
        node = container[index]
        if not isinstance(node, CommentedMap):
            continue
        # Where each kind keeps its child steps in the YAML (dsl.child_branches says which they are).
        match step:
            case IfStep():
                for key, children in (("then", step.then), ("else", step.else_)):
                    if has_key(node, key):
                        yield from steps_at(children, node[key], f"{here.path}.{key}")
            case SplitStep():
                if isinstance(node.get("split"), CommentedSeq):
                    for variant, variant_node in zip(step.split, node["split"]):
                        if isinstance(variant_node, CommentedMap) and has_key(variant_node, "steps"):
                            yield from steps_at(variant.steps, variant_node["steps"], f"{here.path}.{variant.variant}")
            case WaitForStep():
                if isinstance(step.on_timeout, list):
                    yield from steps_at(step.on_timeout, node.get("on_timeout"), f"{here.path}.on_timeout")
            case SendStep() | WaitStep() | DoStep() | StartStep() | ExitStep():
                pass
            case _:
                assert_never(step)
