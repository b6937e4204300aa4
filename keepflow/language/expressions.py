"""Conditions and keys: Jinja2 expressions evaluated in an immutable sandbox.

Marketers already write Jinja2 in templates, so `if:` and `key:` use the same language.
Evaluation is pure (no I/O, no clock), which is what lets the workflow run it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.exceptions import UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, where `order.items` means the key, not `dict.items`.

    Run contexts are plain dicts, and a marketer writing `order.items` or `profile.values`
    should get the data, not a bound method.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = Sandbox(undefined=StrictUndefined)


class ExpressionError(ValueError):
    pass


@lru_cache(maxsize=1024)
def _compile(expression: str):
    try:
        return _env.compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"{expression!r} is not a valid expression: {exc.message}") from exc


def check_syntax(expression: str) -> None:
    _compile(expression)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    try:
        return _compile(expression)(**context)
    except UndefinedError as exc:
        raise ExpressionError(f"{expression!r}: {exc.message}") from exc


def truthy(expression: str, context: dict[str, Any]) -> bool:
    return bool(evaluate(expression, context))


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) for the given parts: the same customer always lands in the same arm."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
