"""CAN-SPAM in `keepflow validate`: a marketing email must show an unsubscribe link and the postal address."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keepflow.language.problems import InvalidSequences
from keepflow.runtime.registry import check_catalog, load_catalog
from keepflow.tools.validate import run_validate
from tests.engine import SHOP_TEMPLATES

LOCALES = ("en", "th", "zh-Hant")

SUBJECT = "{% block subject %}Hello{% endblock %}\n"
ON_LAYOUT = '{% extends "email/_layout.en.html" %}\n' + SUBJECT + "{% block body %}<p>Hi</p>{% endblock %}\n"

# The first step's `template:` value is at line 10, column 19.
SEQUENCES = """\
brand:
  name: Shop
  postal_address: 1 Main Street, Springfield
sequences:
  - id: news
    category: {category}
    trigger: customer.created
    steps:
      - send: email
        template: letter
"""


def project(tmp_path: Path, letter: str, category: str = "marketing", extra: dict[str, str] | None = None,
            sequences: str = SEQUENCES) -> Path:
    """The shipped layouts, plus `letter.en.html` (and any `extra` files) under templates/email/."""
    email = tmp_path / "templates" / "email"
    email.mkdir(parents=True)
    for layout in ("_base.html", *(f"_layout.{locale}.html" for locale in LOCALES)):
        shutil.copy(SHOP_TEMPLATES / "email" / layout, email / layout)
    (email / "letter.en.html").write_text(letter, encoding="utf-8")
    for name, text in (extra or {}).items():
        (email / name).write_text(text, encoding="utf-8")
    path = tmp_path / "sequences.yaml"
    path.write_text(sequences.format(category=category), encoding="utf-8")
    return path


def errors(path: Path) -> list:
    _, problems = check_catalog(path)
    return [p for p in problems if p.severity == "error"]


def only_can_spam_error(path: Path):
    [problem] = errors(path)
    assert (problem.path, problem.line, problem.column) == (path, 10, 19), problem.format()
    assert "CAN-SPAM" in problem.message and "email/letter.en.html" in problem.message, problem.format()
    with pytest.raises(InvalidSequences):
        load_catalog(path)
    return problem


# --- refused ---------------------------------------------------------------------------------------


def test_marketing_template_without_the_link_is_refused_naming_the_file(tmp_path):
    path = project(tmp_path, SUBJECT + "<p>Big sale! {{ brand.postal_address }}</p>\n")
    problem = only_can_spam_error(path)
    assert "never shows {{ unsubscribe_url }}:" in problem.message
    assert '<a href="{{ unsubscribe_url }}">' in problem.message  # the fix


def test_marketing_template_without_either_is_refused_and_validate_fails(tmp_path, capsys):
    path = project(tmp_path, SUBJECT + "<p>Big sale!</p>\n")
    problem = only_can_spam_error(path)
    assert "{{ unsubscribe_url }} and {{ brand.postal_address }}" in problem.message
    assert run_validate(path, None) == 1
    assert f"{path}:10:19: template email/letter.en.html is sent as marketing" in capsys.readouterr().err


def test_overriding_the_footer_drops_the_link_and_is_refused(tmp_path):
    path = project(tmp_path, ON_LAYOUT + "{% block footer %}<p>Thanks for reading</p>{% endblock %}\n")
    problem = only_can_spam_error(path)
    assert "{% block footer %} in email/letter.en.html replaces the one in email/_base.html" in problem.message
    assert "super()" in problem.message


def test_a_layout_that_drops_the_footer_is_refused_too(tmp_path):
    dropping = '{% extends "email/_base.html" %}\n{% block footer %}{% endblock %}\n'
    path = project(tmp_path, '{% extends "email/_quiet.html" %}\n' + SUBJECT, extra={"_quiet.html": dropping})
    problem = only_can_spam_error(path)
    assert "in email/_quiet.html replaces the one in email/_base.html" in problem.message


def test_extending_something_else_is_refused(tmp_path):
    other = "<html><body>{% block body %}{% endblock %}</body></html>\n"
    path = project(tmp_path, '{% extends "email/_bare.html" %}\n' + SUBJECT + "{% block body %}x{% endblock %}\n",
                   extra={"_bare.html": other})
    only_can_spam_error(path)


def test_a_name_in_a_condition_or_comment_is_not_a_link(tmp_path):
    letter = (SUBJECT + "{# {{ unsubscribe_url }} #}{% if unsubscribe_url %}<p>see footer</p>{% endif %}"
              "<p>{{ brand.postal_address }}</p>\n")
    only_can_spam_error(project(tmp_path, letter))


def test_a_block_defined_but_never_placed_does_not_count(tmp_path):
    letter = ON_LAYOUT.replace('"email/_layout.en.html"', '"email/_bare.html"') + \
        '{% block unused %}<a href="{{ unsubscribe_url }}">x</a> {{ brand.postal_address }}{% endblock %}\n'
    path = project(tmp_path, letter, extra={"_bare.html": "{% block body %}{% endblock %}"})
    only_can_spam_error(path)


def test_every_locale_variant_is_checked(tmp_path):
    path = project(tmp_path, ON_LAYOUT, extra={"letter.th.html": SUBJECT + "<p>ลดราคา</p>\n"})
    [problem] = errors(path)
    assert "email/letter.th.html" in problem.message


def test_the_step_category_overrides_the_sequence(tmp_path):
    steps = SEQUENCES.replace("        template: letter\n", "        template: letter\n        category: marketing\n")
    path = project(tmp_path, SUBJECT + "<p>Receipt</p>\n", category="transactional", sequences=steps)
    only_can_spam_error(path)


# --- accepted --------------------------------------------------------------------------------------


def test_transactional_template_without_the_link_is_fine(tmp_path):
    assert errors(project(tmp_path, SUBJECT + "<p>Your receipt</p>\n", category="transactional")) == []


def test_a_transactional_step_in_a_marketing_sequence_is_fine(tmp_path):
    steps = SEQUENCES.replace("        template: letter\n", "        template: letter\n        category: transactional\n")
    assert errors(project(tmp_path, SUBJECT + "<p>Receipt</p>\n", sequences=steps)) == []


def test_a_template_on_the_shipped_layout_passes(tmp_path):
    assert errors(project(tmp_path, ON_LAYOUT)) == []


def test_overriding_the_footer_with_super_passes(tmp_path):
    assert errors(project(tmp_path, ON_LAYOUT + "{% block footer %}<p>P.S.</p>{{ super() }}{% endblock %}\n")) == []


def test_its_own_footer_through_an_include_passes(tmp_path):
    footer = '<p>{{ brand["postal_address"] }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    letter = SUBJECT + '<p>Sale</p>{% include "email/_footer.html" %}\n'
    assert errors(project(tmp_path, letter, extra={"_footer.html": footer})) == []
