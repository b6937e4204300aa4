"""The sequence interpreter: one durable run of one sequence for one key (an order, a customer).

Deterministic by construction: no I/O, no clock, no randomness. Every side effect is an
activity (`send_message`, or a registered `do:` activity); every pause is a Temporal timer.
The run interprets the definition snapshot it was started with, so editing `sequences.yaml`
changes new runs only. Events reach the run as signals and are buffered, so one that arrives
before the run reaches its `wait_for` is waiting there when it does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keepflow import expressions
    from keepflow.contracts import (
        DoRequest, EventSignal, RunInput, RunStatus, SendPolicy, SendRequest, SendResult, StepRecord,
    )
    from keepflow.durations import format_duration
    from keepflow.dsl import (
        DoStep, ExitStep, IfStep, Sequence, SendStep, SplitStep, StartStep, Step, WaitForStep, WaitStep, step_path,
    )

# A send is render + checks + one provider call; the provider's own HTTP timeout is 10 s.
SEND_TIMEOUT = timedelta(seconds=30)
# Providers do go down for hours; keep trying for a day, backing off to every 10 minutes.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10), maximum_attempts=200,
)
SEND_DEADLINE = timedelta(days=1)
DO_TIMEOUT = timedelta(seconds=30)
DO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5), maximum_attempts=50,
    non_retryable_error_types=["InvalidArguments"],
)
DO_DEADLINE = timedelta(hours=2)


class _Exit(Exception):
    def __init__(self, reason: str):
        self.reason = reason


@workflow.defn(name="sequence")
class SequenceWorkflow:
    @workflow.init
    def __init__(self, input: RunInput) -> None:
        self.input = input
        self.sequence: Sequence = input.snapshot.sequence
        self.context: dict[str, Any] = dict(input.context)
        self.inbox: list[EventSignal] = []
        self.consumed: set[str] = set()
        self.exit_reason: str | None = None
        self.current: str | None = None
        self.done: list[StepRecord] = []
        self.started_at = workflow.now()

    @workflow.run
    async def run(self, input: RunInput) -> RunStatus:
        try:
            await self._run_steps(self.sequence.steps, "")
            self.exit_reason = self.exit_reason or "completed"
        except _Exit as stop:
            self.exit_reason = stop.reason
        self.current = None
        return self.status()

    @workflow.signal
    def event(self, signal: EventSignal) -> None:
        if any(e.id == signal.id for e in self.inbox):
            return  # a redelivered event changes nothing
        self.inbox.append(signal)
        if self.exit_reason is not None:
            return
        if signal.type in self.sequence.goal:
            self.exit_reason = f"converted: {signal.type}"
        elif signal.type in self.sequence.exit_on:
            self.exit_reason = f"exit_on {signal.type}"

    @workflow.query
    def status(self) -> RunStatus:
        return RunStatus(
            sequence_id=self.sequence.id, key=self.input.key, definition_hash=self.input.snapshot.hash,
            current_step=self.current, steps_done=list(self.done),
            events_received=[e.type for e in self.inbox], exit_reason=self.exit_reason,
        )

    # -- interpretation -------------------------------------------------------------------------

    async def _run_steps(self, steps: list[Step], prefix: str) -> None:
        for index, step in enumerate(steps):
            self._check_exit()
            path = step_path(prefix, index, step)
            self.current = path
            outcome = await self._run_step(step, path)
            self.done.append(StepRecord(path=path, kind=type(step).__name__.removesuffix("Step").lower(), outcome=outcome))

    async def _run_step(self, step: Step, path: str) -> str:
        if isinstance(step, SendStep):
            return await self._send(step, path)
        if isinstance(step, WaitStep):
            await self._sleep(step.wait)
            return "waited"
        if isinstance(step, WaitForStep):
            return await self._wait_for(step, path)
        if isinstance(step, IfStep):
            branch = "then" if self._condition(step.if_) else "else"
            await self._run_steps(step.then if branch == "then" else step.else_, f"{path}.{branch}")
            return branch
        if isinstance(step, SplitStep):
            variant = self._choose_variant(step, path)
            self.context.setdefault("variants", {})[path] = variant.variant
            await self._run_steps(variant.steps, f"{path}.{variant.variant}")
            return variant.variant
        if isinstance(step, DoStep):
            return await self._do(step, path)
        if isinstance(step, StartStep):
            return await self._start(step)
        if isinstance(step, ExitStep):
            raise _Exit(step.exit)
        raise ApplicationError(f"unknown step {step!r}", non_retryable=True)

    async def _send(self, step: SendStep, path: str) -> str:
        category = step.category or self.sequence.category
        due = self._clock()
        # In a compressed run (`keepflow demo`: a day per second) timers fire a day late or more
        # and each run's clock drifts from the others', so the wall-clock rules (quiet hours, the
        # cap, expiry) would misfire; they apply at time scale 1 (production, tests, simulate).
        compressed = self.input.time_scale != 1.0
        expires_at = due + step.expires_after if step.expires_after and not compressed else None
        while True:
            self._check_exit()
            superseding = self._superseding(step)
            request = SendRequest(
                workflow_id=workflow.info().workflow_id, sequence_id=self.sequence.id, step=path,
                channel=step.send, template=step.template, category=category, context=self.context,
                now=self._clock(), time_scale=self.input.time_scale, policy=self._policy(step, category),
                expires_at=expires_at, drop=f"superseded by {superseding}" if superseding else None,
                coupon=step.coupon,
            )
            try:
                result = await workflow.execute_activity(
                    "send_message", request, result_type=SendResult,
                    start_to_close_timeout=SEND_TIMEOUT, schedule_to_close_timeout=SEND_DEADLINE,
                    retry_policy=SEND_RETRY,
                )
            except ActivityError as err:
                # Retries ran out (a day of provider outage): the message row keeps the last error;
                # the run goes on so later steps are not lost too.
                workflow.logger.warning("send %s gave up: %s", path, err.cause or err)
                return "failed: retries exhausted"
            if result.status != "deferred" or result.retry_at is None:
                return result.status if not result.reason else f"{result.status}: {result.reason}"
            # Held (quiet hours, the cap): a durable timer in the run, cut short if the run ends or
            # a superseding event arrives; then the same message is asked for again.
            wait = max(result.retry_at - self._clock(), timedelta(seconds=1))
            try:
                await workflow.wait_condition(
                    lambda: self.exit_reason is not None or self._superseding(step) is not None,
                    timeout=self._scaled(wait),
                )
            except asyncio.TimeoutError:
                pass

    def _policy(self, step: SendStep, category: str) -> SendPolicy | None:
        rules = self.input.snapshot.rules
        if self.input.time_scale != 1.0:
            return SendPolicy(group=self.sequence.unsubscribe_group) if category == "marketing" else None
        if category != "marketing":
            # Transactional messages are never capped; they keep quiet hours only where their
            # sequence asks for them (a shipping text need not arrive at 2 a.m.).
            if self.sequence.quiet_hours is None:
                return None
            return SendPolicy(group=self.sequence.unsubscribe_group, quiet_hours=self.sequence.quiet_hours,
                              fallback_timezones=rules.fallback_timezones)
        return SendPolicy(
            group=self.sequence.unsubscribe_group, quiet_hours=self.sequence.quiet_hours or rules.quiet_hours,
            fallback_timezones=rules.fallback_timezones, cap=rules.frequency_cap.get(step.send),
            on_cap=self.sequence.on_cap,
        )

    def _superseding(self, step: SendStep) -> str | None:
        return next((e.type for e in self.inbox if e.type in step.superseded_by), None)

    async def _wait_for(self, step: WaitForStep, path: str) -> str:
        signal = self._take(step.wait_for)
        if signal is None:
            try:
                await workflow.wait_condition(
                    lambda: self.exit_reason is not None or self._peek(step.wait_for) is not None,
                    timeout=self._scaled(step.timeout),
                )
            except asyncio.TimeoutError:
                pass
            self._check_exit()
            signal = self._take(step.wait_for)
        if signal is not None:
            if step.as_:
                self.context[step.as_] = signal.model_dump(mode="json")
            return f"received {step.wait_for}"
        if step.on_timeout == "exit":
            raise _Exit(f"no {step.wait_for} within {format_duration(step.timeout)}")
        if isinstance(step.on_timeout, list):
            await self._run_steps(step.on_timeout, f"{path}.on_timeout")
        return "timed out"

    async def _do(self, step: DoStep, path: str) -> str:
        request = DoRequest(
            workflow_id=workflow.info().workflow_id, sequence_id=self.sequence.id, step=path,
            args=step.with_, context=self.context,
        )
        try:
            result = await workflow.execute_activity(
                step.do, request, result_type=dict,
                start_to_close_timeout=DO_TIMEOUT, schedule_to_close_timeout=DO_DEADLINE, retry_policy=DO_RETRY,
            )
        except ActivityError as err:
            # Later steps may depend on this result (a coupon for the offer email): stop the run
            # visibly rather than send messages that cannot render.
            raise ApplicationError(f"step {path} ({step.do}) failed: {err.cause or err}", non_retryable=True) from err
        if step.as_:
            self.context[step.as_] = result
        return "done"

    async def _start(self, step: StartStep) -> str:
        snapshot = self.input.snapshot.child(step.start)
        run = RunInput(snapshot=snapshot, key=str(self._evaluate(snapshot.sequence.key)),
                       context=self.context, time_scale=self.input.time_scale)
        return await workflow.execute_activity(
            "start_sequence", run, result_type=str,
            start_to_close_timeout=DO_TIMEOUT, schedule_to_close_timeout=DO_DEADLINE, retry_policy=DO_RETRY,
        )

    # -- helpers --------------------------------------------------------------------------------

    def _check_exit(self) -> None:
        if self.exit_reason is not None:
            raise _Exit(self.exit_reason)

    async def _sleep(self, duration: timedelta) -> None:
        # A timer that an exit_on event cuts short: one timer command either way.
        try:
            await workflow.wait_condition(lambda: self.exit_reason is not None, timeout=self._scaled(duration))
        except asyncio.TimeoutError:
            pass
        self._check_exit()

    def _scaled(self, duration: timedelta) -> timedelta:
        return duration * self.input.time_scale

    def _clock(self):
        """The run's clock in definition time: workflow time, sped up in a compressed run."""
        return self.started_at + (workflow.now() - self.started_at) / self.input.time_scale

    def _peek(self, event_type: str) -> EventSignal | None:
        return next((e for e in self.inbox if e.type == event_type and e.id not in self.consumed), None)

    def _take(self, event_type: str) -> EventSignal | None:
        signal = self._peek(event_type)
        if signal is not None:
            self.consumed.add(signal.id)
        return signal

    def _evaluate(self, expression: str) -> Any:
        try:
            return expressions.evaluate(expression, self.context)
        except expressions.ExpressionError as err:
            # A content mistake, not a transient one: fail the run where the UI shows it,
            # instead of a workflow task that retries forever.
            raise ApplicationError(f"{self.sequence.id}: {err}", type="ExpressionError", non_retryable=True) from err

    def _condition(self, expression: str) -> bool:
        return bool(self._evaluate(expression))

    def _choose_variant(self, step: SplitStep, path: str):
        customer_id = str(self.context.get("customer", {}).get("id", self.input.key))
        point = expressions.bucket(self.sequence.id, path, customer_id) * sum(v.weight for v in step.split)
        for variant in step.split:
            point -= variant.weight
            if point < 0:
                return variant
        return step.split[-1]
