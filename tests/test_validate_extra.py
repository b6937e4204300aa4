"""`keepflow validate`: template variables against the run's context, and timing warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow.language.problems import Problem
from keepflow.runtime.registry import check_catalog
from tests.helpers import write_project

ROOT = Path(__file__).resolve().parent.parent

FOOTER = "{{ brand.postal_address }} {{ unsubscribe_url }}"


def email(body: str, footer: str = FOOTER) -> str:
    return "{% block subject %}s{% endblock %}" + body + footer


def problems_of(tmp_path: Path, text: str, templates: dict[str, str]) -> list[Problem]:
    _, problems = check_catalog(write_project(tmp_path, text, templates))
    return problems


def test_unknown_variable_is_an_error_at_the_template(tmp_path):
    text = """\
sequences:
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: hello
"""
    problems = problems_of(tmp_path, text, {"email/hello.en.html": email("Hi {{ customer.first_name }}, {{ coupon.code }}")})
    [problem] = problems
    assert problem.severity == "error"
    assert (problem.line, problem.column) == (7, 19)
    assert "'coupon'" in problem.message and "available here" in problem.message
    assert "customer" in problem.message and "unsubscribe_url" in problem.message
    # `order` is there only for sequences about orders
    assert "order" not in problem.message.split("available here:")[1]


def test_as_names_of_earlier_steps_and_order_context(tmp_path):
    text = """\
sequences:
  - id: after_order
    category: marketing
    trigger: order.created
    steps:
      - do: create_coupon
        with: {percent: 10, valid_for: 7d}
        as: coupon
      - wait_for: order.shipped
        timeout: 7d
        as: shipment
      - send: email
        template: offer
"""
    templates = {"email/offer.en.html": email("{{ order.id }} {{ coupon.code }} {{ shipment.data }}")}
    assert [p for p in problems_of(tmp_path, text, templates) if p.severity == "error"] == []


def test_name_defined_in_one_split_variant_only_is_missing_after_the_split(tmp_path):
    text = """\
sequences:
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
      - split:
          - variant: plain
            weight: 50
          - variant: offer
            weight: 50
            steps:
              - do: create_coupon
                with: {percent: 10, valid_for: 7d}
                as: coupon
              - send: email
                template: offer
      - send: email
        template: offer
"""
    templates = {"email/offer.en.html": email("{{ coupon.code }}")}
    errors = [p for p in problems_of(tmp_path, text, templates) if p.severity == "error"]
    # the send inside the offer variant has it; the one after the split does not
    assert [(p.line, "'coupon'" in p.message) for p in errors] == [(18, True)]


def test_started_sequence_inherits_the_starters_names(tmp_path):
    text = """\
sequences:
  - id: first
    category: marketing
    trigger: customer.created
    steps:
      - do: create_coupon
        with: {percent: 10, valid_for: 7d}
        as: coupon
      - start: second
  - id: second
    category: marketing
    steps:
      - send: email
        template: offer
"""
    templates = {"email/offer.en.html": email("{{ coupon.code }}")}
    assert [p for p in problems_of(tmp_path, text, templates) if p.severity == "error"] == []


def test_name_used_only_where_defined_is_a_warning(tmp_path):
    text = """\
sequences:
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: hello
"""
    body = "{% if points is defined %}{{ points.total }}{% endif %} {{ nickname | default('friend') }}"
    problems = problems_of(tmp_path, text, {"email/hello.en.html": email(body)})
    assert [(p.severity, "'nickname'" in p.message or "'points'" in p.message) for p in problems] == [
        ("warning", True), ("warning", True)]


def test_variables_of_a_parent_template_count(tmp_path):
    text = """\
sequences:
  - id: welcome
    category: transactional
    trigger: customer.created
    steps:
      - send: email
        template: hello
"""
    templates = {
        "email/_frame.html": "{% block subject %}{% endblock %}{{ loyalty.tier }}{% block body %}{% endblock %}",
        "email/hello.en.html": '{% extends "email/_frame.html" %}{% block subject %}s{% endblock %}',
    }
    [problem] = problems_of(tmp_path, text, templates)
    assert problem.severity == "error" and "'loyalty'" in problem.message


def test_transactional_template_may_show_unsubscribe_url_when_present(tmp_path):
    text = """\
sequences:
  - id: receipt
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: email
        template: receipt
"""
    body = "{% if unsubscribe_url is defined %}{{ unsubscribe_url }}{% endif %}{{ order.id }}"
    assert problems_of(tmp_path, text, {"email/receipt.en.html": email(body, "")}) == []


def test_review_request_soon_after_delivery_warns(tmp_path):
    text = """\
sequences:
  - id: after_delivery
    category: marketing
    trigger: order.created
    key: order.id
    steps:
      - wait_for: order.delivered
        timeout: 14d
      - wait: 2d
      - start: reviews
  - id: reviews
    category: marketing
    key: order.id
    steps:
      - send: email
        template: review_request
"""
    problems = problems_of(tmp_path, text, {"email/review_request.en.html": email("{{ order.id }}")})
    [problem] = problems
    assert problem.severity == "warning" and (problem.line, problem.column) == (16, 19)
    assert "2d after the order is delivered" in problem.message and "7 days" in problem.message

    later = text.replace("wait: 2d", "wait: 8d")
    assert problems_of(tmp_path, later, {}) == []


def test_marketing_sms_without_quiet_hours_and_odd_timeouts_warn(tmp_path):
    text = """\
events: [cart.updated]
rules:
  quiet_hours: {channels: [email]}
sequences:
  - id: flash
    category: marketing
    trigger: customer.created
    steps:
      - wait_for: cart.updated
        timeout: 10m
      - wait_for: cart.updated
        timeout: 45d
      - send: sms
        template: flash
"""
    problems = problems_of(tmp_path, text, {"sms/flash.en.txt": "Sale! {{ customer.first_name }}"})
    assert all(p.severity == "warning" for p in problems), [p.format() for p in problems]
    assert [(p.line, p.column) for p in problems] == [(10, 18), (12, 18), (13, 15)]
    assert "10m" in problems[0].message and "45d" in problems[1].message
    assert "quiet" in problems[2].message


def test_shipped_sequences_still_validate_cleanly():
    catalog, problems = check_catalog(ROOT / "sequences.yaml")
    assert catalog is not None
    assert [p.format() for p in problems if p.severity == "error"] == []


def test_misspelt_event_types_are_refused_with_the_nearest_known_one(tmp_path):
    text = """\
sequences:
  - id: review
    category: marketing
    trigger: order.deliverd
    exit_on: [order.refundd]
    goal: [review.submited]
    steps:
      - wait_for: order.shiped
        timeout: 7d
      - send: email
        template: review
        superseded_by: [order.delivered, order.cancelld]
"""
    problems = problems_of(tmp_path, text, {"email/review.en.html": email("Hi")})
    assert [(p.line, p.column, p.severity) for p in problems] == [
        (4, 14, "error"), (5, 15, "error"), (6, 12, "error"), (8, 19, "error"), (12, 42, "error")]
    first = problems[0].message
    assert "'order.deliverd'" in first and "did you mean order.delivered?" in first
    assert "events:" in first  # the fix for a shop's own event type
    assert "did you mean order.refunded?" in problems[1].message
    assert "did you mean review.submitted?" in problems[2].message
    assert "did you mean order.shipped?" in problems[3].message
    assert "did you mean order.cancelled?" in problems[4].message


def test_a_shops_own_event_types_are_declared_under_events(tmp_path):
    text = """\
events: [quiz.completed, loyalty.tier_changed]
sequences:
  - id: quiz
    category: marketing
    trigger: quiz.completed
    steps:
      - wait_for: loyalty.tier_changd
        timeout: 7d
      - send: email
        template: quiz
"""
    problems = problems_of(tmp_path, text, {"email/quiz.en.html": email("Hi")})
    [problem] = problems
    assert (problem.line, problem.column) == (7, 19)
    assert "did you mean loyalty.tier_changed?" in problem.message


def test_an_event_type_far_from_any_known_lists_what_to_do(tmp_path):
    text = """\
sequences:
  - id: quiz
    category: marketing
    trigger: quiz.completed
    steps:
      - send: email
        template: quiz
"""
    [problem] = problems_of(tmp_path, text, {"email/quiz.en.html": email("Hi")})
    assert (problem.line, problem.column) == (4, 14)
    assert "did you mean" not in problem.message
    assert "order.created" in problem.message  # the known ones, to pick from
    assert "add it under events:" in problem.message


def test_the_known_event_types_cover_what_keepflow_itself_sends():
    import inspect
    import re

    from keepflow.http import shopify
    from keepflow.insights.rfm import ADVOCACY_EVENTS
    from keepflow.language.events import BUILTIN_EVENTS
    from keepflow.runtime.routing import ACTIVITY_TYPES

    # Each Shopify mapper returns (type, fields); reading them from the source keeps a new mapper
    # from slipping past without a payload fixture for it here.
    mapped = set(re.findall(r'return "([a-z_]+\.[a-z_]+)", \{', inspect.getsource(shopify)))
    assert len(mapped) >= 5
    produced = mapped | set(ACTIVITY_TYPES) | set(ADVOCACY_EVENTS) | {"customer.inactive"}
    assert produced - set(BUILTIN_EVENTS) == set()


def test_misspelt_fields_in_templates_are_refused_with_the_nearest_one(tmp_path):
    text = """\
brand: {name: Lumen, postal_address: 1 Road}
sequences:
  - id: thanks
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: email
        template: thanks
"""
    body = ("{% block subject %}Hi {{ customer.firstname }}{% endblock %}\n"
            "{% for item in order.items %}{{ item.titel }} {{ item.price }}{% endfor %}\n"
            "{{ brand.postal_adress }} {{ customer.rfm.levl }}")
    problems = problems_of(tmp_path, text, {"email/thanks.en.html": body})
    assert all((p.line, p.column, p.severity) == (9, 19, "error") for p in problems), [p.format() for p in problems]
    messages = sorted(p.message for p in problems)
    assert len(messages) == 4, messages
    assert any("line 1" in m and "customer.firstname" in m and "did you mean customer.first_name?" in m
               for m in messages)
    assert any("line 2" in m and "item.titel" in m and "did you mean item.title?" in m for m in messages)
    assert any("line 3" in m and "did you mean brand.postal_address?" in m for m in messages)
    assert any("did you mean customer.rfm.level?" in m for m in messages)


def test_misspelt_fields_in_if_and_key_are_refused(tmp_path):
    text = """\
sequences:
  - id: thanks
    category: transactional
    trigger: order.created
    key: order.idd
    steps:
      - if: "customer.rfm.segmnt == 'champions' and customer.consents.sms"
        then:
          - exit
"""
    problems = problems_of(tmp_path, text, {})
    assert [(p.line, p.column) for p in problems] == [(5, 10), (7, 13)], [p.format() for p in problems]
    assert "key:" in problems[0].message and "did you mean order.id?" in problems[0].message
    assert "if:" in problems[1].message and "did you mean customer.rfm.segment?" in problems[1].message


def test_fields_the_context_does_not_fix_are_not_checked(tmp_path):
    text = """\
sequences:
  - id: after
    category: transactional
    trigger: order.created
    steps:
      - wait_for: order.shipped
        timeout: 7d
        as: shipment
      - do: load_customer
        as: profile
      - if: "shipment.data.anything and event.data.whatever and customer.consents.whatsapp"
        then:
          - exit
      - send: email
        template: shipped
"""
    body = ("{% block subject %}{{ customer.first_name | upper }} {{ customer.first_name.title() }}{% endblock %}"
            "{{ shipment.data.tracking_url }} {{ profile.purchased_skus }} {{ order.items | length }}"
            "{{ customer.get('first_name') }}")
    problems = problems_of(tmp_path, text, {"email/shipped.en.html": body})
    assert [p.format() for p in problems if p.severity == "error"] == []


def test_the_checked_fields_are_the_runtimes_own():
    from keepflow.insights import rfm
    from keepflow.language import context_fields
    from keepflow.runtime.events import CustomerIn, EventIn, OrderIn, OrderItem
    from keepflow.runtime.payloads import EventSignal

    assert set(context_fields.CUSTOMER) == set(CustomerIn.model_fields) | {"rfm"}
    assert set(context_fields.RFM) == set(rfm._profile(*[None] * 9))
    assert set(context_fields.ORDER) == set(OrderIn.model_fields)
    assert set(context_fields.LINE_ITEM) == set(OrderItem.model_fields)
    assert set(context_fields.EVENT) == set(EventSignal.model_fields)
    assert set(EventIn.model_fields) >= set(context_fields.EVENT)


def test_a_comparison_with_a_value_a_field_never_has_is_refused(tmp_path):
    text = """\
sequences:
  - id: thanks
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - if: "customer.rfm.level == 'first-time' or customer.rfm.segment in ['at_risk', 'cant-lose']"
        then:
          - exit
      - if: "'champion' != customer.rfm.segment and customer.rfm.fit == 'grow'"
        then:
          - exit
      - if: "customer.rfm.level != 'vip'"
        then:
          - exit
"""
    problems = problems_of(tmp_path, text, {})
    assert [(p.line, p.column) for p in problems] == [(7, 13), (7, 13), (10, 13), (13, 13)], \
        [p.format() for p in problems]
    assert "did you mean" not in problems[3].message and "'vip'" in problems[3].message
    level = next(p.message for p in problems if "'first-time'" in p.message)
    assert "customer.rfm.level is never 'first-time'" in level and "did you mean 'first_time'?" in level
    assert "advocate, repeat, first_time, none" in level
    assert any("'cant-lose'" in p.message and "did you mean 'cant_lose'?" in p.message for p in problems)
    assert "did you mean 'champions'?" in problems[2].message


def test_inactivity_filters_name_real_segments_and_levels(tmp_path):
    text = """\
sequences:
  - id: winback
    category: marketing
    trigger: {inactive_for: 60d, segment: [at_risk, hibernatng], level: [repeat, frist_time]}
    steps:
      - send: email
        template: back
"""
    problems = problems_of(tmp_path, text, {"email/back.en.html": email("Hi")})
    assert [(p.line, p.column) for p in problems] == [(4, 53), (4, 82)], [p.format() for p in problems]
    assert "did you mean 'hibernating'?" in problems[0].message
    assert "did you mean 'first_time'?" in problems[1].message


def test_the_checked_values_are_the_scores_own():
    from keepflow.insights import rfm
    from keepflow.language import context_fields

    assert context_fields.SEGMENTS == rfm.SEGMENTS
    assert context_fields.LEVELS == rfm.LEVELS
    assert context_fields.FITS == rfm.FITS


def test_split_weights_must_add_up_to_100(tmp_path):
    text = """\
sequences:
  - id: ab
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - split:
          - variant: plain
            weight: 50
          - variant: offer
            weight: 40
      - split:
          - variant: a
            weight: 33.5
          - variant: b
            weight: 66.5
"""
    [problem] = problems_of(tmp_path, text, {})
    assert (problem.line, problem.column, problem.severity) == (7, 9, "error")
    assert "add up to 90" in problem.message and "100" in problem.message
    assert "56%" in problem.message  # what 50 of 90 would really be


STEPS_HEAD = """\
sequences:
  - id: welcome
    category: transactional
    trigger: customer.created
    steps:
"""


@pytest.mark.parametrize("steps, line, column, fragment", [
    # a colon inside a value
    ("      - send: email\n        template: hello: there\n", 7, 24, "put the value in quotes"),
    # a tab for indentation
    ("      - send: email\n\ttemplate: hello\n", 7, 1, "replace the tab with spaces"),
    # a key indented less than its siblings
    ("      - send: email\n       template: hello\n", 7, 8, "line it up"),
    # a dash missing, the key lands in the wrong place
    ("      - send: email\n        template: hello\n      wait: 1d\n", 8, 7, "line it up"),
    # a list never closed: pointed at where it opens
    ("      - send: email\n        template: hello\n        superseded_by: [order.delivered\n"
     "      - wait: 1d\n", 8, 24, "close it with ]"),
    # a quote never closed: pointed at where it opens
    ("      - if: \"customer.consents.sms\n        then: [exit]\n", 6, 13, "add the closing \""),
    # a value starting with a character YAML keeps for itself
    ("      - send: email\n        template: `hello`\n", 7, 19, "put the value in quotes"),
])
def test_yaml_syntax_errors_are_said_plainly_with_the_fix(tmp_path, steps, line, column, fragment):
    [problem] = problems_of(tmp_path, STEPS_HEAD + steps, {"email/hello.en.html": email("Hi")})
    assert (problem.line, problem.column) == (line, column), problem.format()
    assert fragment in problem.message, problem.format()
    for jargon in ("<block", "token", "scanning", "while parsing", "stream"):
        assert jargon not in problem.message, problem.format()


@pytest.mark.parametrize("body, fragment", [
    ("{% if customer.first_name %}Hi", "{% if %} is never closed: add {% endif %}"),
    ("{% for item in order.items %}{{ item.title }}", "{% for %} is never closed: add {% endfor %}"),
    ("Hi {{ customer.first_name }", "two braces"),
    ("{% if customer.first_name %}Hi{% endfor %}", "{% endfor %} does not close the open {% if %}"),
    ("{% endif %}", "{% endif %} closes nothing"),
    ("{% iff customer.first_name %}{% endif %}", "unknown tag {% iff %}"),
])
def test_jinja_syntax_errors_are_said_plainly_with_the_fix(tmp_path, body, fragment):
    text = STEPS_HEAD + "      - send: email\n        template: hello\n"
    [problem] = problems_of(tmp_path, text, {"email/hello.en.html": email(body)})
    assert (problem.line, problem.column) == (7, 19), problem.format()
    assert "template email/hello.en.html line 1:" in problem.message
    assert fragment in problem.message, problem.format()
    assert "Jinja was looking for" not in problem.message
