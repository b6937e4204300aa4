"""`@activity`: what a developer may register, and the limits a run applies to it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel, Field
from temporalio import activity as temporal_activity
from temporalio.client import WorkflowFailureError

from keepflow.language.dsl import ActivityOptions
from keepflow.runtime import registry
from keepflow.runtime.registry import RESERVED, ActivityContext, activity, discover, load_catalog, reset
from tests.engine import running_worker
from tests.helpers import start
from worker import build_worker


class Failing(BaseModel):
    failures: int = Field(ge=0, description="attempts that fail before one succeeds")


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone after it, as the worker and `validate` see the registry."""
    discover()
    yield
    reset()


def test_async_def_is_refused_with_a_clear_message(clean_registry):
    with pytest.raises(TypeError, match=r"activity 'notify_crm': write it as a plain `def`.*threads"):
        @activity("notify_crm")
        async def notify_crm(args: Failing, ctx: ActivityContext) -> dict:
            return {}
    assert "notify_crm" not in discover()


@pytest.mark.parametrize("name", ["send_message", "start_sequence", "scan_inactive_page", "refresh_scores"])
def test_keepflow_s_own_activity_names_are_reserved(clean_registry, name):
    with pytest.raises(ValueError, match=f"activity name '{name}' is Keepflow's own"):
        @activity(name)
        def mine(args: Failing, ctx: ActivityContext) -> dict:
            return {}


async def test_every_activity_the_worker_runs_besides_registered_ones_is_reserved(env, settings, db):
    worker = build_worker(env.client, settings, db, task_queue="reserved-names")
    # The SDK keeps no public list of a worker's activities; its activity worker's table is it.
    own = set(worker._activity_worker._activities) - set(discover())
    assert own == RESERVED


def test_a_name_no_do_step_could_call_is_refused(clean_registry):
    with pytest.raises(ValueError, match="'notify-crm': a `do:` step can only name lowercase letters, digits and _"):
        activity("notify-crm")


@pytest.mark.parametrize(("options", "message"), [
    ({"timeout": "2x"}, "timeout: '2x' is not a duration"),
    ({"timeout": "0s"}, "timeout must be longer than 0s"),
    ({"max_attempts": 0}, "max_attempts must be a whole number of at least 1"),
    ({"max_attempts": 2.5}, "max_attempts must be a whole number of at least 1"),
])
def test_bad_limits_are_refused_at_registration(clean_registry, options, message):
    with pytest.raises(ValueError, match=message):
        activity("notify_crm", **options)


def test_reset_forgets_registrations_and_discover_finds_the_package_s_own_again():
    before = discover()

    @activity("only_in_this_test")
    def only_in_this_test(args: Failing, ctx: ActivityContext) -> dict:
        return {}

    assert "only_in_this_test" in discover()
    reset()
    assert registry._registry == {}
    after = discover()
    assert "only_in_this_test" not in after
    assert after.keys() == before.keys() and after["create_coupon"] is before["create_coupon"]


def _fail_first(args: Failing) -> dict:
    attempt = temporal_activity.info().attempt
    if attempt <= args.failures:
        raise RuntimeError(f"attempt {attempt} fails")
    return {"attempt": attempt}


@pytest.fixture
def flaky(clean_registry):
    @activity("patient_step", timeout="2m", max_attempts=4)
    def patient_step(args: Failing, ctx: ActivityContext) -> dict:
        return _fail_first(args)

    @activity("hasty_step", max_attempts=2)
    def hasty_step(args: Failing, ctx: ActivityContext) -> dict:
        return _fail_first(args)


LIMITED = """
sequences:
  - id: patient
    category: transactional
    steps:
      - do: patient_step
        with: {failures: 3}
  - id: hasty
    category: transactional
    steps:
      - do: hasty_step
        with: {failures: 3}
  - id: ordinary
    category: transactional
    steps:
      - do: create_coupon
        with: {percent: 10, valid_for: 7d}
"""


def scheduled(history) -> list:
    return [e.activity_task_scheduled_event_attributes for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")]


async def test_a_registered_timeout_and_attempts_are_what_the_run_uses(env, settings, db, tmp_path, flaky):
    path = tmp_path / "sequences.yaml"
    path.write_text(LIMITED)
    catalog = load_catalog(path, tmp_path / "templates")  # through validate and the registry, as the engine loads it
    patient = catalog.snapshot("patient")
    assert patient.activities == {"patient_step": ActivityOptions(timeout=timedelta(minutes=2), max_attempts=4)}
    # Without limits of its own nothing changes: the same payload and hash a run always had.
    ordinary = catalog.snapshot("ordinary")
    assert ordinary.activities == {} and "activities" not in ordinary.model_dump()
    async with running_worker(env, settings, db) as tq:
        succeeded = await start(env.client, tq, patient)
        assert [s.outcome for s in (await succeeded.result()).steps_done] == ["done"]
        gave_up = await start(env.client, tq, catalog.snapshot("hasty"))
        with pytest.raises(WorkflowFailureError) as failed:
            await gave_up.result()
        ran_ordinary = await start(env.client, tq, ordinary)
        await ran_ordinary.result()
    assert "attempt 2 fails" in str(failed.value.cause)
    [patient_do] = scheduled(await succeeded.fetch_history())
    assert patient_do.start_to_close_timeout.ToTimedelta() == timedelta(minutes=2)
    assert patient_do.retry_policy.maximum_attempts == 4
    [hasty_do] = scheduled(await gave_up.fetch_history())
    assert (hasty_do.start_to_close_timeout.ToTimedelta(), hasty_do.retry_policy.maximum_attempts) == (timedelta(seconds=30), 2)
    [ordinary_do] = scheduled(await ran_ordinary.fetch_history())
    assert (ordinary_do.start_to_close_timeout.ToTimedelta(), ordinary_do.retry_policy.maximum_attempts) == (timedelta(seconds=30), 50)
