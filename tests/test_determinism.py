"""`if:` and `key:` are evaluated inside the workflow: an expression must decide the same way
every time a run is replayed, so nothing random may reach them (`split:` is the random choice
that is stable per customer)."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
from pathlib import Path

import jinja2.defaults
import pytest
from temporalio.client import WorkflowFailureError

from keepflow.language import expressions
from keepflow.runtime.registry import check_catalog
from tests.engine import running_worker
from tests.helpers import snapshot, start
from tests.test_replay import replayer
from tests.test_validate import HEAD, assert_problem, project

ROOT = Path(__file__).resolve().parent.parent


def test_validate_refuses_random_and_lipsum_where_they_are_written(tmp_path):
    text = HEAD.replace("    steps:\n", '    key: "lipsum(2)"\n    steps:\n') + (
        '      - if: "[true, false] | random"\n        then: [exit]\n'
        '      - if: "customer.tags | map(\'random\') | first"\n        then: [exit]\n')
    _, problems = check_catalog(project(tmp_path, text))
    key, dice, mapped = problems
    assert_problem(key, 5, 10, "key: `lipsum` is not allowed in if:/key: (a run must decide the same way on replay)")
    assert_problem(dice, 7, 13, "if: `random` is not allowed in if:/key:")
    assert_problem(mapped, 9, 13, "if: `random` is not allowed in if:/key:")
    assert all("use `split:` for random assignment" in p.message for p in problems)


@pytest.mark.parametrize("expression", ["[true, false] | random", "lipsum(1) | length > 10",
                                        "range(3) | map('random') | list"])
def test_evaluation_refuses_what_validate_refuses(expression):
    """A run started from a snapshot that never went through `validate` is refused too."""
    assert expressions.refused(expression)
    with pytest.raises(expressions.ExpressionError, match="use `split:` for random assignment"):
        expressions.evaluate(expression, {})


def test_the_expression_environment_offers_only_the_allowed_names():
    env = expressions._env
    assert set(env.filters) == expressions.PURE_FILTERS
    assert set(env.tests) == expressions.PURE_TESTS
    assert set(env.globals) == expressions.PURE_GLOBALS
    # Everything else Jinja offers by default is still there: only the impure names are gone.
    assert set(jinja2.defaults.DEFAULT_FILTERS) - expressions.PURE_FILTERS == {"random"}
    assert set(jinja2.defaults.DEFAULT_NAMESPACE) - expressions.PURE_GLOBALS == {"lipsum"}
    assert expressions.evaluate("[3, 1, 2] | sort | first + range(2) | sum", {}) == 2


BRANCH = """
sequences:
  - id: branch
    category: transactional
    steps:
      - if: "{condition}"
        then:
          - wait: 1h
        else:
          - exit
"""


async def test_a_branch_replays_the_same_and_random_is_refused_when_the_run_reaches_it(env, settings, db):
    async with running_worker(env, settings, db) as tq:
        pure = await start(env.client, tq, snapshot(BRANCH.format(condition="customer.first_name == 'Nok'")))
        assert [s.outcome for s in (await pure.result()).steps_done] == ["waited", "then"]
        # Built without `validate`, as an old snapshot or a hand-made RunInput could be.
        dice = await start(env.client, tq, snapshot(BRANCH.format(condition="[true, false] | random")))
        with pytest.raises(WorkflowFailureError) as failed:
            await dice.result()
    assert "`random` is not allowed in if:/key:" in str(failed.value.cause)
    # Then: one timer; else: none. A branch decided differently on replay issues other commands,
    # which the replayer reports as nondeterminism; twenty replays would catch a coin flip.
    for handle in (pure, dice):
        history = await handle.fetch_history()
        for _ in range(20):
            await replayer().replay_workflow(history)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _keepflow_imports(module: str, only_passed_through: bool) -> set[str]:
    """The Keepflow modules `module` imports (only inside `imports_passed_through` blocks, if asked)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.With)
              and any("imports_passed_through" in ast.unparse(item.context_expr) for item in n.items)]
    found: set[str] = set()
    for scope in (blocks if only_passed_through else [tree]):
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
                if base.split(".")[0] != "keepflow":
                    continue
                # `from keepflow import expressions` imports the module keepflow.language.expressions.
                submodules = {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
                found |= submodules or {base}
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "keepflow")
    return found


def test_the_sandbox_passes_through_exactly_the_keepflow_modules_workflows_import():
    """What a workflow imports under `imports_passed_through`, and what those import in turn:
    no other Keepflow module (the store, providers) may be handed to workflow code unchecked."""
    from worker import PASSTHROUGH

    workflows = [f"workflows.{p.stem}" for p in (ROOT / "workflows").glob("*.py") if p.stem != "__init__"]
    wanted: set[str] = set()
    pending = {m for w in workflows for m in _keepflow_imports(w, True)}
    while pending:
        module = pending.pop()
        if module not in wanted:
            wanted.add(module)
            pending |= _keepflow_imports(module, False)
    assert {m for m in PASSTHROUGH if m.split(".")[0] == "keepflow"} == wanted


async def test_a_condition_on_a_field_the_customer_lacks_fails_the_run_visibly(env, settings, db):
    """`customer.vip` for a customer without `vip`: Jinja's strict undefined only fails when it is
    used, which was after evaluate() returned, so the workflow task failed and retried for ever."""
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snapshot(BRANCH.format(condition="customer.vip")))
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(handle.result(), 10)
    assert "has no attribute 'vip'" in str(failed.value.cause)


async def test_tests_run_workflows_in_the_sandbox_and_a_production_worker_without_it(env, settings, db):
    """The sandbox is the check on workflows/ that every test runs under; a worker started with the
    defaults runs the same code without it (keepflow/settings.py, `workflow_sandbox`)."""
    from temporalio.worker import UnsandboxedWorkflowRunner
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    from keepflow.settings import Settings
    from worker import build_worker

    assert settings.workflow_sandbox and Settings().workflow_sandbox
    tested = build_worker(env.client, settings, db, task_queue="sandboxed")
    assert isinstance(tested.config()["workflow_runner"], SandboxedWorkflowRunner)
    assert Settings.model_fields["workflow_sandbox"].default is False
    production = build_worker(env.client, settings.model_copy(update={"workflow_sandbox": False}), db, task_queue="plain")
    assert isinstance(production.config()["workflow_runner"], UnsandboxedWorkflowRunner)
