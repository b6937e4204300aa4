"""Conditions and keys: Jinja2 expressions evaluated in an immutable sandbox.

Marketers already write Jinja2 in templates, so `if:` and `key:` use the same language.
Evaluation is pure (no I/O, no clock, no randomness), which is what lets the workflow run it
directly: a replayed run must take the branch it took the first time. So the environment offers
an allow-list of Jinja's filters, tests and globals, without `random` and `lipsum`, and
`refused()` names what an expression uses that the workflow may not (`validate` reports it).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.defaults import DEFAULT_FILTERS, DEFAULT_NAMESPACE
from jinja2.exceptions import TemplateRuntimeError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from keepflow.language.syntax_messages import expression_message


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, where `order.items` means the key, not `dict.items`.

    Run contexts are plain dicts, and a marketer writing `order.items` or `profile.values`
    should get the data, not a bound method.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


# Named one by one, not "Jinja's defaults minus a few": a filter a later Jinja adds stays out until
# someone has checked that it gives the same answer every time.
PURE_FILTERS = frozenset({
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
    "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join",
    "last", "length", "list", "lower", "map", "max", "min", "pprint", "reject", "rejectattr", "replace",
    "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum",
    "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap",
    "xmlattr",
})
PURE_TESTS = frozenset({
    "!=", "<", "<=", "==", ">", ">=", "boolean", "callable", "defined", "divisibleby", "eq", "equalto",
    "escaped", "even", "false", "filter", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable",
    "le", "lessthan", "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence",
    "string", "test", "true", "undefined", "upper",
})
PURE_GLOBALS = frozenset({"range", "dict", "namespace", "cycler", "joiner"})
# Known to Jinja, left out above: `random` picks anew on every replay, `lipsum` is random text.
_IMPURE_FILTERS = frozenset(DEFAULT_FILTERS) - PURE_FILTERS
_IMPURE_GLOBALS = frozenset(DEFAULT_NAMESPACE) - PURE_GLOBALS
# Filters that call another filter named by their first argument: `map('random')`.
_CALLS_A_FILTER = {"map"}


def _expression_env() -> Sandbox:
    env = Sandbox(undefined=StrictUndefined)
    env.filters = {name: f for name, f in env.filters.items() if name in PURE_FILTERS}
    env.tests = {name: t for name, t in env.tests.items() if name in PURE_TESTS}
    env.globals = {name: g for name, g in env.globals.items() if name in PURE_GLOBALS}
    return env


_env = _expression_env()


class ExpressionError(ValueError):
    pass


def _syntax_error(expression: str, exc: TemplateSyntaxError) -> ExpressionError:
    message = exc.message or ""
    unknown = re.match(r"No (filter|test) named '([^']*)'", message)
    if unknown:
        kind, name = unknown.groups()
        known = sorted(PURE_FILTERS if kind == "filter" else PURE_TESTS)
        # schema_errors.did_you_mean's rule; importing it would bring YAML into the workflow sandbox.
        guess = next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.6)), None)
        message = f"there is no {kind} named {name!r}" + (f"; did you mean {guess!r}?" if guess else "")
    else:
        message = expression_message(expression, message)
    return ExpressionError(f"{expression!r} is not a valid expression: {message}")


def refusal(name: str) -> str:
    return (f"`{name}` is not allowed in if:/key: (a run must decide the same way on replay); "
            "use `split:` for random assignment")


def refused(expression: str) -> list[str]:
    """The filters and globals in `expression` that the workflow may not use, in order of appearance.

    Read from the parsed expression, so `validate` can say so before anything runs. A name given
    as data (`map(name)`) is only known when it runs; the environment lacks it then. Raises
    ExpressionError when the expression does not parse.
    """
    try:
        parser = Parser(_env, expression, state="variable")
        tree = parser.parse_expression()
    except TemplateSyntaxError as exc:
        raise _syntax_error(expression, exc) from exc
    found: list[str] = []
    # find_all() yields descendants only; the expression itself may be the filter.
    for node in [tree, *tree.find_all((nodes.Filter, nodes.Name))]:
        if isinstance(node, nodes.Name):
            if node.ctx == "load" and node.name in _IMPURE_GLOBALS:
                found.append(node.name)
            continue
        if not isinstance(node, nodes.Filter):
            continue
        if node.name in _IMPURE_FILTERS:
            found.append(node.name)
        elif node.name in _CALLS_A_FILTER and node.args and isinstance(node.args[0], nodes.Const) \
                and node.args[0].value in _IMPURE_FILTERS:
            found.append(node.args[0].value)
    return list(dict.fromkeys(found))


def parse(expression: str) -> nodes.Expr:
    """The expression's tree, for checks that read its names; ExpressionError when it does not parse."""
    try:
        return Parser(_env, expression, state="variable").parse_expression()
    except TemplateSyntaxError as exc:
        raise _syntax_error(expression, exc) from exc


@lru_cache(maxsize=1024)
def _compile(expression: str):
    # Refused before compiling: Jinja would only say "no filter named 'random'".
    for name in refused(expression):
        raise ExpressionError(f"{expression!r}: {refusal(name)}")
    try:
        return _env.compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise _syntax_error(expression, exc) from exc


def check_syntax(expression: str) -> None:
    _compile(expression)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    try:
        value = _compile(expression)(**context)
        if isinstance(value, Undefined):
            # A strict undefined (`customer.vip` for a customer without one) fails only when used:
            # make it fail here, where callers expect an expression's errors.
            bool(value)
        return value
    except TemplateRuntimeError as exc:
        # A missing variable, or a filter the environment lacks named at run time (`map(name)`):
        # the run fails visibly instead of retrying a workflow task that can never succeed.
        raise ExpressionError(f"{expression!r}: {exc.message}") from exc


def truthy(expression: str, context: dict[str, Any]) -> bool:
    return bool(evaluate(expression, context))


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) for the given parts: the same customer always lands in the same arm."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
