"""Render a message template for a customer's locale.

Layout under `templates/`:
    email/<name>.<locale>.html   one file per email: `{% block subject %}` and `{% block body %}`
    sms/<name>.<locale>.txt      the text of the SMS
(each channel's extension and kind of template: keepflow/language/channels.py)

A locale falls back from most to least specific and finally to English, so `th-TH` tries
`th-TH`, then `th`, then `en`; Chinese regions map to their script (`zh-TW` -> `zh-Hant`).
HTML is autoescaped, and a variable the context does not provide is an error, never a blank.
"""

from __future__ import annotations

import re
import textwrap
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


def template_path(channel: str, name: str, locale: str) -> str:
    return f"{channel}/{name}.{locale}.{CHANNEL_FACTS[channel].template_extension}"


def _babel_locale(context) -> str:
    return str(context.get("locale") or FALLBACK_LOCALE).replace("-", "_")


@pass_context
def _money(context, amount: Any, currency: str) -> str:
    """`{{ order.total | money(order.currency) }}` -> "฿12,900.00" / "$129.00", per the template's locale."""
    return format_currency(Decimal(str(amount)), currency, locale=_babel_locale(context))


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

    def resolve(self, channel: str, name: str, locale: str | None) -> tuple[str, str]:
        """The (locale, template path) that will be used, after fallback."""
        for candidate in locale_candidates(locale, self.default_locale):
            path = template_path(channel, name, candidate)
            if (self.templates_dir / path).is_file():
                return candidate, path
        raise TemplateError(f"no template {template_path(channel, name, FALLBACK_LOCALE)} in {self.templates_dir}")

    def render(self, channel: str, name: str, locale: str | None, context: dict[str, Any]) -> Rendered:
        used_locale, path = self.resolve(channel, name, locale)
        try:
            template = self.env.get_template(path)
            variables = {**context, "locale": used_locale}
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


# Link targets spelled out ("[Track your parcel](https://...)"): a text-only reader must still
# reach the tracking page or the order, and a text part without the HTML's links looks like spam.
_TEXT_CONFIG = ParserConfig(display_links=True)


def text_of_html(html: str) -> str:
    """The plain-text part of an email: paragraphs, line breaks and link targets kept."""
    # inscriptis indents by the layout's padding; the frame's padding is no use in a text part.
    text = textwrap.dedent(get_text(html, _TEXT_CONFIG))
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def locale_files(templates_dir: Path, channel: str, name: str) -> dict[str, Path]:
    """{locale: file} of every variant of a template that exists."""
    english = templates_dir / template_path(channel, name, FALLBACK_LOCALE)
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
