"""Render a message template for a customer's locale.

Layout under `templates/`:
    email/<name>.<locale>.html   one file per email: `{% block subject %}` and `{% block body %}`
    sms/<name>.<locale>.txt      the text of the SMS
    line/<name>.<locale>.txt     the text of a LINE message, or
    line/<name>.<locale>.json    a LINE Flex message (keepflow/language/flex.py), used where both exist
(each channel's extensions and kind of template: keepflow/language/channels.py)

A locale falls back from most to least specific and finally to English, so `th-TH` tries
`th-TH`, then `th`, then `en`; Chinese regions map to their script (`zh-TW` -> `zh-Hant`).
HTML is autoescaped, every value in a Flex template is JSON-escaped, and a variable the context
does not provide is an error, never a blank.
"""

from __future__ import annotations

import functools
import json
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, pass_context, select_autoescape
from markupsafe import Markup

from keepflow.language import flex
from keepflow.language.channels import CHANNEL_FACTS
from keepflow.language.expressions import Sandbox

FALLBACK_LOCALE = "en"
_CHINESE_SCRIPT = {"tw": "zh-Hant", "hk": "zh-Hant", "mo": "zh-Hant", "cn": "zh-Hans", "sg": "zh-Hans"}


@dataclass(frozen=True)
class Rendered:
    locale: str
    subject: str | None
    body: str  # HTML for an HTML channel (email), else the text
    text: str  # plain-text version (the body itself for a text channel)
    # A LINE Flex message ({"altText": ..., "contents": ...}); body is then its JSON, text its words.
    flex: Mapping[str, Any] | None = None


def locale_candidates(locale: str | None, default: str = FALLBACK_LOCALE) -> list[str]:
    """`zh_TW` -> [zh-TW, zh-Hant, zh, en]; `th-TH` -> [th-TH, th, en]."""
    out: list[str] = []
    if locale:
        parts = locale.replace("_", "-").split("-")
        lang = parts[0].lower()
        rest = [p.title() if len(p) == 4 else p.upper() for p in parts[1:]]
        out.append("-".join([lang, *rest]))
        if lang == "zh":
            script = next((p for p in rest if len(p) == 4), None)
            region = next((p for p in rest if len(p) == 2), None)
            script = script or _CHINESE_SCRIPT.get((region or "").lower())
            if script:
                out.append(f"zh-{script}" if not script.startswith("zh-") else script)
        out.append(lang)
    out += [default, FALLBACK_LOCALE]
    return list(dict.fromkeys(out))


def template_path(channel: str, name: str, locale: str, extension: str | None = None) -> str:
    return f"{channel}/{name}.{locale}.{extension or CHANNEL_FACTS[channel].template_extension}"


def template_extensions(channel: str) -> tuple[str, ...]:
    """The extensions a channel's templates may have, the one used first where a locale has both."""
    facts = CHANNEL_FACTS[channel]
    return (facts.flex_extension, facts.template_extension) if facts.flex_extension else (facts.template_extension,)


def is_flex(relative: str) -> bool:
    channel, _, rest = relative.partition("/")
    facts = CHANNEL_FACTS.get(channel)
    return bool(facts and facts.flex_extension and rest.endswith(f".{facts.flex_extension}"))


def _babel_locale(context) -> str:
    return str(context.get("locale") or FALLBACK_LOCALE).replace("-", "_")


@pass_context
def _money(context, amount: Any, currency: str) -> str:
    """`{{ order.total | money(order.currency) }}` -> "฿12,900.00" / "$129.00", per the template's locale."""
    return _formatted_money(str(amount), str(currency), _babel_locale(context))


# Kept: a shop's prices repeat from order to order, and Babel's formatting is a pure function of these three.
@functools.lru_cache(maxsize=4096)
def _formatted_money(amount: str, currency: str, locale: str) -> str:
    return format_currency(Decimal(amount), currency, locale=locale)


@pass_context
def _date(context, value: Any, format: str = "long") -> str:
    """`{{ coupon.expires_at | date }}` -> "30 พฤศจิกายน ค.ศ. 2026" / "2026年11月30日" / "November 30, 2026"."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return format_date(value, format=format, locale=_babel_locale(context))


class TemplateError(ValueError):
    """A template is missing or fails to render: a content problem, not worth retrying."""


def template_source(env: Environment, name: str) -> str:
    """A template's text, found as `env` finds it when rendering (jinja2's TemplateNotFound if absent)."""
    if env.loader is None:  # jinja2 allows it; every environment of ours has a loader
        raise TemplateNotFound(name)
    source, _, _ = env.loader.get_source(env, name)
    return source


class Renderer:
    def __init__(self, templates_dir: Path, default_locale: str = FALLBACK_LOCALE):
        self.templates_dir = templates_dir
        self.default_locale = default_locale
        self.env = Sandbox(
            loader=FileSystemLoader(str(templates_dir), encoding="utf-8"),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = _money
        self.env.filters["date"] = _date
        # Flex templates: each value JSON-escaped (flex.json_string_content), so a value never adds
        # a line; validate traces each rendered line back to the template's (flex.render_placed).
        self.flex_env = self.env.overlay(finalize=flex.json_string_content, autoescape=False,
                                         trim_blocks=False, lstrip_blocks=False)

    def resolve(self, channel: str, name: str, locale: str | None) -> tuple[str, str]:
        """The (locale, template path) that will be used, after fallback."""
        for candidate in locale_candidates(locale, self.default_locale):
            for extension in template_extensions(channel):
                path = template_path(channel, name, candidate, extension)
                if (self.templates_dir / path).is_file():
                    return candidate, path
        raise TemplateError(f"no template {template_path(channel, name, FALLBACK_LOCALE)} in {self.templates_dir}")

    def render(self, channel: str, name: str, locale: str | None, context: dict[str, Any]) -> Rendered:
        used_locale, path = self.resolve(channel, name, locale)
        try:
            variables = {**context, "locale": used_locale}
            if is_flex(path):
                return self._render_flex(path, used_locale, variables)
            template = self.env.get_template(path)
            if not CHANNEL_FACTS[channel].html:
                body = template.render(variables).strip()
                return Rendered(used_locale, None, body, body)
            html = template.render(variables)
            if "subject" not in template.blocks:
                raise TemplateError(f"{path} has no {{% block subject %}}")
            subject_markup = "".join(template.blocks["subject"](template.new_context(variables)))
            return Rendered(used_locale, Markup(subject_markup).striptags(), html, text_of_html(html))
        except TemplateNotFound as exc:
            raise TemplateError(f"{path}: includes missing template {exc.name}") from exc
        except TemplateError:
            raise
        except Exception as exc:  # undefined variable, bad filter, syntax: all content mistakes
            raise TemplateError(f"{path}: {exc}") from exc

    def render_flex_text(self, path: str, variables: dict[str, Any]) -> str:
        """A Flex template rendered, before it is read as JSON."""
        return self.flex_env.get_template(path).render(variables)

    def _render_flex(self, path: str, locale: str, variables: dict[str, Any]) -> Rendered:
        try:
            message = flex.parse(self.render_flex_text(path, variables))
        except flex.FlexError as exc:
            raise TemplateError(f"{path}:{exc}") from exc
        # Indented: the row keeps it as the message's body, which the dashboard shows as it is.
        return Rendered(locale, None, json.dumps(message, ensure_ascii=False, indent=2), flex.readable(message), message)


# Link targets spelled out ("[Track your parcel](https://...)"): a text-only reader must still
# reach the tracking page or the order, and a text part without the HTML's links looks like spam.
_TEXT_CONFIG = ParserConfig(display_links=True)


def text_of_html(html: str) -> str:
    """The plain-text part of an email: paragraphs, line breaks and link targets kept."""
    # inscriptis indents by the layout's padding; the frame's padding is no use in a text part.
    text = textwrap.dedent(get_text(html, _TEXT_CONFIG))
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def locale_files(templates_dir: Path, channel: str, name: str) -> dict[str, Path]:
    """{locale: file} of every variant of a template that exists (the one rendering uses, where a
    locale has two)."""
    found: dict[str, Path] = {}
    for extension in reversed(template_extensions(channel)):
        found.update(_files_with(templates_dir, channel, name, extension))
    return dict(sorted(found.items()))


def both_kinds(templates_dir: Path, channel: str, name: str) -> list[tuple[str, str]]:
    """(Flex template, text template) pairs of one locale: validate refuses them, as only one is sent."""
    facts = CHANNEL_FACTS[channel]
    if not facts.flex_extension:
        return []
    texts = _files_with(templates_dir, channel, name, facts.template_extension)
    return [(template_path(channel, name, locale, facts.flex_extension), template_path(channel, name, locale))
            for locale in _files_with(templates_dir, channel, name, facts.flex_extension) if locale in texts]


def relative_template(templates_dir: Path, file: Path) -> str:
    return file.relative_to(templates_dir).as_posix()


def _files_with(templates_dir: Path, channel: str, name: str, extension: str) -> dict[str, Path]:
    english = templates_dir / template_path(channel, name, FALLBACK_LOCALE, extension)
    folder, base, ext = english.parent, name.rsplit("/", 1)[-1], english.suffix
    pattern = re.compile(rf"^{re.escape(base)}\.([^./\\]+){re.escape(ext)}$")
    if not folder.is_dir():
        return {}
    found = {}
    for file in sorted(folder.iterdir()):
        match = pattern.match(file.name)
        if match and file.is_file():
            found[match.group(1)] = file
    return found
