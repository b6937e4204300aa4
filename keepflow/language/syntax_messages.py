"""YAML and Jinja syntax errors in words a marketer can act on.

The parsers say what their grammar expected (`expected <block end>, but found '?'`); a person
needs what is wrong on the line and how to fix it. Each common message is matched here and
said again plainly with the fix; one not recognised keeps the parser's words, as they still
point at the right place."""

from __future__ import annotations

import re

# ruamel's (problem, context) -> a plain sentence with the fix.
_TAB = "a tab: YAML indents with spaces only; replace the tab with spaces"
_COLON = ("a second colon on this line: if the value contains ': ', put the value in quotes "
          "(template: \"a: b\"); if it is a new key, put it on its own line")
_INDENT = ("this line is not indented like the lines around it: line it up with the other keys of the same "
           "step (spaces only), or start a new step with '- '")


def yaml_message(problem: str | None, context: str | None) -> str:
    problem = problem or ""
    if "'\\t'" in problem or "\t" in problem:
        return _TAB
    if problem == "mapping values are not allowed here":
        return _COLON
    if problem.startswith("expected <block end>") or problem.startswith("could not find expected ':'"):
        return _INDENT
    flow = re.match(r"expected ',' or '([\]}])'", problem)
    if flow:
        closing = flow.group(1)
        opening = "[" if closing == "]" else "{"
        return (f"a {opening} is never closed: close it with {closing} on the same line, "
                f"and put quotes around a value inside it that contains a comma or a colon")
    if problem == "found unexpected end of stream" and context and "quoted scalar" in context:
        return "a quoted value never ends: add the closing \" (or ') at the end of the value"
    start = re.match(r"found character '(.)' that cannot start any token", problem)
    if start:
        return f"a value cannot start with {start.group(1)}: put the value in quotes"
    alias = re.match(r"found undefined alias '(.*)'", problem)
    if alias:
        return (f"*{alias.group(1)} refers to an anchor &{alias.group(1)} that is not defined above it; "
                "if the value is text that starts with *, put it in quotes")
    return f"YAML syntax: {problem or context or 'invalid YAML'}" + (f" ({context})" if problem and context else "")


def points_at_the_opening(problem: str | None, context: str | None) -> bool:
    """Whether the fix is where the unclosed bracket or quote opens, not where the parser gave up."""
    problem = problem or ""
    return (bool(re.match(r"expected ',' or '[\]}]'", problem))
            or (problem == "found unexpected end of stream" and "quoted scalar" in (context or "")))


def jinja_message(message: str) -> str:
    unclosed = re.search(r"The innermost block that needs to be closed is '(\w+)'", message)
    unknown = re.match(r"Encountered unknown tag '(\w+)'", message)
    if unknown and unclosed:
        return (f"{{% {unknown.group(1)} %}} does not close the open {{% {unclosed.group(1)} %}}: "
                f"add {{% end{unclosed.group(1)} %}} before it, or fix the tag's name")
    if message.startswith("Unexpected end of template") and unclosed:
        tag = unclosed.group(1)
        return f"{{% {tag} %}} is never closed: add {{% end{tag} %}} where it should end"
    if unknown:
        tag = unknown.group(1)
        if tag.startswith("end"):
            return f"{{% {tag} %}} closes nothing: remove it, or add the {{% {tag[3:]} %}} it should close"
        return f"unknown tag {{% {tag} %}}: check its spelling (if, for, block, set, include, extends, macro)"
    if message in ("unexpected '}'", "unexpected '%'"):
        return ("a tag is not closed right: write a value as {{ name }} and a tag as {% if ... %}, "
                "with two braces on each side")
    if message.startswith("unexpected char '\"'") or message.startswith('unexpected char "\'"'):
        return "a quoted text inside {{ }} or {% %} never ends: add the closing quote"
    return message


_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<", "in", "is")
# What people bring from other languages, and the word Jinja has for it.
_FOREIGN = (("===", "=="), ("!==", "!="), ("=>", ">="), ("=<", "<="), ("<>", "!="))
_TRAILING = re.compile(r"(\band|\bor|\bnot|\bin|\bis|==|!=|>=|<=|>|<|\+|-|\*\*|\*|//|/|%|~|\|)\s*$")


def expression_message(expression: str, message: str) -> str:
    """A syntax error in an `if:` or `key:` expression, in plain words with the fix.

    Jinja's parser says what its grammar wanted next (`chunk after expression`, `unexpected end
    of template`); the mistakes behind those are few and recognisable from the text itself."""
    text = expression.strip()
    if text.startswith(("{{", "{%")):
        inner = text.strip("{}% ").strip()
        return f"if: and key: are already expressions: write them without {{{{ }}}}, as {inner}"
    quote = re.match(r"""unexpected char (['"])(['"])""", message)
    if quote:
        return f"a quoted text never ends: add the closing {quote.group(2)} after it"
    bare = _outside_quotes(text)
    bracket = _unbalanced(bare)
    if bracket:
        return bracket
    for wrong, right in _FOREIGN:
        if wrong in bare:
            return f"`{wrong}` is not an operator here: write {right}, as in {text.replace(wrong, right, 1)}"
    single = re.search(r"(?<![=!<>])=(?!=)", bare)
    if single:
        fixed = text[:single.start()] + "==" + text[single.end():]
        return f"= sets a value, it does not compare: write == to compare, as in {fixed}"
    for wrong, right in (("&&", "and"), ("||", "or")):
        if wrong in bare:
            return f"`{wrong}` is not an operator here: write `{right}`, as in {text.replace(wrong, right)}"
    bang = re.search(r"!(?!=)\s*", bare)
    if bang:
        fixed = text[:bang.start()] + "not " + text[bang.end():]
        return f"`!` is not an operator here: write `not`, as in {fixed}"
    shouting = re.search(r"\b(AND|OR|NOT|And|Or|Not)\b", bare)
    if shouting:
        return f"`{shouting.group(1)}` is not a word Jinja knows: write it in lowercase: {shouting.group(1).lower()}"
    if ".." in bare:
        return f"two dots in a row: write one, as in {re.sub(r'[.]{2,}', '.', text)}"
    trailing = _TRAILING.search(bare)
    if trailing:
        op = trailing.group(1)
        if op == "and":
            fix = "add what must also be true after it, or remove the `and`"
        elif op == "or":
            fix = "add what else may be true after it, or remove the `or`"
        elif op == "|":
            fix = "add the filter's name after it, as in | length"
        elif op in _COMPARISONS:
            fix = "add the value to compare it with after it"
        else:
            fix = "add the value it works on after it, or remove it"
        return f"the expression ends with `{op}`: {fix}"
    if message == "chunk after expression":
        return ("two values in a row with nothing joining them: join them with `and` or `or`, "
                "or a comparison such as ==")
    return message


def _outside_quotes(text: str) -> str:
    """`text` with what is inside quotes blanked, so a `=` or `(` in a quoted value is not read as code."""
    out, quote = [], None
    for char in text:
        if quote:
            out.append(char if char == quote else " ")
            quote = None if char == quote else quote
        else:
            out.append(char)
            quote = char if char in "'\"" else None
    return "".join(out)


def _unbalanced(text: str) -> str | None:
    opened: list[str] = []
    for char in text:
        if char in _CLOSERS:
            opened.append(char)
        elif char in _CLOSERS.values():
            if not opened or _CLOSERS[opened[-1]] != char:
                expected = f"; the open {opened[-1]} needs {_CLOSERS[opened[-1]]}" if opened else ""
                opener = next(k for k, v in _CLOSERS.items() if v == char)
                return f"a {char} closes nothing: remove it, or add the {opener} it closes{expected}"
            opened.pop()
    if opened:
        return f"a {opened[-1]} is never closed: add {_CLOSERS[opened[-1]]} where it should end"
    return None
