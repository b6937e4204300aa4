"""Rules a template must keep because of what it is sent as, checked by `keepflow validate`.

A marketing email must show an unsubscribe link and the sender's postal address (CAN-SPAM,
15 U.S.C. 7704(a)(3) and (a)(5)(A)(iii)). The shipped layouts put both in the footer of
`email/_base.html`, but a template may override that footer, extend something else, or include
its own; so this follows what the template really outputs: its `{% extends %}` chain, the block
that wins for each name (the most derived one, plus its parents' where it calls `super()`),
`{% include %}`s and `self.<block>()` calls, and asks whether any `{{ ... }}` in that output
shows `unsubscribe_url` and `brand.postal_address`. A name that appears only in a condition, a
comment or an overridden block does not count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, TemplateError, nodes

from keepflow.language.dsl import SendStep, Sequence, Step
from keepflow.language.rendering import FALLBACK_LOCALE, Renderer, template_path, template_source

UNSUBSCRIBE = "unsubscribe_url"
POSTAL_ADDRESS = "brand.postal_address"
REQUIRED = (UNSUBSCRIBE, POSTAL_ADDRESS)


def marketing_email_problems(sequence: Sequence, step: Step, templates_dir: Path) -> list[str]:
    """What keeps `step` (in `sequence`) from being a lawful marketing email, on its own channel or
    its `fallback:`; [] for any other step."""
    if (not isinstance(step, SendStep) or "email" not in (step.send, step.fallback)
            or (step.category or sequence.category) != "marketing"):
        return []
    problems = []
    env = Renderer(templates_dir).env
    for relative in _locale_variants(templates_dir, step.template):
        problems += template_problems(env, relative)
    return problems


def template_problems(env: Environment, relative: str) -> list[str]:
    """Why the email template `relative` may not be sent as marketing; [] when it may."""
    try:
        output = _Output(env)
        output.template(relative)
    except TemplateError:
        return []  # a syntax error or a missing file: `checks` reports it already
    missing = [name for name in REQUIRED if name not in output.shown]
    if not missing:
        return []
    what = " and ".join(f"{{{{ {name} }}}}" for name in missing)
    return [f"template {relative} is sent as marketing but never shows {what}: marketing emails need an "
            f"unsubscribe link and the sender's postal address (CAN-SPAM). {_fix(output, missing)}"]


def _fix(output: _Output, missing: list[str]) -> str:
    for override, block, parent in output.dropped:
        if any(name in output.shown_by_block.get((parent, block), set()) for name in missing):
            return (f"Its {{% block {block} %}} in {override} replaces the one in {parent} that shows them; "
                    f"put {{{{ super() }}}} in it or remove the override.")
    if output.dynamic:
        return (f"It {output.dynamic}, which cannot be checked; extend email/_layout.<locale>.html "
                "by name, whose footer shows both.")
    return ('Extend email/_layout.<locale>.html (its footer shows both), or add '
            '<a href="{{ unsubscribe_url }}">…</a> and {{ brand.postal_address }} to the template.')


def _locale_variants(templates_dir: Path, name: str) -> list[str]:
    english = template_path("email", name, FALLBACK_LOCALE)
    folder = (templates_dir / english).parent
    stem = name.rsplit("/", 1)[-1]
    pattern = re.compile(rf"^{re.escape(stem)}\.[^./\\]+\.html$")
    if not folder.is_dir():
        return []
    prefix = english.rsplit("/", 1)[0]
    return [f"{prefix}/{f.name}" for f in sorted(folder.iterdir()) if pattern.match(f.name) and f.is_file()]


@dataclass
class _Output:
    """Walks what a template renders, as Jinja would resolve it, collecting the names it shows."""

    env: Environment
    shown: set[str] = field(default_factory=set)
    # (template, block) -> names that block's own definition shows, to explain an override.
    shown_by_block: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # (overriding template, block, template whose definition it hides)
    dropped: list[tuple[str, str, str]] = field(default_factory=list)
    dynamic: str | None = None
    _active: set[str] = field(default_factory=set)

    def template(self, name: str) -> None:
        if name in self._active:  # an include or extends loop: Jinja would fail at run time
            return
        self._active.add(name)
        try:
            chain = self._chain(name)
            self._record_overrides(chain)
            root_name, root = chain[-1]
            self._walk(root.body, chain)
        finally:
            self._active.discard(name)

    def _parse(self, name: str) -> nodes.Template:
        source = template_source(self.env, name)
        return self.env.parse(source, name)

    def _chain(self, name: str) -> list[tuple[str, nodes.Template]]:
        """The template, its parent, its parent's parent, ... (most derived first)."""
        chain = [(name, self._parse(name))]
        while (extends := chain[-1][1].find(nodes.Extends)) is not None:
            if not isinstance(extends.template, nodes.Const):
                self.dynamic = f"extends a template chosen at run time ({chain[-1][0]})"
                # What the child renders is then unknown; nothing it defines counts.
                return [(chain[-1][0], nodes.Template([], lineno=1))]
            parent = extends.template.value
            if any(parent == seen for seen, _ in chain):
                return chain
            chain.append((parent, self._parse(parent)))
        return chain

    def _definitions(self, chain: list[tuple[str, nodes.Template]], block: str) -> list[tuple[str, nodes.Block]]:
        return [(name, b) for name, ast in chain for b in ast.find_all(nodes.Block) if b.name == block]

    def _record_overrides(self, chain: list[tuple[str, nodes.Template]]) -> None:
        names = {b.name for _, ast in chain for b in ast.find_all(nodes.Block)}
        for block in names:
            definitions = self._definitions(chain, block)
            for (child, child_def), (parent, parent_def) in zip(definitions, definitions[1:]):
                if not _calls_super(child_def):
                    self.dropped.append((child, block, parent))
            for owner, definition in definitions:
                key = (owner, block)
                if key not in self.shown_by_block:
                    inner = _Output(self.env, _active=set(self._active))
                    inner._walk(definition.body, chain)
                    self.shown_by_block[key] = inner.shown

    def _block(self, name: str, chain: list[tuple[str, nodes.Template]], start: int = 0) -> None:
        definitions = self._definitions(chain, name)[start:]
        if not definitions:
            return
        _, definition = definitions[0]
        self._walk(definition.body, chain)
        if _calls_super(definition):
            self._block(name, chain, start + 1)

    def _walk(self, body: list[nodes.Node], chain: list[tuple[str, nodes.Template]]) -> None:
        for node in body:
            self._node(node, chain)

    def _node(self, node: nodes.Node, chain: list[tuple[str, nodes.Template]]) -> None:
        if isinstance(node, nodes.Block):
            self._block(node.name, chain)
        elif isinstance(node, nodes.Output):
            for child in node.nodes:
                if not isinstance(child, nodes.TemplateData):
                    self.shown.update(_names(child))
                    for call in child.find_all(nodes.Call):
                        target = call.node
                        if (isinstance(target, nodes.Getattr) and isinstance(target.node, nodes.Name)
                                and target.node.name == "self"):
                            self._block(target.attr, chain)
        elif isinstance(node, nodes.Include):
            for name in _constant_names(node.template):
                try:
                    self.template(name)
                    break  # Jinja renders the first of a list that exists
                except TemplateError:
                    if not node.ignore_missing:
                        raise
        elif isinstance(node, (nodes.Macro, nodes.Extends)):
            return  # a macro shows nothing until called; `extends` is followed by _chain
        else:
            for part in node.iter_child_nodes():
                self._node(part, chain)


def _calls_super(block: nodes.Block) -> bool:
    return any(isinstance(c.node, nodes.Name) and c.node.name == "super" for c in block.find_all(nodes.Call))


def _constant_names(expression: nodes.Expr) -> Iterator[str]:
    if isinstance(expression, nodes.Const) and isinstance(expression.value, str):
        yield expression.value
    elif isinstance(expression, (nodes.List, nodes.Tuple)):
        for item in expression.items:
            yield from _constant_names(item)


def _names(expression: nodes.Node) -> set[str]:
    """`unsubscribe_url`, `brand.postal_address`, `brand['postal_address']`: every dotted name read."""
    found: set[str] = set()
    for node in [expression, *expression.find_all((nodes.Name, nodes.Getattr, nodes.Getitem))]:
        dotted = _dotted(node)
        if dotted:
            found.add(dotted)
    return found


def _dotted(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        base = _dotted(node.node)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        base = _dotted(node.node)
        return f"{base}.{node.arg.value}" if base else None
    return None
