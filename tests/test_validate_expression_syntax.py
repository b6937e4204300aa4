"""`keepflow validate`: syntax errors in `if:` and `key:` said plainly, with the fix, where the expression is."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow.language.problems import Problem
from keepflow.runtime.registry import check_catalog
from tests.helpers import write_project

IF_HEAD = """\
sequences:
  - id: welcome
    category: transactional
    trigger: customer.created
    steps:
      - if: {expression}
        then: [exit]
"""
KEY_HEAD = """\
sequences:
  - id: thanks
    category: transactional
    trigger: order.created
    key: {expression}
    steps:
      - exit
"""
# What Jinja's parser says, which a marketer cannot act on.
JARGON = ("chunk after expression", "end of template", "expected token", "unexpected char", "got '")


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    _, problems = check_catalog(write_project(tmp_path, text, {}))
    return problems


@pytest.mark.parametrize("expression, fragments", [
    ("\"customer.rfm.level = 'champions'\"", ["= sets a value", "customer.rfm.level == 'champions'"]),
    ("\"customer.rfm.level === 'champions'\"", ["`===` is not an operator here: write =="]),
    ("\"customer.rfm.r => 3\"", ["`=>` is not an operator here: write >="]),
    ("\"(customer.rfm.r > 3 and customer.consents.sms\"", ["( is never closed", "add )"]),
    ("\"customer.rfm.r > 3) and customer.consents.sms\"", [") closes nothing", "remove it"]),
    ("\"customer.rfm.segment in ['at_risk', 'lost'\"", ["[ is never closed", "add ]"]),
    ("\"customer.consents.sms and\"", ["ends with `and`", "add what must also be true after it"]),
    ("\"customer.consents.sms or\"", ["ends with `or`", "after it"]),
    ("\"customer.rfm.r >\"", ["ends with `>`", "compare it with"]),
    ("\"customer.rfm.level == 'first_time\"", ["quoted text never ends", "closing '"]),
    ("\"customer.consents.sms && customer.consents.email\"", ["&&", "and"]),
    ("\"customer.consents.sms || customer.consents.email\"", ["||", "or"]),
    ("\"!customer.consents.sms\"", ["!", "not customer.consents.sms"]),
    ("\"customer.consents.sms AND customer.consents.email\"", ["AND", "lowercase: and"]),
    ("\"{{ customer.consents.sms }}\"", ["{{ }}", "customer.consents.sms"]),
    ("\"customer..id\"", ["two dots", "customer.id"]),
    ("\"customer.first_name |\"", ["ends with `|`", "the filter's name"]),
    ("\"customer.first_name | lenght > 2\"", ["no filter named 'lenght'; did you mean 'length'?"]),
])
def test_if_syntax_errors_are_said_plainly_with_the_fix(tmp_path, expression, fragments):
    [problem] = problems_of(tmp_path, IF_HEAD.format(expression=expression))
    assert (problem.line, problem.column, problem.severity) == (6, 13, "error"), problem.format()
    assert problem.message.startswith("if: "), problem.format()
    for fragment in fragments:
        assert fragment in problem.message, problem.format()
    for jargon in JARGON:
        assert jargon not in problem.message, problem.format()


@pytest.mark.parametrize("expression, fragment", [
    ("order..id", "two dots"),
    ("\"(order.id\"", "( is never closed"),
    ("\"order.id ~\"", "ends with `~`"),
])
def test_key_syntax_errors_are_said_plainly_with_the_fix(tmp_path, expression, fragment):
    [problem] = problems_of(tmp_path, KEY_HEAD.format(expression=expression))
    assert (problem.line, problem.column) == (5, 10), problem.format()
    assert problem.message.startswith("key: ") and fragment in problem.message, problem.format()
    for jargon in JARGON:
        assert jargon not in problem.message, problem.format()


def test_the_run_fails_with_the_same_plain_words():
    from keepflow.language.expressions import ExpressionError, evaluate

    with pytest.raises(ExpressionError, match="= sets a value"):
        evaluate("customer.rfm.level = 'champions'", {"customer": {"rfm": {"level": "champions"}}})
