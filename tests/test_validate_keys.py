"""`keepflow validate` and keys: an event no run under the sequence's key can hear, a customer who
can enter only once, and `reentry:` where it means nothing; each at its line and column, with the fix."""

from __future__ import annotations

import pytest

from tests.test_validate import assert_problem, only, problems_of

ORDER_KEYED = """\
sequences:
  - id: tripod
    category: transactional
    trigger: order.created
    key: order.id
    exit_on: [order.refunded, order.created]
    goal: [order.created]
    steps:
      - wait_for: order.created
        timeout: 7d
"""


def test_a_new_orders_event_is_never_heard_by_an_order_keyed_run(tmp_path):
    problems = problems_of(tmp_path, ORDER_KEYED)
    assert [(p.line, p.column, p.severity) for p in problems] == [(6, 31, "error"), (7, 12, "error"), (9, 19, "error")]
    exit_on, goal, wait_for = problems
    for problem in problems:
        assert "order.created can never be heard here" in problem.message
        assert "one run per order (key: order.id)" in problem.message
        assert "key this sequence by customer.id" in problem.message
    assert "this wait always times out" in wait_for.message
    assert "such as order.shipped or order.delivered" in wait_for.message
    assert "never ends a run" in exit_on.message and "never ends as converted" in goal.message


def test_an_event_about_the_same_order_is_heard(tmp_path):
    text = ORDER_KEYED.replace("order.created]", "order.cancelled]").replace("wait_for: order.created",
                                                                             "wait_for: order.shipped")
    assert problems_of(tmp_path, text) == []


def test_a_started_sequence_keyed_by_its_starters_order_cannot_hear_a_new_order(tmp_path):
    text = """\
sequences:
  - id: fulfilment
    category: transactional
    trigger: order.delivered
    key: order.id
    steps:
      - start: cross_sell
  - id: cross_sell
    category: transactional
    key: order.id
    steps:
      - wait_for: order.created
        timeout: 7d
"""
    assert_problem(only(problems_of(tmp_path, text)), 12, 19, "order.created can never be heard here")


def test_a_customer_keyed_run_hears_the_customers_next_order(tmp_path):
    text = ORDER_KEYED.replace("key: order.id", "key: customer.id\n    reentry: {after: 90d}")
    assert problems_of(tmp_path, text) == []


ONCE = """\
sequences:
  - id: thanks
    category: transactional
    trigger: order.created
    steps:
      - wait: 1d
"""


def test_a_customer_keyed_sequence_triggered_per_order_warns_that_a_customer_enters_once(tmp_path):
    problem = only(problems_of(tmp_path, ONCE))
    assert problem.severity == "warning"
    assert_problem(problem, 4, 14, "a customer can enter it only once")
    assert "one run per customer (key: customer.id)" in problem.message
    assert "reentry: {after: 90d}" in problem.message and "key: order.id" in problem.message


@pytest.mark.parametrize("change", [
    ("    steps:", "    reentry: {after: 90d}\n    steps:"),
    ("    steps:", "    key: order.id\n    steps:"),
    ("order.created", "customer.created"),  # a customer signs up once
])
def test_no_once_only_warning_when_the_customer_may_come_back_or_the_trigger_comes_once(tmp_path, change):
    assert problems_of(tmp_path, ONCE.replace(*change)) == []


def test_a_repeating_trigger_without_an_order_suggests_reentry_only(tmp_path):
    problem = only(problems_of(tmp_path, ONCE.replace("order.created", "review.submitted")))
    assert "reentry: {after: 90d}" in problem.message and "order.id" not in problem.message


@pytest.mark.parametrize("text, line, column, fragment", [
    ("""\
sequences:
  - id: winback
    category: transactional
    trigger: {inactive_for: 60d}
    reentry: {after: 30d}
    steps:
      - wait: 1d
""", 5, 5, "write cool_down: 30d"),
    ("""\
sequences:
  - id: parent
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - start: child
  - id: child
    category: transactional
    reentry: {after: 30d}
    steps:
      - wait: 1d
""", 10, 5, "has no trigger"),
    (ONCE.replace("    steps:", "    reentry: {after: 0s}\n    steps:"), 5, 22, "longer than 0s"),
])
def test_reentry_where_it_means_nothing_is_an_error_with_the_fix(tmp_path, text, line, column, fragment):
    problem = only(problems_of(tmp_path, text))
    assert problem.severity == "error"
    assert_problem(problem, line, column, fragment)


def test_a_message_superseded_by_a_new_order_in_an_order_keyed_run_is_never_dropped(tmp_path):
    text = """\
sequences:
  - id: tripod
    category: transactional
    trigger: order.delivered
    key: order.id
    steps:
      - send: email
        template: x
        superseded_by: [order.refunded, order.created]
"""
    assert_problem(only(problems_of(tmp_path, text)), 9, 41, "so it never drops this message")


def test_reentry_on_a_run_per_new_order_does_nothing_and_says_so(tmp_path):
    text = ONCE.replace("    steps:", "    key: order.id\n    reentry: {after: 90d}\n    steps:")
    problem = only(problems_of(tmp_path, text))
    assert problem.severity == "warning"
    assert_problem(problem, 6, 5, "reentry does nothing here")
