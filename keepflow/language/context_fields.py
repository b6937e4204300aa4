"""The fields of what every run's context holds, so `keepflow validate` can refuse a misspelt one.

`customer.firstname` renders as nothing in a preview, but fails the send in front of a customer
(templates are strict). The shapes below are the runtime's event models and RFM profile, written
out here because the language may not import the runtime; tests/test_validate_extra.py holds
them to the real ones. A part whose keys the shop decides (`event.data`, `customer.consents`, a
`do:` result, an `as:` event) is not checked."""

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

RFM: dict[str, Shape] = dict.fromkeys(
    ("recency_days", "frequency", "monetary", "r", "f", "m", "segment", "level", "fit"))
CUSTOMER: dict[str, Shape] = {
    **dict.fromkeys(("id", "email", "phone", "first_name", "locale", "timezone", "consents")),
    "rfm": RFM,
}
LINE_ITEM: dict[str, Shape] = dict.fromkeys(("sku", "title", "quantity", "price"))
ORDER: dict[str, Shape] = {
    **dict.fromkeys(("id", "number", "total", "currency", "discount_codes")),
    "items": ListOf(LINE_ITEM),
}
EVENT: dict[str, Shape] = dict.fromkeys(("id", "type", "occurred_at", "data"))
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
            return UnknownField(lineno, f"{path}.{part} does not exist: {path} has no field {part!r}; {hint}")
        shape = shape[part]
        path = f"{path}.{part}"
    return None
