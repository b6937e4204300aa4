"""LINE Flex messages: the JSON templates under templates/line/ and what LINE accepts of them.

A Flex template, `line/<name>.<locale>.json`, is the message LINE gets without its `"type"`:

    {"altText": "Your order has shipped", "contents": {"type": "bubble", "body": {...}}}

`altText` is what notifications and the chat list show (LINE requires it, 1 to 1500 characters);
`contents` is a bubble or a carousel of bubbles. Every `{{ value }}` is written as the inside of a
JSON string (quotes, backslashes and newlines escaped), so it belongs between quotes; a customer's
name can then never end its string and add JSON, and a value put outside quotes fails to parse
instead of becoming JSON.

What LINE refuses is checked twice with the same code: by `keepflow validate`, rendered with sample
values and each finding placed at its line and column; and at send time, where the message fails as
a content mistake (never retried) instead of reaching LINE. Types and required fields come from
LINE's OpenAPI document (line_flex_message.schema.json, beside this file, says from which commit);
the sizes, which the document does not give, from LINE's Messaging API reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, cast

from jinja2 import Template, nodes
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from keepflow.language.schema_errors import did_you_mean

SCHEMA_FILE = Path(__file__).with_name("line_flex_message.schema.json")

# LINE's Messaging API reference (developers.line.biz/en/reference/messaging-api/): "Flex Message"
# altText max 1500 characters; "Bubble": the JSON data that defines a bubble may be 30 KB at most;
# "Carousel": at most 12 bubbles, and 50 KB of JSON. Kilobytes read as 1,000 bytes, the stricter.
# LINE's Node.js SDK states the bubble count too (line-bot-sdk-nodejs lib/types.ts, FlexCarousel:
# "(Max: 12 bubbles)"). LINE WORKS, a different product, has lower limits: do not mix them up.
MAX_ALT_TEXT = 1500
MAX_BUBBLE_BYTES = 30_000
MAX_CAROUSEL_BYTES = 50_000
MAX_CAROUSEL_BUBBLES = 12


def json_string_content(value: Any) -> str:
    """A `{{ value }}` of a Flex template: the inside of a JSON string, whatever the value holds."""
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)[1:-1]


@dataclass(frozen=True)
class Finding:
    """Something LINE would refuse, at a (1-based) line and column of the template: given the
    template's line of each rendered line (`render_placed`), a branch not taken or a loop does not
    move it; without it, of the rendered JSON."""
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"


class FlexError(ValueError):
    """A rendered Flex template LINE would refuse; `findings` says where and why."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        super().__init__("; ".join(str(f) for f in findings))


def parse(text: str) -> dict[str, Any]:
    """The Flex message a rendered template holds; FlexError with what LINE would refuse."""
    message, findings = _read(text)
    if findings:
        raise FlexError(findings)
    assert isinstance(message, dict)  # no findings: it parsed, and the schema wants an object
    return message


def render_placed(template: Template, source: str, variables: Mapping[str, Any]) -> tuple[str, list[int]]:
    """The template rendered, and for each rendered line the template's line it comes from.

    A branch not taken drops its lines and a loop repeats its own, so the rendered JSON's line
    numbers are not the template's. Only the template's own text can add a line (a value is
    JSON-escaped, its newlines written `\\n`), and Jinja's parse of the template says on which
    line each stretch of its text starts: each piece of text the render gives is found there, in
    order, going back to an earlier one for a loop's next round."""
    texts = [(node.data, node.lineno) for node in template.environment.parse(source).find_all(nodes.TemplateData)]
    pieces: list[str] = []
    lines = [1]
    line, cursor = 1, 0
    for piece in template.root_render_func(template.new_context(dict(variables))):
        found = _find(texts, piece, cursor)
        if found is not None:
            cursor = found + 1
            line = texts[found][1]
            if not any(pieces):  # the first line starts here: what came before rendered as nothing
                lines[0] = line
        for _ in range(piece.count("\n")):
            line += 1
            lines.append(line)
        pieces.append(piece)
    return "".join(pieces), lines


def _find(texts: list[tuple[str, int]], piece: str, cursor: int) -> int | None:
    """Which stretch of the template's text `piece` is: the next one from `cursor`, else the first."""
    matches = [i for i, (text, _) in enumerate(texts) if text == piece]
    if not matches:
        return None
    return next((i for i in matches if i >= cursor), matches[0])


def problems(text: str, source: str | None = None, lines: list[int] | None = None) -> list[Finding]:
    """What LINE would refuse of this rendered Flex template, each where it is. With `lines` (the
    template's line of each rendered line, `render_placed`) at the template's line; with the
    template's `source`, at its column too (a value rendered earlier on the line moves the rest)."""
    return _read(text, source, lines)[1]


def _read(text: str, source: str | None = None, lines: list[int] | None = None) -> tuple[Any, list[Finding]]:
    """The rendered JSON read once: the message (None if it does not parse), and the findings."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        line = lines[exc.lineno - 1] if lines and exc.lineno <= len(lines) else exc.lineno
        return None, [Finding(line, exc.colno, f"not valid JSON: {exc.msg}. A {{{{ value }}}} belongs inside "
                                               "quotes (\"text\": \"Hi {{ customer.first_name }}\"); check commas "
                                               "and brackets near here")]
    places = _Places(text, source, lines)
    found = [Finding(*places.at(list(error.absolute_path)), _schema_message(error))
             for error in _leaf_errors(_validator().iter_errors(message))]
    if found or not isinstance(message, dict):
        return message, list(dict.fromkeys(found))
    return message, _sizes(message, places)


def readable(message: Mapping[str, Any]) -> str:
    """A Flex message as a person reads it: its alt text, then each text and button in order."""
    return "\n".join([str(message.get("altText", "")), "", *texts(message.get("contents"))]).strip()


def texts(node: Any) -> Iterator[str]:
    """Each text and button of a Flex container (or part of one), in reading order."""
    if isinstance(node, list):
        for item in node:
            yield from texts(item)
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    if kind == "text":
        spans = node.get("contents")
        text = "".join(str(s.get("text", "")) for s in spans if isinstance(s, Mapping)) if spans else node.get("text")
        if text:
            yield str(text)
        return
    if kind == "button" and isinstance(node.get("action"), Mapping):
        action = node["action"]
        label = action.get("label", "")
        yield f"[{label}]({action['uri']})" if action.get("uri") else f"[{label}]"
        return
    for key in ("header", "hero", "body", "footer", "contents"):
        yield from texts(node.get(key))


def _sizes(message: dict[str, Any], places: _Places) -> list[Finding]:
    contents = message["contents"]
    size = len(json.dumps(contents, ensure_ascii=False, separators=(",", ":")).encode())
    line, column = places.at(["contents"])
    if contents.get("type") == "carousel":
        found = []
        bubbles = len(contents.get("contents", []))
        if bubbles > MAX_CAROUSEL_BUBBLES:
            found.append(Finding(line, column, f"contents: a carousel holds at most {MAX_CAROUSEL_BUBBLES} bubbles "
                                               f"and this one has {bubbles}; send fewer, or split it in two messages"))
        if size > MAX_CAROUSEL_BYTES:
            found.append(Finding(line, column, f"contents: this carousel is {size:,} bytes of JSON and LINE takes "
                                               f"at most {MAX_CAROUSEL_BYTES:,}; shorten its texts or send fewer bubbles"))
        return found
    if size > MAX_BUBBLE_BYTES:
        return [Finding(line, column, f"contents: this bubble is {size:,} bytes of JSON and LINE takes at most "
                                      f"{MAX_BUBBLE_BYTES:,}; shorten its texts or move some into a carousel")]
    return []


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def _leaf_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """The errors that say what to change: the schema's `if`/`then` and `allOf` report their own."""
    for error in errors:
        if error.context:
            yield from _leaf_errors(iter(error.context))
        else:
            yield error


def _where(path: list[Any]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[") or "the message"


def _schema_message(error: ValidationError) -> str:
    where = _where(list(error.absolute_path))
    # jsonschema types these as possibly unset; an error from iter_errors has them all.
    validator, expected, instance = error.validator, cast(Any, error.validator_value), cast(Any, error.instance)
    schema = cast(Mapping[str, Any], error.schema)
    if validator == "required":
        missing = next((name for name in expected if name not in instance), expected[0])
        return f"{where}: {missing!r} is missing; LINE requires it here (add \"{missing}\": ...)"
    if validator in ("additionalProperties", "unevaluatedProperties"):
        known = sorted(schema.get("properties", {}))
        extra = [k for k in instance if k not in known]
        hints = [f"{k!r} (did you mean {guess!r}?)" if (guess := did_you_mean(k, known)) else repr(k) for k in extra]
        return f"{where}: LINE does not know {', '.join(hints)}; remove it or fix its spelling"
    if validator in ("enum", "const"):
        allowed = expected if validator == "enum" else [expected]
        guess = did_you_mean(str(instance), [str(a) for a in allowed])
        hint = f"did you mean {guess!r}? " if guess else ""
        return f"{where}: {instance!r} is not one LINE knows; {hint}use one of: {', '.join(map(str, allowed))}"
    if validator == "type":
        return f"{where}: must be {_a(expected)}, not {_a(_json_type(instance))}"
    if validator == "maxLength" and where == "altText":
        return (f"altText: {len(instance)} characters, and LINE takes at most {expected}; shorten it "
                "(it is what the notification shows)")
    if validator == "minLength":
        return f"{where}: must not be empty"
    return f"{where}: {error.message}"


def _a(kind: Any) -> str:
    names: dict[str, str] = {"object": "an object {...}", "array": "a list [...]", "string": "a string in quotes",
             "integer": "a whole number", "number": "a number", "boolean": "true or false", "null": "null"}
    if isinstance(kind, list):
        return " or ".join(names.get(str(k), str(k)) for k in kind)
    return names.get(kind, str(kind))


def _json_type(value: Any) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                        ("array", list), ("object", dict)):
        if isinstance(value, types):
            return kind
    return "null"


class _Places:
    """Line and column of each part of the rendered JSON, found by reading it again as YAML (JSON
    is YAML, and ruamel keeps where each node is). A part it cannot place is put at its parent."""

    def __init__(self, text: str, source: str | None = None, lines: list[int] | None = None):
        self.text = text
        # The template's (1-based) line of each rendered line; none given: the same line.
        self.lines = lines or []
        self.source_lines = source.splitlines() if source is not None else []

    @cached_property
    def root(self) -> Any:
        """Read only when a finding needs placing: every send checks its message, and most pass."""
        try:
            # A tab may separate JSON tokens but not YAML ones; one space keeps every column.
            return YAML(typ="rt").load(self.text.replace("\t", " "))
        except YAMLError:
            return None

    def at(self, path: list[Any]) -> tuple[int, int]:
        node, where, key = self.root, (0, 0), None
        for part in path:
            if isinstance(node, CommentedMap) and part in node:
                (line, column), key = node.lc.key(part), part
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                (line, column), key = node.lc.item(part), None
            else:
                break
            where, node = (line, column), node[part]
        line, column = where
        if line < len(self.lines):
            line = self.lines[line] - 1
        # The template's column of a key is where its line spells it, if it does so once.
        if key is not None and line < len(self.source_lines):
            spelt = self.source_lines[line].split(json.dumps(key))
            if len(spelt) == 2:
                column = len(spelt[0])
        return line + 1, column + 1
