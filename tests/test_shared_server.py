"""The session's shared time-skipping server is replaced when a test leaves its clock held or the
server is gone, so one such test cannot fail every later one (tests/engine.py, SharedServer)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.engine import SharedServer, time_skipping_server

RELEASE = asyncio.Event()


@activity.defn
async def held() -> None:
    await RELEASE.wait()


@workflow.defn
class Holding:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(held, start_to_close_timeout=timedelta(minutes=1))


async def running(handle) -> bool:
    pending = (await handle.describe()).raw_description.pending_activities
    return any(a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED for a in pending)


async def skips(server: SharedServer) -> bool:
    """Whether an hour passes on the server's clock at once. Only asked of a server that skips: one
    whose clock is held would be changed by the unlock this sleep leaves behind when cut short."""
    try:
        await asyncio.wait_for(server.env.sleep(timedelta(hours=1)), 3)
        return True
    except asyncio.TimeoutError:
        return False


async def test_a_server_left_with_its_clock_held_or_gone_is_replaced_and_a_healthy_one_kept():
    server = SharedServer(await time_skipping_server())
    try:
        healthy = await server.ready("tests/test_x.py::test_leaves_nothing")
        assert healthy is server.env and server.replaced == [] and await skips(server)
        await server.ready("tests/test_x.py::test_leaves_a_hold")

        # A run terminated while its activity runs: the test server keeps that activity's hold on
        # its clock for good (sdk-java #1138).
        RELEASE.clear()
        task_queue = f"test-{uuid.uuid4()}"
        async with Worker(healthy.client, task_queue=task_queue, workflows=[Holding], activities=[held],
                          workflow_runner=UnsandboxedWorkflowRunner()):
            handle = await healthy.client.start_workflow(Holding.run, id=f"holding-{uuid.uuid4()}", task_queue=task_queue)
            while not await running(handle):
                await asyncio.sleep(0.05)
            await handle.terminate("mid-activity")
            RELEASE.set()

        replaced = await server.ready("tests/test_x.py::test_next")
        assert replaced is server.env and replaced is not healthy and await skips(server)
        [held_line] = server.replaced
        assert held_line.startswith("after tests/test_x.py::test_leaves_a_hold: its clock no longer skipped")

        await replaced.shutdown()  # gone, as a server that crashed is
        after_crash = await server.ready("tests/test_x.py::test_after_a_crash")
        assert after_crash is not replaced and await skips(server)
        assert server.replaced[1].startswith("after tests/test_x.py::test_next: it stopped answering")
    finally:
        await server.env.shutdown()
