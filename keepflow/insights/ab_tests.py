"""A/B arms side by side: each `split`'s variants with who entered, the orders they brought, and
whether the difference is more than chance.

An arm's entrants are the messages of its first send step (every run that reached the arm wrote
one, whatever then happened to it); its orders are those attributed to any message of the arm
(keepflow/insights/report.py: last marketing touch). Conversion = orders / entrants.

Significance: with two arms, the two-proportion z-test with a pooled proportion (the textbook
test for comparing two conversion rates), two-sided, using the standard normal distribution of
Python's `statistics`. A difference is called significant at p < 0.05, and only once each arm has
at least MIN_ENTRANTS entrants: below that the normal approximation does not hold and the note
says to wait. With more than two arms, each arm is compared with the first (the control).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

from keepflow.insights.report import Report
from keepflow.language.dsl import SendStep, Sequence, SplitStep, walk_steps

MIN_ENTRANTS = 30
SIGNIFICANT = 0.05


@dataclass(frozen=True)
class Arm:
    variant: str
    weight: float
    entered: int
    orders: int

    @property
    def conversion(self) -> float | None:
        return self.orders / self.entered if self.entered else None


@dataclass(frozen=True)
class Comparison:
    split_path: str
    arms: list[Arm]
    # Against the first arm, one per other arm: (variant, p-value or None when too few entered).
    p_values: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def note(self) -> str:
        control = self.arms[0]
        notes = []
        for variant, p in self.p_values:
            arm = next(a for a in self.arms if a.variant == variant)
            if p is None:
                notes.append(f"{variant} vs {control.variant}: too early to tell (each arm needs {MIN_ENTRANTS} "
                             f"entrants; {arm.entered} and {control.entered} so far)")
            elif p < SIGNIFICANT:
                better = variant if (arm.conversion or 0) > (control.conversion or 0) else control.variant
                notes.append(f"{variant} vs {control.variant}: {better} converts better, unlikely to be chance "
                             f"(p = {p:.3f})")
            else:
                notes.append(f"{variant} vs {control.variant}: no real difference yet (p = {p:.2f}); keep the test running")
        return "; ".join(notes)


def two_proportion_p(orders_a: int, entered_a: int, orders_b: int, entered_b: int) -> float | None:
    """Two-sided p-value that two conversion rates differ (pooled z-test); None below MIN_ENTRANTS."""
    if min(entered_a, entered_b) < MIN_ENTRANTS:
        return None
    pooled = (orders_a + orders_b) / (entered_a + entered_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / entered_a + 1 / entered_b))
    if spread == 0:
        return 1.0  # both arms converted all or none: no difference to test
    z = (orders_a / entered_a - orders_b / entered_b) / spread
    return 2 * (1 - NormalDist().cdf(abs(z)))


def comparisons(sequence: Sequence, report: Report) -> list[Comparison]:
    """Every split of the sequence, its arms side by side, from the report's per-step rows."""
    rows = [r for r in report.steps if r.sequence_id == sequence.id]
    found = []
    for path, step in sequence.walk():
        if not isinstance(step, SplitStep):
            continue
        arms = []
        for variant in step.split:
            prefix = f"{path}.{variant.variant}."
            first_send = next((p for p, s in walk_steps(variant.steps, f"{path}.{variant.variant}")
                               if isinstance(s, SendStep)), None)
            entered = sum(r.entered for r in rows if r.step == first_send)
            orders = sum(r.orders for r in rows if r.step.startswith(prefix))
            arms.append(Arm(variant.variant, variant.weight, entered, orders))
        control = arms[0]
        p_values = [(a.variant, two_proportion_p(a.orders, a.entered, control.orders, control.entered)) for a in arms[1:]]
        found.append(Comparison(path, arms, p_values))
    return found
