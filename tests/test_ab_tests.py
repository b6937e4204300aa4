"""A/B arms side by side: the split's variants, their conversion, and whether it is chance."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from keepflow.insights.ab_tests import MIN_ENTRANTS, comparisons, two_proportion_p
from keepflow.insights.report import Report, StepReport
from keepflow.language.dsl import SequencesFile

CROSS_SELL = """
sequences:
  - id: cross_sell
    category: marketing
    trigger: order.delivered
    key: order.id
    steps:
      - wait: 3d
      - split:
          - variant: plain
            weight: 50
            steps:
              - send: email
                template: tripod
          - variant: offer
            weight: 50
            steps:
              - send: email
                template: tripod_offer
              - wait: 2d
              - send: email
                template: tripod_reminder
"""


def sequence():
    return SequencesFile.model_validate(YAML(typ="safe").load(CROSS_SELL)).sequences[0]


def report(plain: tuple[int, int], offer: tuple[int, int, int]) -> Report:
    rows = [
        StepReport(sequence_id="cross_sell", step="1.plain.0", channel="email", template="tripod", variant="plain",
                   entered=plain[0], orders=plain[1]),
        StepReport(sequence_id="cross_sell", step="1.offer.0", channel="email", template="tripod_offer",
                   variant="offer", entered=offer[0], orders=offer[1]),
        StepReport(sequence_id="cross_sell", step="1.offer.2", channel="email", template="tripod_reminder",
                   variant="offer", entered=offer[0] - 10, orders=offer[2]),
    ]
    return Report.model_construct(steps=rows)


def test_the_two_proportion_test_matches_the_textbook():
    # 200/1000 against 150/1000: pooled 0.175, z = 2.95, two-sided p = 0.0032.
    assert two_proportion_p(200, 1000, 150, 1000) == pytest.approx(0.0032, abs=0.0002)
    assert two_proportion_p(10, 100, 10, 100) == pytest.approx(1.0)
    assert two_proportion_p(1, MIN_ENTRANTS - 1, 0, 100) is None


def test_arms_side_by_side_with_a_note_a_marketer_reads():
    [test] = comparisons(sequence(), report(plain=(1000, 150), offer=(1000, 120, 80)))
    assert [(a.variant, a.entered, a.orders) for a in test.arms] == [("plain", 1000, 150), ("offer", 1000, 200)]
    assert test.arms[1].conversion == pytest.approx(0.2)
    assert "offer converts better, unlikely to be chance" in test.note
    [early] = comparisons(sequence(), report(plain=(12, 2), offer=(15, 3, 1)))
    assert "too early to tell" in early.note
    [same] = comparisons(sequence(), report(plain=(400, 40), offer=(400, 30, 12)))
    assert "no real difference yet" in same.note
