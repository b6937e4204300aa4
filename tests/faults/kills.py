"""kill -9 of the worker during sends, again and again, and what each message cost at the provider.

One campaign: runs are started a few at a time while a supervisor lets each worker process live a
random while and then SIGKILLs it, and starts a new one at once. Kills are of two kinds, shuffled:

* at random: whatever the worker was doing (claiming a row, rendering, in the provider call,
  recording the outcome, in a workflow task);
* right after the provider accepted a send: the fake's `on_accept` hook, armed for one channel,
  SIGKILLs the worker from inside the provider's request handler once it has recorded the send
  and before it answers. The worker never hears of the accept: its row stays `sending` and the
  activity attempt is lost, which is exactly the unknown-outcome case activities/builtin/send.py handles
  (email: `unknown`, not resent; SMS: looked up at Twilio before resending).

Temporal notices a killed attempt when its heartbeats stop (SEND_HEARTBEAT, 10 s), then retries it
on the current worker; a text's retry then waits for the killed attempt's lease and for Twilio's
list (about 90 s after the mark) before it looks. So a campaign takes its kill phase plus about
a minute and a half.
Used by tests/faults/test_kill9.py (small) and bench/kill.py (big).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.service import RPCError

from tests.faults.stack import Row, Stack, WorkerProcess, key_of

KINDS = ("random", "email", "sms")  # a kill at random, or right after the provider accepted an email / a text
ARMED_FOR = 15.0  # seconds an accept-kill waits for a send of its channel before it becomes a random kill


@dataclass
class Plan:
    runs: int
    random_kills: int
    email_accept_kills: int
    sms_accept_kills: int
    start_over: float  # seconds over which the runs are started
    lifetime: tuple[float, float] = (1.0, 4.0)  # a worker lives this long (uniform, seconds) before its kill
    seed: int = 1
    timeout: float = 300.0  # seconds the runs may take after the last kill
    # Seconds the fake holds each accepted send's answer, as a real provider's latency would: the
    # longer, the more sends are in flight at each kill.
    provider_latency: float = 0.0

    def kinds(self) -> list[str]:
        kinds = ["random"] * self.random_kills + ["email"] * self.email_accept_kills + ["sms"] * self.sms_accept_kills
        random.Random(self.seed).shuffle(kinds)
        return kinds


@dataclass
class Outcome:
    plan: Plan
    completed: dict[str, Any]  # workflow id -> RunStatus
    failed: dict[str, str]  # workflow id -> why it did not complete
    kills: list[str] = field(default_factory=list)  # the kind of each kill done, in order
    accept_killed: dict[str, str] = field(default_factory=dict)  # message key -> channel, killed right after its accept
    workers: int = 0  # worker processes started in all
    unexpected_exits: list[str] = field(default_factory=list)  # workers that died without being killed
    requests: Counter[str] = field(default_factory=Counter)  # message key -> send requests at the provider
    rows: dict[str, Row] = field(default_factory=dict)  # message key -> its row in Keepflow's store
    expected: dict[str, str] = field(default_factory=dict)  # message key -> channel, every message the runs send
    killed_at: list[float] = field(default_factory=list)  # wall clock of each kill, in order
    in_flight: list[int] = field(default_factory=list)  # send_message attempts running on the worker at each kill
    accepted_at: dict[str, float] = field(default_factory=dict)  # email key -> wall clock of its (last) accept
    kill_phase: float = 0.0
    wall: float = 0.0

    # -- figures ---------------------------------------------------------------------------------

    def distribution(self, channel: str) -> Counter[str]:
        """How many of the channel's message keys got 0, 1, 2+ send requests at the provider."""
        return Counter(_bucket(self.requests.get(k, 0)) for k, c in self.expected.items() if c == channel)

    def statuses(self, channel: str) -> Counter[str]:
        return Counter(self.rows[k].status if k in self.rows else "(no row)"
                       for k, c in self.expected.items() if c == channel)

    def crosstab(self) -> Counter[tuple[str, str, str]]:
        """(channel, final status, requests bucket) -> message keys."""
        return Counter((c, self.rows[k].status if k in self.rows else "(no row)", _bucket(self.requests.get(k, 0)))
                       for k, c in self.expected.items())

    def doubled(self) -> list[str]:
        return sorted(k for k, n in self.requests.items() if n >= 2)

    def unrecorded_ages(self) -> list[float]:
        """For each `unknown` email the provider accepted: seconds from the moment its answer went
        back to the worker to the nearest kill, i.e. how long the worker knew of the accept
        without recording it. Negative: the kill came first, while the send was still in the
        provider call (or its request still on its way: the fake reads it after the kill)."""
        ages = []
        for key, row in self.rows.items():
            accepted = self.accepted_at.get(key)
            if (row.channel != "email" or row.status != "unknown" or accepted is None or not self.killed_at
                    or key in self.accept_killed):  # those never got their answer: counted apart
                continue
            answered = accepted + self.plan.provider_latency
            ages.append(min((k - answered for k in self.killed_at), key=abs))
        return sorted(ages)

    def strays(self) -> list[str]:
        """Requests for keys no run sends (should be none)."""
        return sorted(k for k in self.requests if k not in self.expected)

    def report(self) -> str:
        kills = Counter(self.kills)
        accepted = Counter(self.accept_killed.values())
        lines = [
            f"runs: {len(self.completed) + len(self.failed)} started, {len(self.completed)} completed, "
            f"{len(self.failed)} not completed",
            f"messages: {len(self.expected)} ({sum(1 for c in self.expected.values() if c == 'email')} email, "
            f"{sum(1 for c in self.expected.values() if c == 'sms')} SMS)",
            f"worker kills (SIGKILL): {len(self.kills)} — {kills['random']} at random, "
            f"{accepted['email']} right after the provider accepted an email, {accepted['sms']} after it accepted a "
            f"text; worker processes started: {self.workers}; died without being killed: {len(self.unexpected_exits)}",
            f"kill phase {self.kill_phase:.0f} s, whole campaign {self.wall:.0f} s",
            f"send_message attempts running on the worker at each kill: {', '.join(map(str, self.in_flight)) or '-'}",
            "",
            "Send requests at the provider per message key:",
            "",
            "| channel | keys | 0 requests | 1 request | 2+ requests |",
            "|---|---|---|---|---|",
        ]
        for channel in ("email", "sms"):
            d = self.distribution(channel)
            lines.append(f"| {channel} | {sum(d.values())} | {d['0']} | {d['1']} | {d['2+']} |")
        statuses = sorted({s for ch in ("email", "sms") for s in self.statuses(ch)})
        lines += ["", "Final status of each message row (Keepflow's store):", "",
                  "| channel | " + " | ".join(statuses) + " |", "|---|" + "---|" * len(statuses)]
        for channel in ("email", "sms"):
            s = self.statuses(channel)
            lines.append(f"| {channel} | " + " | ".join(str(s[x]) for x in statuses) + " |")
        lines += ["", "Status by requests at the provider:", "", "| channel | status | requests | keys |",
                  "|---|---|---|---|"]
        for (channel, status, bucket), n in sorted(self.crosstab().items()):
            lines.append(f"| {channel} | {status} | {bucket} | {n} |")
        if self.accept_killed:
            after = Counter((c, self.rows[k].status if k in self.rows else "(no row)", _bucket(self.requests.get(k, 0)))
                            for k, c in self.accept_killed.items())
            lines += ["", "Of the messages whose accept the worker never heard of (killed right after it): "
                      + "; ".join(f"{n} {c} {s} with {b} request(s)" for (c, s, b), n in sorted(after.items()))]
        ages = self.unrecorded_ages()
        if ages:
            known = [a for a in ages if a > 0]
            lines += ["", f"Other `unknown` emails the provider had accepted: {len(ages)}; killed while in the provider "
                      f"call: {len(ages) - len(known)}; killed after the worker had the answer: {len(known)}"
                      + (f" (answer to kill: median {known[len(known) // 2] * 1000:.0f} ms, max "
                         f"{known[-1] * 1000:.0f} ms)" if known else "")]
        if self.doubled():
            lines += ["", f"DOUBLE SENDS: {', '.join(self.doubled())}"]
        if self.failed:
            lines += ["", "Runs that did not complete: " + "; ".join(f"{k}: {v}" for k, v in sorted(self.failed.items())[:10])]
        if self.unexpected_exits:
            lines += ["", "Workers that died on their own: " + "; ".join(self.unexpected_exits)]
        return "\n".join(lines)


def _bucket(n: int) -> str:
    return "2+" if n >= 2 else str(n)


class _Supervisor:
    """Owns the current worker process; kills it when told (now, or from the fake's accept hook)."""

    def __init__(self, stack: Stack, provider_latency: float = 0.0):
        self.stack = stack
        self.provider_latency = provider_latency
        self.current: WorkerProcess | None = None
        self._lock = threading.Lock()
        self._armed: str | None = None  # the channel whose next accept kills the current worker
        self.accept_killed: dict[str, str] = {}
        self.unexpected: list[str] = []
        self._killed: set[int] = set()
        self.killed_at: list[float] = []
        self.victims: list[WorkerProcess] = []

    def on_accept(self, api: str, record: dict[str, Any]) -> bool | None:
        channel = "email" if api == "sendgrid" else "sms"
        with self._lock:
            victim = self.current if self._armed == channel else None
            if victim is not None and victim.alive():
                self._armed = None
                self._killed.add(victim.pid)
                self.accept_killed[key_of(api, record) or "?"] = channel
                self.killed_at.append(time.time())
                self.victims.append(victim)
            else:
                victim = None
        if victim is None:
            if self.provider_latency:
                time.sleep(self.provider_latency)  # in the fake's request thread: this send stays in flight
            return None
        victim.kill()
        return True  # nobody is left to answer

    def arm(self, channel: str) -> None:
        with self._lock:
            self._armed = channel

    def disarm(self) -> bool:
        """Disarm; True if the armed kill had not fired yet."""
        with self._lock:
            was, self._armed = self._armed, None
            return was is not None

    def kill_now(self) -> None:
        with self._lock:
            victim = self.current
            if victim is not None and victim.alive():
                self._killed.add(victim.pid)
                self.killed_at.append(time.time())
                self.victims.append(victim)
                victim.kill()

    async def replace(self) -> None:
        """Start a new worker once the current one is gone; note a death we did not cause."""
        old = self.current
        if old is not None:
            await old.exited(30)
            old.reap()
            if old.pid not in self._killed:
                self.unexpected.append(f"worker {old.pid} exited with {old.process.returncode}")
        new = WorkerProcess(self.stack.worker_env(), self.stack.folder / f"worker-{len(self.stack.workers) + 1}.log")
        self.stack.workers.append(new)
        new.start()
        with self._lock:
            self.current = new
        await new.ready()


async def running_sends(stack: Stack, runs: int, worker: WorkerProcess) -> int:
    """send_message attempts Temporal counts as running on `worker` (a killed one's stay so until
    their start-to-close timeout)."""
    async def on_worker(i: int) -> int:
        try:
            described = await stack.client.get_workflow_handle(stack.run_id(i)).describe()
        except RPCError:  # not started yet
            return 0
        return sum(1 for a in described.raw_description.pending_activities
                   if a.activity_type.name == "send_message" and a.last_worker_identity == worker.identity
                   and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)

    return sum(await asyncio.gather(*(on_worker(i) for i in range(runs))))


async def campaign(stack: Stack, plan: Plan, progress=None) -> Outcome:
    """Run the plan on a started stack; returns what happened, whatever happened."""
    rng = random.Random(plan.seed)
    supervisor = _Supervisor(stack, plan.provider_latency)
    stack.fake.on_accept = supervisor.on_accept
    began = time.monotonic()
    kills: list[str] = []
    in_flight: list[int] = []
    await supervisor.replace()
    starter = asyncio.create_task(stack.start_runs(plan.runs, over=plan.start_over))
    try:
        for kind in plan.kinds():
            await asyncio.sleep(rng.uniform(*plan.lifetime))
            if not supervisor.current.alive():  # died on its own: note it (replace does), go on
                await supervisor.replace()
                continue
            if kind == "random":
                supervisor.kill_now()
            else:
                supervisor.arm(kind)
                deadline = time.monotonic() + ARMED_FOR
                while supervisor.current.alive() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                if supervisor.disarm():  # no send of that channel came: kill anyway, counted as random
                    kind = "random"
                    supervisor.kill_now()
            kills.append(kind)
            if len(supervisor.victims) == len(kills):
                in_flight.append(await running_sends(stack, plan.runs, supervisor.victims[-1]))
            if progress:
                progress(f"kill {len(kills)}/{len(plan.kinds())} ({kind}) at {time.monotonic() - began:.0f} s"
                         + (f", {in_flight[-1]} sends running on the worker" if in_flight else ""))
            await supervisor.replace()
        handles = await starter
        kill_phase = time.monotonic() - began
        if progress:
            progress(f"kills done at {kill_phase:.0f} s; waiting for the runs")
        completed, failed = await stack.results(handles, plan.timeout)
        if not supervisor.current.alive():
            supervisor.unexpected.append(f"worker {supervisor.current.pid} exited with "
                                         f"{supervisor.current.process.returncode}")
    finally:
        stack.fake.on_accept = None
        if not starter.done():
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
    return Outcome(
        plan=plan, completed=completed, failed=failed, kills=kills, accept_killed=dict(supervisor.accept_killed),
        workers=len(stack.workers), unexpected_exits=supervisor.unexpected, requests=stack.requests_per_key(),
        rows=stack.rows(), expected=stack.expected_keys(plan.runs), killed_at=list(supervisor.killed_at),
        in_flight=in_flight, accepted_at={m["keepflow_key"]: m["accepted_at"] for m in stack.fake.accepted("sendgrid")},
        kill_phase=kill_phase,
        wall=time.monotonic() - began)
