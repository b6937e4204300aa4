"""`keepflow validate` on LINE Flex templates: each finding names the template's line and column."""

from __future__ import annotations

import json
from pathlib import Path

from keepflow.language.problems import Problem
from keepflow.runtime.registry import check_catalog

SEQUENCES = """\
brand: {name: Lumen}
sequences:
  - id: hello
    category: transactional
    trigger: customer.created
    steps:
      - send: line
        template: card
"""
# The `template:` value: where each finding about the template is reported in sequences.yaml.
AT = (8, 19)

GOOD = """\
{
  "altText": "Hello {{ customer.first_name }}",
  "contents": {
    "type": "bubble",
    "body": {
      "type": "box",
      "layout": "vertical",
      "contents": [
        {"type": "text", "text": "Hi {{ customer.first_name }} from {{ brand.name }}"}
      ]
    }
  }
}
"""


def findings(tmp_path: Path, card: str | None, **others: str) -> list[Problem]:
    line = tmp_path / "templates" / "line"
    line.mkdir(parents=True, exist_ok=True)
    if card is not None:
        (line / "card.en.json").write_text(card, encoding="utf-8")
    for name, text in others.items():
        (line / name.replace("_", ".")).write_text(text, encoding="utf-8")
    path = tmp_path / "sequences.yaml"
    path.write_text(SEQUENCES, encoding="utf-8")
    _, problems = check_catalog(path)
    return problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(p.format() for p in problems)
    assert (problems[0].line, problems[0].column) == AT, problems[0].format()
    return problems[0]


def test_a_good_flex_template_passes(tmp_path):
    assert findings(tmp_path, GOOD) == []


def test_a_json_syntax_error_is_placed_at_its_line_and_column(tmp_path):
    broken = GOOD.replace('"layout": "vertical",', '"layout": "vertical"')  # line 7: the comma gone
    problem = only(findings(tmp_path, broken))
    assert "template line/card.en.json:8:7: not valid JSON: Expecting ',' delimiter" in problem.message
    assert "check commas" in problem.message


def test_a_value_outside_quotes_is_a_json_error_not_json(tmp_path):
    outside = GOOD.replace('"layout": "vertical"', '"layout": {{ customer.first_name }}')
    problem = only(findings(tmp_path, outside))
    assert "template line/card.en.json:7:17: not valid JSON" in problem.message
    assert "belongs inside quotes" in problem.message


def test_a_missing_required_field_names_where_and_what_to_add(tmp_path):
    problem = only(findings(tmp_path, GOOD.replace('      "layout": "vertical",\n', "")))
    assert problem.message == ("template line/card.en.json:5:5: contents.body: 'layout' is missing; "
                               "LINE requires it here (add \"layout\": ...)")


def test_a_wrong_value_names_the_ones_line_knows(tmp_path):
    problem = only(findings(tmp_path, GOOD.replace('"vertical"', '"verticle"')))
    assert problem.message.startswith("template line/card.en.json:7:7: contents.body.layout: 'verticle' is not one "
                                      "LINE knows; did you mean 'vertical'?")


def test_a_misspelt_alt_text_is_refused(tmp_path):
    problems = findings(tmp_path, GOOD.replace('"altText"', '"alttext"'))
    messages = [p.message for p in problems]
    assert any("line/card.en.json:1:1: the message: 'altText' is missing" in m for m in messages), messages
    assert any("line/card.en.json:1:1: the message: LINE does not know 'alttext' (did you mean 'altText'?)" in m
               for m in messages), messages


def test_an_alt_text_over_1500_characters_is_refused(tmp_path):
    problem = only(findings(tmp_path, GOOD.replace("Hello {{", "x" * 1500 + " {{")))
    assert problem.message.startswith("template line/card.en.json:2:3: altText: 15")
    assert "LINE takes at most 1500; shorten it" in problem.message


def test_a_bubble_over_30_kb_is_refused(tmp_path):
    big = GOOD.replace('"text": "Hi', '"text": "' + "word " * 6000 + 'Hi')
    problem = only(findings(tmp_path, big))
    assert problem.message.startswith("template line/card.en.json:3:3: contents: this bubble is 30,")
    assert "LINE takes at most 30,000" in problem.message


def test_a_carousel_of_more_than_12_bubbles_is_refused(tmp_path):
    bubble = {"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": []}}
    carousel = json.dumps({"altText": "many", "contents": {"type": "carousel", "contents": [bubble] * 13}}, indent=1)
    problem = only(findings(tmp_path, carousel))
    assert "template line/card.en.json:3:2: contents: a carousel holds at most 12 bubbles and this one has 13" \
        in problem.message


def test_a_jinja_error_is_reported_before_any_json_check(tmp_path):
    problem = only(findings(tmp_path, GOOD.replace("{{ brand.name }}", "{{ brand.name }")))
    assert "template line/card.en.json line 9" in problem.message


def test_a_flex_and_a_text_template_of_one_locale_are_refused(tmp_path):
    problem = only(findings(tmp_path, GOOD, card_en_txt="hello"))
    assert problem.message == ("templates line/card.en.json and line/card.en.txt are both there and only "
                               "line/card.en.json would be sent; delete the one you do not mean")


def test_a_flex_template_satisfies_the_english_one_required(tmp_path):
    assert findings(tmp_path, None, card_th_json=GOOD) != []
    problem = only(findings(tmp_path / "b", None))
    assert "no template line/card.en.txt or, for a Flex message, line/card.en.json" in problem.message


def test_a_template_the_sample_values_cannot_render_is_a_warning_not_an_error(tmp_path):
    [problem] = findings(tmp_path, GOOD.replace("{{ brand.name }}", "{{ brand.name | date }}"))
    assert problem.severity == "warning"
    assert "template line/card.en.json was not checked against LINE's limits" in problem.message


def test_a_finding_inside_a_loop_is_placed_on_the_templates_own_line(tmp_path):
    example = (Path(__file__).resolve().parents[1] / "examples" / "templates" / "line" / "order_confirmed.en.json")
    card = example.read_text(encoding="utf-8").replace('"flex": 2, "align": "end"', '"flex": 2, "align": "ending"')
    # The step's context has no order here (validate says so too); the sample values still render it.
    [problem] = [p for p in findings(tmp_path, card) if "uses 'order'" not in p.message]
    assert problem.message.startswith("template line/card.en.json:22:91: contents.body.contents[1].contents[1].align: "
                                      "'ending' is not one LINE knows; did you mean 'end'?"), problem.message


def test_a_finding_after_an_if_not_taken_is_placed_on_the_templates_own_line(tmp_path):
    # The sample customer has a first name, so the three lines of the `if` render as nothing: the
    # finding below them is still on the template's line 10, not three lines higher in the rendered JSON.
    card = GOOD.replace('      "layout": "vertical",\n', '      {% if not customer.first_name %}\n'
                                                         '      "spacing": "md",\n'
                                                         '      {% endif %}\n'
                                                         '      "layout": "verticle",\n')
    assert card.splitlines()[9] == '      "layout": "verticle",'
    [problem] = findings(tmp_path, card)
    assert problem.message.startswith("template line/card.en.json:10:7: contents.body.layout:"), problem.message


def test_a_json_slip_after_an_if_not_taken_is_placed_on_the_templates_own_line(tmp_path):
    card = GOOD.replace('      "layout": "vertical",\n', '      {% if not customer.first_name %}\n'
                                                         '      "spacing": "md",\n'
                                                         '      {% endif %}\n'
                                                         '      "layout": "vertical"\n')  # its comma lost
    [problem] = findings(tmp_path, card)
    assert problem.message.startswith("template line/card.en.json:11:7: not valid JSON"), problem.message


def test_a_template_that_opens_with_an_if_not_taken_places_its_first_line(tmp_path):
    # Rendered, the JSON starts on its first line; in the template, on line 3, after the `if`.
    card = '{% if not customer.first_name %}\n"greeting"\n{% endif %}' + GOOD.replace("{\n", "{,\n", 1)
    [problem] = findings(tmp_path, card)
    assert problem.message.startswith("template line/card.en.json:3:2: not valid JSON"), problem.message
