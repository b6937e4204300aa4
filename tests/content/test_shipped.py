"""The shop's own sequences.yaml and templates, as a marketer leaves them: whatever they add or
change must still validate, lint clean, play through `keepflow demo` and draw. Engine tests use a
frozen copy (tests/data/shop), so these are the only tests a content edit can break.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from keepflow.insights.graph import to_mermaid, to_svg
from keepflow.language.lint import run_lint
from keepflow.language.rendering import Renderer
from keepflow.language.template_checks import template_problems
from keepflow.runtime.registry import check_catalog, load_catalog
from keepflow.tools.demo import run_demo
from keepflow.tools.validate import run_validate

ROOT = Path(__file__).resolve().parents[2]
SEQUENCES = ROOT / "sequences.yaml"
TEMPLATES = ROOT / "templates"


def test_the_shipped_file_validates():
    catalog, problems = check_catalog(SEQUENCES, TEMPLATES)
    assert [p for p in problems if p.severity == "error"] == [], "\n".join(p.format() for p in problems)
    assert catalog is not None
    assert run_validate(SEQUENCES, TEMPLATES) == 0


def test_every_shipped_email_passes_the_template_rules():
    env = Renderer(TEMPLATES).env
    for file in sorted((TEMPLATES / "email").glob("[!_]*.html")):
        assert template_problems(env, f"email/{file.name}") == [], file.name


def test_the_shipped_file_lints_without_errors():
    assert run_lint(SEQUENCES, TEMPLATES) == 0  # warnings are the marketer's call


@pytest.mark.parametrize("sequence_id", list(load_catalog(SEQUENCES, TEMPLATES).sequences))
def test_every_shipped_sequence_draws(sequence_id):
    sequence = load_catalog(SEQUENCES, TEMPLATES).sequences[sequence_id]
    assert to_mermaid(sequence).startswith("flowchart")
    assert to_svg(sequence).lstrip().startswith("<svg")


async def test_make_demo_plays_the_shipped_journey(capsys):
    assert await run_demo(SEQUENCES, None, "en") == 0
    assert "every run completed" in capsys.readouterr().out


# --- what the shipped footer renders ---------------------------------------------------------------

BRAND = YAML(typ="safe").load(SEQUENCES.read_text(encoding="utf-8"))["brand"]
CONTEXT = {"brand": BRAND, "customer": {"first_name": "Nok"}, "order": {"id": "ord_1"}}
URL = "https://mail.shop.example/unsubscribe/abc.def.ghi"


@pytest.mark.parametrize(("locale", "text"), [("en", "Unsubscribe"), ("th", "ยกเลิกการรับอีเมล"),
                                               ("zh-Hant", "取消訂閱")])
def test_marketing_mail_shows_the_link_in_the_customers_language(locale, text):
    rendered = Renderer(TEMPLATES).render("email", "review_request", locale, {**CONTEXT, "unsubscribe_url": URL})
    assert f'<a href="{URL}" style="color:#777777;">{text}</a>' in rendered.body
    assert BRAND["postal_address"] in rendered.body


def test_transactional_mail_has_no_link_and_needs_no_url():
    order = {"id": "ord_1", "items": [], "total": "10.00", "currency": "THB"}
    rendered = Renderer(TEMPLATES).render("email", "order_confirmed", "en", {**CONTEXT, "order": order})
    assert "/unsubscribe/" not in rendered.body and "Unsubscribe" not in rendered.body
    assert BRAND["postal_address"] in rendered.body


# --- the LINE tip, and its fallback ------------------------------------------------------------------

async def test_the_demo_customer_gets_the_lighting_tip_on_line(capsys):
    assert await run_demo(SEQUENCES, None, "en") == 0
    [tip] = [line for line in capsys.readouterr().out.splitlines() if " education " in line and " 5 " in line]
    assert " line " in tip and "3 lighting tips" in tip and "fallback" not in tip


async def test_without_a_line_account_the_demo_sends_the_tip_by_sms(capsys):
    assert await run_demo(SEQUENCES, None, "en", on_line=False) == 0
    [tip] = [line for line in capsys.readouterr().out.splitlines() if " education " in line and " 5 " in line]
    assert " sms " in tip and "+66812345678" in tip and "3 light tips" in tip
    assert "(fallback: no LINE account)" in tip
