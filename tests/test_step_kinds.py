"""Step kinds come from one table (`AnyStep` and each model's `kind` in keepflow/language/dsl.py).

These check that the table is sound, that every dispatcher handles every kind in it (a sequence
with one step of each kind goes through all of them), and that the type checker `make test`
runs really does flag a `match step:` that misses a kind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from keepflow.http.dashboard.in_flight import settles, settling_steps
from keepflow.insights import graph
from keepflow.language import dsl, lint
from keepflow.language.dsl import STEP_CLASS_BY_KIND, STEP_CLASSES, STEP_KINDS, Step
from keepflow.runtime.payloads import StepRecord
from keepflow.runtime.registry import load_catalog
from keepflow.tools.preview import Note, build_preview
from tests.engine import SHOP_TEMPLATES

ROOT = Path(__file__).resolve().parent.parent

# One step of every kind, each as a marketer writes it; test_the_sample_has_every_kind fails when a
# kind is added to the table and not here.
EVERY_KIND = """
sequences:
  - id: every_kind
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: email
        template: order_shipped
      - wait: 1d
      - wait_for: order.delivered
        timeout: 7d
        on_timeout:
          - send: sms
            template: order_shipped
      - if: "customer.consents.sms"
        then:
          - wait: 1h
      - split:
          - variant: a
            weight: 50
            steps:
              - do: create_coupon
                with: {percent: 10, valid_for: 7d}
                as: coupon
          - variant: b
            weight: 50
      - start: started
      - exit
  - id: started
    category: transactional
    steps:
      - wait: 1d
"""


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("kinds") / "sequences.yaml"
    path.write_text(EVERY_KIND, encoding="utf-8")
    # Loading runs validate's checks too, the context-flow walk among them.
    return load_catalog(path, SHOP_TEMPLATES)


def _kinds_in(sequence: dsl.Sequence) -> list[str]:
    return [step.kind for _, step in sequence.walk()]


def test_each_kind_is_one_word_its_model_reads_from_yaml():
    assert len(set(STEP_KINDS)) == len(STEP_KINDS) == len(STEP_CLASSES)
    for cls in STEP_CLASSES:
        keys = {field.alias or name for name, field in cls.model_fields.items()}
        assert cls.kind in keys, f"{cls.__name__}.kind {cls.kind!r} is none of its YAML keys {sorted(keys)}"


def test_the_sample_has_every_kind(catalog):
    assert set(_kinds_in(catalog.sequences["every_kind"])) == set(STEP_KINDS)


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_a_step_validates_to_the_model_of_its_kind_and_back(catalog, kind):
    step = next(s for _, s in catalog.sequences["every_kind"].walk() if s.kind == kind)
    assert type(step) is STEP_CLASS_BY_KIND[kind]
    # A run's snapshot is dumped and validated again inside the workflow.
    again = TypeAdapter(Step).validate_python(step.model_dump(mode="json"))
    assert again == step and type(again) is type(step)


def test_graph_draws_every_kind_as_a_node_of_that_kind(catalog):
    sequence = catalog.sequences["every_kind"]
    flow = graph.build_flow(sequence)
    assert {n.kind for n in flow.nodes} >= set(STEP_KINDS)
    # Every node kind needs its shape and colour: a missing one is a KeyError here.
    assert graph.to_mermaid(sequence) and graph.to_svg(sequence)


def test_preview_lint_and_in_flight_go_through_every_kind(catalog):
    sequence = catalog.sequences["every_kind"]
    preview = build_preview(catalog, sequence, {"id": "c1", "email": "ana@example.com"},
                            {"id": "o1", "total": "10", "currency": "THB", "items": []})
    assert [m.template for m in preview.messages] == ["order_shipped", "order_shipped"]
    assert isinstance(preview.entries[-1], Note) and preview.entries[-1].text.startswith("exit:")
    assert lint.worst_case(catalog.file)
    by_path = dict(sequence.walk())
    assert {by_path[p].kind for p in settling_steps(sequence)} == {"send", "wait", "wait_for"}
    assert all(isinstance(settles(step), bool) for step in by_path.values())


def test_a_step_record_reads_the_old_spelling_of_wait_for():
    # Runs that continued as new before carry "waitfor" in the steps they had done.
    assert StepRecord(path="0", kind="waitfor", outcome="timed out").kind == "wait_for"
    assert [StepRecord(path="0", kind=k, outcome="").kind for k in STEP_KINDS] == list(STEP_KINDS)


def _match_source(name: str, cases: list[type]) -> list[str]:
    lines = [f"def {name}(step: Step) -> None:", "    match step:"]
    for cls in cases:
        lines += [f"        case {cls.__name__}():", "            pass"]
    return lines + ["        case _:", "            assert_never(step)", "", ""]


@pytest.mark.timeout(300)
def test_the_type_checker_flags_a_match_that_misses_any_kind(tmp_path):
    """`make test` runs mypy with the project's configuration; a missing case must fail it."""
    names = ", ".join(cls.__name__ for cls in STEP_CLASSES)
    source = ["from typing import assert_never", "", f"from keepflow.language.dsl import Step, {names}", "", "",
              *_match_source("complete", list(STEP_CLASSES))]
    expected: dict[int, str] = {}
    for missing in STEP_CLASSES:
        source += _match_source(f"without_{missing.kind}", [c for c in STEP_CLASSES if c is not missing])
        expected[len(source) - 2] = missing.__name__  # the assert_never line, numbered from 1
    module = tmp_path / "kinds_check.py"
    module.write_text("\n".join(source), encoding="utf-8")

    checked = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                              str(module)], cwd=ROOT, capture_output=True, text=True)

    found = {int(m.group(1)): m.group(2) for m in re.finditer(
        r'kinds_check\.py:(\d+): error: Argument 1 to "assert_never" has incompatible type "(\w+)"',
        checked.stdout)}
    assert found == expected, checked.stdout + checked.stderr
    assert checked.returncode == 1
