"""Made-up values of a run's context, for `keepflow validate` to render a template whose output it
must check (a LINE Flex message parses as JSON and fits LINE's limits only once rendered).

Each field gets a value of the kind a run gives it (a number for a total, an ISO time for an
`_at`, a word otherwise), so filters such as `money` and `date` render. What the shapes leave open
renders as nothing, through ChainableUndefined, rather than failing: `validate` reports unknown
names on its own, with their fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keepflow.language.context_fields import ListOf, Shape

_NUMBERS = ("total", "price", "amount", "monetary", "quantity", "frequency", "recency_days", "value", "balance")


def sample(shapes: Mapping[str, Shape], brand: Mapping[str, Any]) -> dict[str, Any]:
    """A context with a value for every field the shapes name; `brand` as the file has it."""
    values: dict[str, Any] = {name: _value(name, shape) for name, shape in shapes.items()}
    values["brand"] = dict(brand)
    values["unsubscribe_url"] = "https://keepflow.example.com/unsubscribe/sample"
    return values


def _value(name: str, shape: Shape) -> Any:
    if isinstance(shape, Mapping):
        return {key: _value(key, inner) for key, inner in shape.items()}
    if isinstance(shape, ListOf):
        # One item: a `{% for %}` over it renders its body once, as short as the template allows.
        return [_value(name, shape.item)]
    if name == "currency":
        return "USD"
    if name.endswith("_at"):
        return "2026-01-31T09:00:00+00:00"
    if name.endswith(_NUMBERS):
        return 1
    return f"sample {name}"
