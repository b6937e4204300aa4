"""The sequence interpreter: one durable run of one sequence for one key (an order, a customer).

Deterministic by construction: no I/O, no clock, no randomness. Every side effect is an
activity (`send_message`, or a registered `do:` activity); every pause is a Temporal timer.
The run interprets the definition snapshot it was started with, so editing `sequences.yaml`
changes new runs only. Events reach the run as signals and are buffered, so one that arrives
before the run reaches its `wait_for` is waiting there when it does.

A run that has heard many events (each signal grows its history) continues as new from the wait
it is in, long before Temporal's history limits: the next run skips the steps already done and
waits out the rest of the same wait (see `Resume`). Runs started before the dashboard read where
runs wait from the store also set the `KeepflowStep` search attribute when they settle into a
wait; new runs do not (`RunInput.step_attribute`), as each upsert is an Action Temporal bills.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, assert_never

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keepflow.language import expressions
    from keepflow.language.dsl import (
        DoStep,
        ExitStep,
        IfStep,
        SendStep,
        Sequence,
        SplitStep,
        StartStep,
        Step,
        WaitForStep,
        WaitStep,
        step_path,
    )
    from keepflow.language.durations import format_duration
    from keepflow.runtime.payloads import (
        DoRequest,
        EventSignal,
        Resume,
        RunInput,
        RunStatus,
        SendRequest,
        SendResult,
        SendTerms,
        StepRecord,
    )
    from keepflow.runtime.search_attributes import STEP, step_value

# A send is render + checks + one provider call; the provider's own HTTP timeout is 10 s.
SEND_TIMEOUT = timedelta(seconds=30)
# A send heartbeats every second while it runs (activities/builtin/send.py): one that stops, a
# worker frozen or killed, is retried after this rather than SEND_TIMEOUT. The retry still waits
# for the silent attempt's lease on its message.
SEND_HEARTBEAT = timedelta(seconds=10)
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

# Temporal warns at 10,240 history events and suggests continuing as new well before. A run
# continues as new from its current wait once its history reaches this length (each signal adds
# one event, and often a workflow task's three), or when the server suggests it. Kept low because
# a worker that evicts a run replays its whole history in one workflow task, and the SDK's
# deadlock detector allows two seconds for it: 1,000 signals replay in about half a second on an
# idle core, and a busy machine is several times slower.
CONTINUE_AS_NEW_AFTER = 500
# A redelivered event comes back within minutes, not thousands of events later: a continued run
# remembers the ids of the latest ones only, and carries at most this many events not yet taken.
SEEN_KEPT = 1_000
INBOX_KEPT = 500
# Runs started before the KeepflowStep search attribute existed replay without setting it. Only runs
# whose input asks for the attribute consult it, so new runs record no marker.
STEP_ATTRIBUTE_PATCH = "keepflow-step-search-attribute"


class _Exit(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class _Continue(Exception):
    """The history is long: continue as new, waiting in `path` until `until`."""

    def __init__(self, path: str, until: datetime, expires_at: datetime | None):
        self.path, self.until, self.expires_at = path, until, expires_at


@workflow.defn(name="sequence")
class SequenceWorkflow:
    @workflow.init
    def __init__(self, input: RunInput) -> None:
        self.input = input
        self.sequence: Sequence = input.snapshot.sequence
        self.context: dict[str, Any] = dict(input.context)
        resume = input.resume
        # Set until the run, continued as new, is back in the wait it left.
        self.resume: Resume | None = resume
        self.inbox: list[EventSignal] = list(resume.inbox) if resume else []
        self.seen: dict[str, None] = dict.fromkeys(resume.seen if resume else [])
        self.events_count = resume.events_count if resume else 0
        # Events not yet taken, per type, and the order in which types were first heard: a run told
        # about tens of thousands of events checks its wait conditions after each one, so these
        # are looked up, never scanned.
        self.untaken: dict[str, deque[EventSignal]] = {}
        self.heard: dict[str, int] = {}
        for carried in self.inbox:
            self._note(carried)
        self.exit_reason: str | None = None
        self.current: str | None = None
        self.done: list[StepRecord] = list(resume.done) if resume else []
        self.started_at = resume.started_at if resume else workflow.now()
        self.waiting_at: str | None = resume.waiting_at if resume else None
        self.continued = resume.continued if resume else 0

    @workflow.run
    async def run(self, input: RunInput) -> RunStatus:
        try:
            await self._run_steps(self.sequence.steps, "")
            self.exit_reason = self.exit_reason or "completed"
        except _Exit as stop:
            self.exit_reason = stop.reason
        except _Continue as at:
            workflow.continue_as_new(self._continued_input(at))
        self.current = None
        return self.status()

    @workflow.signal
    def event(self, signal: EventSignal) -> None:
        if signal.id in self.seen:
            return  # a redelivered event changes nothing
        self.seen[signal.id] = None
        self.events_count += 1
        self.inbox.append(signal)
        self._note(signal)
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
            events_count=self.events_count, continued=self.continued,
        )

    # -- interpretation -------------------------------------------------------------------------

    async def _run_steps(self, steps: list[Step], prefix: str) -> None:
        for index, step in enumerate(steps):
            path = step_path(prefix, index, step)
            if self.resume is not None and not (self.resume.path == path or self.resume.path.startswith(f"{path}.")):
                continue  # done before the run continued as new
            self._check_exit()
            self.current = path
            outcome = await self._run_step(step, path)
            self.done.append(StepRecord(path=path, kind=step.kind, outcome=outcome))

    async def _run_step(self, step: Step, path: str) -> str:
        match step:
            case SendStep():
                return await self._send(step, path)
            case WaitStep():
                resumed = self._resumed_here(path)
                self._settle(path)
                await self._wait(path, resumed.until if resumed else workflow.now() + step.wait)
                self._check_exit()
                return "waited"
            case WaitForStep():
                return await self._wait_for(step, path)
            case IfStep():
                branch = self._resumed_branch(path) or ("then" if self._condition(step.if_) else "else")
                await self._run_steps(step.then if branch == "then" else step.else_, f"{path}.{branch}")
                return branch
            case SplitStep():
                resumed_variant = self._resumed_branch(path)
                variant = (next((v for v in step.split if v.variant == resumed_variant), None)
                           or self._choose_variant(step, path))
                self.context.setdefault("variants", {})[path] = variant.variant
                await self._run_steps(variant.steps, f"{path}.{variant.variant}")
                return variant.variant
            case DoStep():
                return await self._do(step, path)
            case StartStep():
                return await self._start(step)
            case ExitStep():
                raise _Exit(step.exit)
            case _:
                assert_never(step)

    async def _send(self, step: SendStep, path: str) -> str:
        category = step.category or self.sequence.category
        resumed = self._resumed_here(path)
        if resumed is not None:
            # Continued as new while held: finish the same hold, keep the same expiry.
            expires_at, held_until = resumed.expires_at, resumed.until
        else:
            expires_at = workflow.now() + step.expires_after if step.expires_after else None
            held_until = None
        while True:
            if held_until is not None:
                # Held (quiet hours, the cap): a durable timer in the run, cut short if the run
                # ends or a superseding event arrives; then the same message is asked for again.
                self._settle(path)
                await self._wait(path, held_until, lambda: self._superseding(step) is not None, expires_at)
            self._check_exit()
            superseding = self._superseding(step)
            request = SendRequest(
                workflow_id=workflow.info().workflow_id, sequence_id=self.sequence.id, step=path,
                channel=step.send, fallback=step.fallback, template=step.template, category=category,
                context=self.context,
                now=workflow.now(), terms=self._terms(),
                expires_at=expires_at, drop=f"superseded by {superseding}" if superseding else None,
                coupon=step.coupon,
            )
            try:
                result = await workflow.execute_activity(
                    "send_message", request, result_type=SendResult,
                    start_to_close_timeout=SEND_TIMEOUT, schedule_to_close_timeout=SEND_DEADLINE,
                    heartbeat_timeout=SEND_HEARTBEAT, retry_policy=SEND_RETRY,
                )
            except ActivityError as err:
                # Retries ran out (a day of provider outage): the message row keeps the last error;
                # the run goes on so later steps are not lost too.
                workflow.logger.warning("send %s gave up: %s", path, err.cause or err)
                return "failed: retries exhausted"
            if result.status != "deferred" or result.retry_at is None:
                return result.status if not result.reason else f"{result.status}: {result.reason}"
            held_until = max(result.retry_at, workflow.now() + timedelta(seconds=1))

    def _terms(self) -> SendTerms:
        # What the rules need of the definition; keepflow/runtime/send_rules.py resolves them in the activity,
        # so every rule lives in one place.
        return SendTerms(group=self.sequence.unsubscribe_group, quiet_hours=self.sequence.quiet_hours,
                         on_cap=self.sequence.on_cap, rules=self.input.snapshot.rules)

    def _superseding(self, step: SendStep) -> str | None:
        heard = [t for t in step.superseded_by if t in self.heard]
        return min(heard, key=self.heard.__getitem__) if heard else None

    async def _wait_for(self, step: WaitForStep, path: str) -> str:
        if self._resumed_branch(path) != "on_timeout":
            resumed = self._resumed_here(path)
            signal = self._take(step.wait_for)
            if signal is None:
                self._settle(path)
                deadline = resumed.until if resumed else workflow.now() + step.timeout
                await self._wait(path, deadline, lambda: self._peek(step.wait_for) is not None)
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
        # Limits registered with the activity came with the snapshot; the defaults are what every
        # run before them used, so their histories replay unchanged.
        options = self.input.snapshot.activities.get(step.do)
        timeout = options.timeout if options and options.timeout else DO_TIMEOUT
        retry = (dataclasses.replace(DO_RETRY, maximum_attempts=options.max_attempts)
                 if options and options.max_attempts else DO_RETRY)
        try:
            result = await workflow.execute_activity(
                step.do, request, result_type=dict, start_to_close_timeout=timeout,
                schedule_to_close_timeout=max(DO_DEADLINE, timeout), retry_policy=retry,
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
        run = RunInput(snapshot=snapshot, key=str(self._evaluate(snapshot.sequence.key)), context=self.context)
        return await workflow.execute_activity(
            "start_sequence", run, result_type=str,
            start_to_close_timeout=DO_TIMEOUT, schedule_to_close_timeout=DO_DEADLINE, retry_policy=DO_RETRY,
        )

    # -- helpers --------------------------------------------------------------------------------

    def _check_exit(self) -> None:
        if self.exit_reason is not None:
            raise _Exit(self.exit_reason)

    async def _wait(self, path: str, until: datetime, done: Callable[[], bool] = lambda: False,
                    expires_at: datetime | None = None) -> None:
        """Wait until `until` (one timer), or less if the run ends or `done()`; or continue as new
        from here if the history grows long meanwhile."""
        remaining = until - workflow.now()
        if remaining <= timedelta(0):
            return
        try:
            await workflow.wait_condition(
                lambda: self.exit_reason is not None or done() or self._history_long(), timeout=remaining)
        except asyncio.TimeoutError:
            return
        if self.exit_reason is None and not done():
            raise _Continue(path, until, expires_at)

    def _history_long(self) -> bool:
        info = workflow.info()
        return info.get_current_history_length() >= CONTINUE_AS_NEW_AFTER or info.is_continue_as_new_suggested()

    def _continued_input(self, at: _Continue) -> RunInput:
        takeable = self.sequence.events_awaited() | {
            e for _, s in self.sequence.walk() if isinstance(s, SendStep) for e in s.superseded_by}
        untaken = {e.id for t in takeable for e in self.untaken.get(t, ())}
        carried = [e for e in self.inbox if e.id in untaken][-INBOX_KEPT:]
        resume = Resume(
            path=at.path, until=at.until, expires_at=at.expires_at, started_at=self.started_at, inbox=carried,
            seen=list(self.seen)[-SEEN_KEPT:], events_count=self.events_count, done=self.done,
            waiting_at=self.waiting_at, continued=self.continued + 1,
        )
        # An old run's continuation keeps setting the attribute: it carries the old value over, which
        # would otherwise go stale on the dashboard.
        return RunInput(snapshot=self.input.snapshot, key=self.input.key, context=self.context, resume=resume,
                        step_attribute=self.input.step_attribute)

    def _resumed_here(self, path: str) -> Resume | None:
        """The wait to finish, when this is the step the previous run continued as new from."""
        if self.resume is None or self.resume.path != path:
            return None
        resumed, self.resume = self.resume, None
        return resumed

    def _resumed_branch(self, path: str) -> str | None:
        """The branch (then/else, a variant, on_timeout) the previous run was in, below `path`."""
        if self.resume is None or not self.resume.path.startswith(f"{path}."):
            return None
        return self.resume.path[len(path) + 1:].split(".", 1)[0]

    def _settle(self, path: str) -> None:
        """Say where the run waits (the `KeepflowStep` search attribute), in runs started to."""
        # The input is checked first: a run that does not set the attribute records no marker.
        if not self.input.step_attribute or self.waiting_at == path or not workflow.patched(STEP_ATTRIBUTE_PATCH):
            return
        workflow.upsert_search_attributes([STEP.value_set(step_value(self.sequence.id, path))])
        self.waiting_at = path

    def _note(self, signal: EventSignal) -> None:
        self.untaken.setdefault(signal.type, deque()).append(signal)
        self.heard.setdefault(signal.type, len(self.heard))

    def _peek(self, event_type: str) -> EventSignal | None:
        waiting = self.untaken.get(event_type)
        return waiting[0] if waiting else None

    def _take(self, event_type: str) -> EventSignal | None:
        waiting = self.untaken.get(event_type)
        return waiting.popleft() if waiting else None

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
