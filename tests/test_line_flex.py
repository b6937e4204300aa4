"""LINE Flex templates: rendered with every value JSON-escaped, found before a text template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.language import flex
from keepflow.language.rendering import Renderer, TemplateError
from tests.engine import ROOT, TEST_TEMPLATES

CONTEXT = {"brand": {"name": "Lumen Camera Co."}, "customer": {"id": "c-1", "first_name": "Nok"}}


def test_a_flex_template_renders_to_a_flex_message_with_its_alt_text_and_texts():
    rendered = Renderer(TEST_TEMPLATES).render("line", "offer", "th-TH", CONTEXT)
    assert rendered.locale == "en"
    assert rendered.flex is not None
    assert rendered.flex["altText"] == "Lumen Camera Co.: Nok, your offer is inside"
    assert rendered.flex["contents"]["type"] == "bubble"
    assert json.loads(rendered.body) == rendered.flex
    # What a person reads of it (the dashboard, preview): the alt text, then the texts in order.
    assert rendered.text.splitlines()[:3] == ["Lumen Camera Co.: Nok, your offer is inside", "", "Hello Nok"]
    assert "[Shop now](https://shop.example.com/?c=c-1)" in rendered.text


def test_a_name_with_quotes_and_newlines_stays_inside_its_json_string():
    name = 'Nok "the boss"\n}, {"type": "text", "text": "injected'
    rendered = Renderer(TEST_TEMPLATES).render("line", "offer", "en", {**CONTEXT, "customer": {"id": "c-1", "first_name": name}})
    assert rendered.flex is not None
    texts = [c["text"] for c in rendered.flex["contents"]["body"]["contents"]]
    assert texts[0] == f"Hello {name}"
    assert len(texts) == 2 and rendered.flex["altText"].startswith(f"Lumen Camera Co.: {name},")


def test_a_value_placed_outside_a_string_cannot_add_json(tmp_path: Path):
    (tmp_path / "line").mkdir()
    (tmp_path / "line" / "x.en.json").write_text(
        '{"altText": "hi", "contents": {"type": "bubble", "size": {{ customer.first_name }}}}', encoding="utf-8")
    with pytest.raises(TemplateError, match="not valid JSON"):
        Renderer(tmp_path).render("line", "x", "en", {"customer": {"first_name": '"mega", "body": {}'}})


def test_a_text_template_still_renders_as_text_and_json_wins_per_locale(tmp_path: Path):
    (tmp_path / "line").mkdir()
    (tmp_path / "line" / "x.en.txt").write_text("plain {{ customer.first_name }}", encoding="utf-8")
    rendered = Renderer(tmp_path).render("line", "x", "en", CONTEXT)
    assert (rendered.flex, rendered.body) == (None, "plain Nok")
    (tmp_path / "line" / "x.th.json").write_text('{"altText": "th", "contents": {"type": "bubble"}}', encoding="utf-8")
    assert Renderer(tmp_path).render("line", "x", "th", CONTEXT).flex == {"altText": "th", "contents": {"type": "bubble"}}
    assert Renderer(tmp_path).render("line", "x", "en", CONTEXT).flex is None


def test_preview_shows_a_flex_message_as_its_alt_text_and_the_words_in_it(tmp_path: Path):
    sequences = tmp_path / "sequences.yaml"
    sequences.write_text("brand: {name: Lumen Camera Co.}\nsequences:\n  - id: t\n    category: transactional\n"
                         "    trigger: customer.created\n    steps:\n      - send: line\n        template: offer\n",
                         encoding="utf-8")
    result = CliRunner().invoke(app, ["preview", "t", "--sequences", str(sequences), "--templates", str(TEST_TEMPLATES),
                                      "--customer", str(ROOT / "examples" / "customer.json")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Flex message · alt text: Lumen Camera Co.: " in result.output
    assert "A little something from Lumen Camera Co.: 10% off your next order." in result.output
    assert "[Shop now](https://shop.example.com/?c=" in result.output
    assert '"type"' not in result.output


EXAMPLE = ROOT / "examples" / "templates" / "line" / "order_confirmed.en.json"


def test_the_example_flex_template_renders_within_lines_limits_and_is_the_one_the_guide_shows():
    context = {"brand": {"name": "Lumen Camera Co.", "url": "https://shop.example.com"},
               "customer": json.loads((ROOT / "examples" / "customer.json").read_text(encoding="utf-8")),
               "order": json.loads((ROOT / "examples" / "order.json").read_text(encoding="utf-8"))}
    renderer = Renderer(EXAMPLE.parents[1])
    assert flex.problems(renderer.render_flex_text("line/order_confirmed.en.json", {**context, "locale": "en"})) == []
    rendered = renderer.render("line", "order_confirmed", "en", context)
    assert rendered.text.splitlines()[0] == "Lumen Camera Co.: order #1001 is confirmed, THB25,900.00"
    assert "1 × Lumen D200 DSLR camera" in rendered.text
    assert "[See your order](https://shop.example.com/orders/1001)" in rendered.text
    guide = (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8") in guide


def test_a_message_a_customers_data_makes_too_big_for_line_fails_before_it_is_sent(tmp_path: Path):
    (tmp_path / "line").mkdir()
    (tmp_path / "line" / "x.en.json").write_text(
        '{"altText": "Hi {{ customer.first_name }}", "contents": {"type": "bubble"}}', encoding="utf-8")
    with pytest.raises(TemplateError, match=r"line/x.en.json:1:2: altText: 1503 characters, and LINE takes at most 1500"):
        Renderer(tmp_path).render("line", "x", "en", {"customer": {"first_name": "N" * 1500}})
