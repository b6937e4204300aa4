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
