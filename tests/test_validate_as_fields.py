"""`keepflow validate`: the fields of an `as:` name, an event a `wait_for` kept or a `do:` result,
checked like `customer.*`, since a misspelt one passes validate and fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from keepflow.language.problems import Problem
from keepflow.runtime.registry import ActivityContext, activity, check_catalog, discover, reset
from tests.helpers import write_project

FOOTER = "{{ brand.postal_address }} {{ unsubscribe_url }}"

# Kept events: on the customer's next order, thank them for what they bought. Keyed by the
# customer: a run per order would never hear a new order (validate says so).
SECOND_ORDER = """\
sequences:
  - id: second_order
    category: transactional
    trigger: order.created
    key: customer.id
    reentry: {after: 30d}
    steps:
      - wait_for: order.created
        timeout: 30d
        as: next_order
        on_timeout: exit
      - if: "next_order.order.items | length > 1"
        then:
          - send: email
            template: thanks_again
"""


def problems_of(tmp_path: Path, text: str, templates: dict[str, str]) -> list[Problem]:
    _, problems = check_catalog(write_project(tmp_path, text, templates))
    return problems


def errors(problems: list[Problem]) -> list[str]:
    return [p.format() for p in problems if p.severity == "error"]


class Args(BaseModel):
    pass


class Nested(BaseModel):
    tier: str


class Points(BaseModel):
    balance: int
    loyalty: Nested
    history: list[Nested]


@pytest.fixture
def clean_registry():
    discover()
    yield
    reset()


def test_a_kept_event_has_the_fields_of_an_event_not_its_order(tmp_path):
    # The run keeps what the router signals, id, type, occurred_at and data: a run that reads
    # `next_order.order` fails with "'dict object' has no attribute 'order'".
    template = ("{% block subject %}Thanks again{% endblock %}"
                "{% for item in next_order.order.items %}{{ item.title }}{% endfor %}{{ next_order.occured_at }}")
    problems = problems_of(tmp_path, SECOND_ORDER, {"email/thanks_again.en.html": template})
    found = [(p.line, p.column, p.message) for p in problems if p.severity == "error"]
    assert [(line, column) for line, column, _ in found] == [(12, 13), (15, 23), (15, 23)], errors(problems)
    condition = found[0][2]
    [loop] = [m for _, _, m in found if "next_order.order does not exist" in m and "line 1" in m]
    [misspelt] = [m for _, _, m in found if "occured_at" in m]
    assert condition.startswith("if: next_order.order does not exist: next_order has no field 'order'")
    assert "its fields are: data, id, occurred_at, type" in condition
    # why: the order of an event kept by `as:` is not kept
    assert "order.created event kept by as: next_order" in condition and "not the order" in condition
    assert loop.startswith("template email/thanks_again.en.html line 1:")
    assert "next_order.occured_at" in misspelt and "did you mean next_order.occurred_at?" in misspelt


def test_a_kept_event_s_own_fields_pass(tmp_path):
    text = SECOND_ORDER.replace("next_order.order.items | length > 1", "next_order.data.total > 100")
    template = ("{% block subject %}Thanks {{ next_order.type }}{% endblock %}"
                "{{ next_order.id }} {{ next_order.occurred_at }} {{ next_order.data.anything }}")
    assert errors(problems_of(tmp_path, text, {"email/thanks_again.en.html": template})) == []


def test_a_do_result_has_the_fields_of_its_activity_s_return_model(tmp_path):
    text = """\
sequences:
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
      - do: create_coupon
        with: {percent: 10, valid_for: 7d}
        as: coupon
      - do: load_customer
        as: profile
      - if: "profile.order_count > 1"
        then:
          - send: email
            template: offer
"""
    body = ("{% block subject %}{{ coupon.cod }}{% endblock %}{{ coupon.percent }} {{ coupon.expires_at }}"
            "{{ profile.purchased_skus | length }}" + FOOTER)
    problems = problems_of(tmp_path, text, {"email/offer.en.html": body})
    found = [(p.line, p.column, p.message) for p in problems if p.severity == "error"]
    assert [(line, column) for line, column, _ in found] == [(11, 13), (14, 23)], errors(problems)
    assert "profile.order_count does not exist" in found[0][2]
    assert "did you mean profile.orders_count?" in found[0][2]
    assert "coupon.cod does not exist" in found[1][2] and "did you mean coupon.code?" in found[1][2]


def test_a_result_of_an_activity_returning_a_dict_is_not_checked(tmp_path, clean_registry):
    @activity("crm_lookup")
    def crm_lookup(args: Args, ctx: ActivityContext) -> dict:
        return {}

    @activity("points_lookup")
    def points_lookup(args: Args, ctx: ActivityContext) -> Points:
        return Points(balance=1, loyalty=Nested(tier="gold"), history=[])

    text = """\
sequences:
  - id: welcome
    category: transactional
    trigger: customer.created
    steps:
      - do: crm_lookup
        as: crm
      - do: points_lookup
        as: points
      - if: "crm.anything.at_all and points.loyalty.teir == 'gold'"
        then: [exit]
      - send: email
        template: hi
"""
    body = ("{% block subject %}{{ crm.whatever }}{% endblock %}"
            "{% for h in points.history %}{{ h.tier }} {{ h.tir }}{% endfor %}")
    problems = problems_of(tmp_path, text, {"email/hi.en.html": body})
    messages = [p.message for p in problems if p.severity == "error"]
    assert len(messages) == 2, messages
    assert "points.loyalty.teir does not exist" in messages[0] and "did you mean points.loyalty.tier?" in messages[0]
    assert "h.tir does not exist" in messages[1] and "did you mean h.tier?" in messages[1]


def test_a_name_kept_as_different_things_is_not_checked(tmp_path):
    # `thing` is an event in one sequence and a coupon in another; a template sent by both
    # cannot know which, so neither shape is held against it.
    text = """\
sequences:
  - id: one
    category: transactional
    trigger: customer.created
    steps:
      - wait_for: order.created
        timeout: 7d
        as: thing
      - send: email
        template: hi
  - id: two
    category: transactional
    trigger: customer.created
    steps:
      - do: create_coupon
        with: {percent: 10, valid_for: 7d}
        as: thing
      - send: email
        template: hi
"""
    body = "{% block subject %}{{ thing.code }} {{ thing.data }}{% endblock %}"
    assert errors(problems_of(tmp_path, text, {"email/hi.en.html": body})) == []


def test_the_kept_event_is_what_the_router_signals():
    from keepflow.language import context_fields
    from keepflow.runtime.payloads import EventSignal

    assert set(context_fields.KEPT_EVENT) == set(EventSignal.model_fields)
