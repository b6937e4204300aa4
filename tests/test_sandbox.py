"""keepflow/sandbox.py: the worker's sandbox answers serialization-context look-ups without `exec`,
with the answers the SDK's own path gives."""

from __future__ import annotations

from temporalio import workflow
from temporalio.converter import WorkflowSerializationContext

from keepflow.sandbox import SandboxRunner
from worker import SANDBOX
from workflows.sequence import SequenceWorkflow


class Capturing(SandboxRunner):
    """The worker's runner, keeping the instances it makes."""

    made: list = []

    def create_instance(self, det):
        instance = super().create_instance(det)
        Capturing.made.append(instance)
        return instance


def test_the_worker_runs_workflows_in_the_faster_sandbox():
    assert isinstance(SANDBOX, SandboxRunner)


async def test_context_lookups_skip_the_exec_and_answer_as_the_sdk_does():
    runner = Capturing(restrictions=SANDBOX.restrictions)
    # The SDK's own validation: a real sandboxed instance of the workflow, with placeholder info
    # (it sets up its event loop, so the test runs in one).
    runner.prepare_workflow(workflow._Definition.must_from_class(SequenceWorkflow))
    instance = Capturing.made[-1]
    inside = instance.globals_and_locals["__temporal_in_sandbox"]
    # If a new SDK lays its sandbox out differently, this fails: the runner then falls back to
    # the SDK's path (correct, slower), and keepflow/sandbox.py needs another look.
    assert instance.get_serialization_context.__self__ is inside
    assert instance.get_external_store_context.__self__ is inside

    fast = instance.get_serialization_context(None)
    slow = type(instance).get_serialization_context(instance, None)  # the SDK's exec path
    info = instance.get_info()
    assert fast == slow == WorkflowSerializationContext(namespace=info.namespace, workflow_id=info.workflow_id)
    assert instance.get_external_store_context(None) == type(instance).get_external_store_context(instance, None)
