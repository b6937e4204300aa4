"""The fields of an `as:` name, for `keepflow validate`: what its step keeps in the run's context.

A `wait_for` keeps the event it heard as the router signals it (`KEPT_EVENT`); a `do:` keeps
its activity's result, the return model of the registered function dumped to JSON
(keepflow/runtime/registry.py). A function that returns a dict, or a model that allows extra
fields, decides its keys at run time: its name is not checked. Templates are checked once for
every sequence that sends them, so a name kept as different things in different places is not
checked either."""

from __future__ import annotations

import inspect
import types
from collections.abc import Collection, Mapping
from collections.abc import Sequence as AbstractSequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from keepflow.language.context_fields import KEPT_EVENT, Explained, ListOf, Shape
from keepflow.language.dsl import DoStep, SequencesFile, WaitForStep

# A model that holds itself (a tree of categories) is followed this deep.
_DEPTH = 6
_UNCHECKED = object()


def result_shape(model: Any, depth: int = 0) -> Shape:
    """The fields of a value of type `model` once dumped to JSON; None where they are not fixed."""
    if depth > _DEPTH:
        return None
    origin = get_origin(model)
    if origin is Annotated:
        return result_shape(get_args(model)[0], depth)
    if origin in (Union, types.UnionType):
        kinds = [a for a in get_args(model) if a is not type(None)]
        return result_shape(kinds[0], depth) if len(kinds) == 1 else None
    if origin in (list, tuple, set, frozenset) or (origin is not None and _is_sequence(origin)):
        args = [a for a in get_args(model) if a is not Ellipsis]
        return ListOf(result_shape(args[0], depth + 1)) if len(args) == 1 else None
    if inspect.isclass(model) and issubclass(model, BaseModel):
        if model.model_config.get("extra") == "allow":
            return None
        return {name: result_shape(field.annotation, depth + 1) for name, field in model.model_fields.items()}
    return None


def _is_sequence(origin: Any) -> bool:
    return inspect.isclass(origin) and issubclass(origin, AbstractSequence) and not issubclass(origin, (str, bytes))


def as_shapes(file: SequencesFile, results: Mapping[str, Any], taken: Collection[str]) -> dict[str, Shape]:
    """Each `as:` name's fields. `results`: each activity's return model (None: unknown fields);
    `taken`: the context's own names, which an `as:` reusing them makes unknown instead."""
    kept: dict[str, list[tuple[str, Any]]] = {}
    for seq in file.sequences:
        for _, step in seq.walk():
            if isinstance(step, WaitForStep) and step.as_:
                kept.setdefault(step.as_, []).append(("event", step.wait_for))
            elif isinstance(step, DoStep) and step.as_:
                kept.setdefault(step.as_, []).append(("do", results.get(step.do, _UNCHECKED)))
    shapes: dict[str, Shape] = {}
    for name, sources in kept.items():
        if name in taken:
            continue
        kinds = {kind for kind, _ in sources}
        if kinds == {"event"}:
            heard = " or ".join(sorted({str(what) for _, what in sources}))
            shapes[name] = Explained(KEPT_EVENT, f"the {heard} event kept by as: {name} holds its id, type, "
                                                 "occurred_at and data, not the order or customer it came with")
        elif kinds == {"do"} and len({id(what) for _, what in sources}) == 1:
            model = sources[0][1]
            shapes[name] = None if model is _UNCHECKED else result_shape(model)
        else:
            shapes[name] = None
    return shapes
