"""The fields of what every run's context holds, so `keepflow validate` can refuse a misspelt one.

`customer.firstname` renders as nothing in a preview, but fails the send in front of a customer
(templates are strict). The shapes below are the runtime's event models and RFM profile, written
out here because the language may not import the runtime; tests/test_validate_extra.py holds
them to the real ones. An `as:` name has the fields of what its step keeps (keepflow/language/as_names.py).
A part whose keys the shop decides (`event.data`, `customer.consents`, the result of an activity
that returns a dict) is not checked."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from jinja2 import nodes

from keepflow.language.schema_errors import did_you_mean


@dataclass(frozen=True)
class ListOf:
    item: Shape


# A mapping with fixed keys is checked; None is anything (not checked).
Shape = Union[Mapping[str, "Shape"], ListOf, None]

# The values the RFM scores give (keepflow.insights.rfm), best first as `keepflow segments` lists them.
SEGMENTS: tuple[str, ...] = (
    "champions", "loyal", "potential_loyalist", "new", "need_attention",
    "at_risk", "cant_lose", "hibernating", "lost", "prospect",
)
LEVELS: tuple[str, ...] = ("advocate", "repeat", "first_time", "none")
FITS: tuple[str, ...] = ("retain", "grow", "exit")
# A field with a fixed set of values: a comparison with any other is never true.
VALUES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("customer", "rfm", "segment"): SEGMENTS,
    ("customer", "rfm", "level"): LEVELS,
    ("customer", "rfm", "fit"): FITS,
}

RFM: dict[str, Shape] = dict.fromkeys(
    ("recency_days", "frequency", "monetary", "r", "f", "m", "segment", "level", "fit"))
CUSTOMER: dict[str, Shape] = {
    **dict.fromkeys(("id", "email", "phone", "line_user_id", "first_name", "locale", "timezone", "consents")),
    "rfm": RFM,
}
LINE_ITEM: dict[str, Shape] = dict.fromkeys(("sku", "title", "quantity", "price"))
ORDER: dict[str, Shape] = {
    **dict.fromkeys(("id", "number", "total", "currency", "discount_codes")),
    "items": ListOf(LINE_ITEM),
}
EVENT: dict[str, Shape] = dict.fromkeys(("id", "type", "occurred_at", "data"))
# What a `wait_for` keeps under its `as:` name: the event as the router signals it to the run.
KEPT_EVENT: dict[str, Shape] = dict.fromkeys(("id", "type", "occurred_at", "data"))


class Explained(dict[str, Shape]):
    """Fields with a reason to give when one is missing: a kept event has no `order`, and the
    marketer who expects one needs to know why, not only what it has."""

    def __init__(self, fields: Mapping[str, Shape], why: str):
        super().__init__(fields)
        self.why = why


# `brand:` is the shop's to fill in, and the shipped layouts read fields a test file leaves out:
# only a name close to one it has is taken for a typo.
_TYPOS_ONLY = frozenset({"brand"})
# A run's context is plain dicts: `customer.get('first_name')` is a method, not a missing field.
_MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})


def context_shapes(brand: Mapping[str, Any]) -> dict[str, Shape]:
    return {"customer": CUSTOMER, "order": ORDER, "event": EVENT, "brand": _shape_of(brand)}


def _shape_of(value: Any) -> Shape:
    if isinstance(value, Mapping):
        return {str(k): _shape_of(v) for k, v in value.items()}
    return None


@dataclass(frozen=True)
class UnknownField:
    lineno: int
    message: str


def unknown_fields(tree: nodes.Node, roots: Mapping[str, Shape]) -> list[UnknownField]:
    """Every `a.b.c` in `tree` (a template or an expression) that names a field its shape lacks."""
    # A name the template assigns itself (`{% set %}`, a macro's argument) is not the context's.
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    if isinstance(tree, nodes.Name) and tree.ctx in ("store", "param"):
        stored.add(tree.name)
    scope = {name: shape for name, shape in roots.items() if name not in stored}
    return list(dict.fromkeys(_visit(tree, scope)))


def _visit(node: nodes.Node, scope: Mapping[str, Shape]) -> Iterator[UnknownField]:
    if isinstance(node, nodes.For):
        yield from _visit(node.iter, scope)
        inner = dict(scope)
        if isinstance(node.target, nodes.Name):
            iterated = _resolve(node.iter, scope)
            if isinstance(iterated, ListOf) and iterated.item is not None:
                inner[node.target.name] = iterated.item
        for child in [*node.body, *node.else_, *([node.test] if node.test is not None else [])]:
            yield from _visit(child, inner)
        return
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        chain, base = _chain(node)
        if isinstance(base, nodes.Name):
            found = _check(base.name, chain, scope, node.lineno)
            if found is not None:
                yield found
        else:
            yield from _visit(base, scope)
        for part in _accesses(node):
            if isinstance(part, nodes.Getitem):
                yield from _visit(part.arg, scope)
        return
    for child in node.iter_child_nodes():
        yield from _visit(child, scope)


def _accesses(node: nodes.Node) -> Iterator[nodes.Getattr | nodes.Getitem]:
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        yield node
        node = node.node


def _chain(node: nodes.Node) -> tuple[list[str | None], nodes.Node]:
    """(`['rfm', 'level']`, the `customer` Name) for `customer.rfm.level`; None for `x[expr]`."""
    parts: list[str | None] = []
    for access in _accesses(node):
        if isinstance(access, nodes.Getattr):
            parts.append(access.attr)
        elif isinstance(access, nodes.Getitem):
            arg = access.arg
            parts.append(arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None)
        node = access.node
    return parts[::-1], node


def _resolve(node: nodes.Node, scope: Mapping[str, Shape]) -> Shape:
    chain, base = _chain(node)
    if not isinstance(base, nodes.Name):
        return None
    shape = scope.get(base.name)
    for part in chain:
        if not isinstance(shape, Mapping) or part is None:
            return None
        shape = shape.get(part)
    return shape


def _check(root: str, chain: list[str | None], scope: Mapping[str, Shape], lineno: int) -> UnknownField | None:
    if root not in scope:
        return None
    shape = scope[root]
    path = root
    for part in chain:
        if not isinstance(shape, Mapping) or part is None:
            return None
        if part not in shape:
            if part in _MAPPING_METHODS or part.startswith("_"):
                return None  # a method, or a private name `checks` refuses with its own message
            fields = sorted(shape)
            guess = did_you_mean(part, fields)
            if root in _TYPOS_ONLY and guess is None:
                return None
            hint = f"did you mean {path}.{guess}?" if guess else f"its fields are: {', '.join(fields)}"
            why = f" ({shape.why})" if isinstance(shape, Explained) and guess is None else ""
            return UnknownField(lineno, f"{path}.{part} does not exist: {path} has no field {part!r}; {hint}{why}")
        shape = shape[part]
        path = f"{path}.{part}"
    return None


def impossible_values(tree: nodes.Node, roots: Mapping[str, Shape]) -> list[UnknownField]:
    """`customer.rfm.level == 'first-time'` and the like: a comparison with a value the field never has."""
    found: list[UnknownField] = []
    # find_all() yields descendants only; the expression itself may be the comparison.
    compares = [*([tree] if isinstance(tree, nodes.Compare) else []), *tree.find_all(nodes.Compare)]
    for compare in compares:
        left = compare.expr
        for operand in compare.ops:
            for field, other in ((left, operand.expr), (operand.expr, left)):
                path = _path(field, roots)
                if path not in VALUES:
                    continue
                if operand.op in ("eq", "ne"):
                    values = [other]
                elif operand.op in ("in", "notin") and other is operand.expr and isinstance(
                        other, (nodes.List, nodes.Tuple)):
                    values = list(other.items)
                else:
                    continue
                found += [_never(path, v.value, compare.lineno) for v in values
                          if isinstance(v, nodes.Const) and isinstance(v.value, str) and v.value not in VALUES[path]]
            left = operand.expr
    # A nested comparison is its own Compare node, met again by find_all: one message each.
    return list(dict.fromkeys(found))


def _path(node: nodes.Node, roots: Mapping[str, Shape]) -> tuple[str, ...] | None:
    chain, base = _chain(node)
    if not isinstance(base, nodes.Name) or base.name not in roots or not chain or None in chain:
        return None
    return (base.name, *(part for part in chain if part is not None))


def _never(path: tuple[str, ...], value: str, lineno: int) -> UnknownField:
    return UnknownField(lineno, value_problem(".".join(path), value, VALUES[path]))


def value_problem(field: str, value: str, allowed: tuple[str, ...]) -> str:
    guess = did_you_mean(value, allowed)
    hint = f"did you mean {guess!r}? " if guess else ""
    return f"{field} is never {value!r}, so this is never true; {hint}its values are: {', '.join(allowed)}"
