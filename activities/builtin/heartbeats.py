"""One thread that heartbeats every running send of this process.

A send heartbeats while it runs, the provider call included, so a worker that froze or died is
noticed within the activity's heartbeat timeout and one that is merely slow is not retried behind
its back. A thread started for each attempt cost 0.2-0.4 ms of CPU per send (py-spy, one email
sent on one thread: a sixth of the send); one thread for all of them costs nothing per send, and
sleeps while none runs.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from temporalio import activity

log = logging.getLogger("keepflow.activities.send")

# How often the thread looks for attempts due a beat: a beat comes EVERY to EVERY + TICK apart.
TICK = 0.25


@dataclass
class _Attempt:
    # heartbeat() finds its activity through a context variable, which another thread does not
    # inherit: the attempt's own context, entered for each beat.
    context: contextvars.Context
    due: float
    # Held while a beat is sent, and to end the attempt: no beat goes out once it has returned.
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = True


class Heartbeats:
    def __init__(self, every: float) -> None:
        self.every = every
        self._attempts: dict[int, _Attempt] = {}
        self._lock = threading.Lock()
        self._someone = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Heartbeat the calling activity every `every` seconds until the block ends. Nothing to do
        outside an activity."""
        if not activity.in_activity():
            yield
            return
        attempt = _Attempt(contextvars.copy_context(), time.monotonic() + self.every)
        with self._lock:
            self._attempts[id(attempt)] = attempt
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="send-heartbeats", daemon=True)
                self._thread.start()
            self._someone.notify()
        try:
            yield
        finally:
            with attempt.lock:
                attempt.running = False
            with self._lock:
                del self._attempts[id(attempt)]

    def _beat(self) -> None:
        while True:
            with self._lock:
                while not self._attempts:
                    self._someone.wait()
                now = time.monotonic()
                due = [a for a in self._attempts.values() if a.due <= now]
                for attempt in due:
                    attempt.due = now + self.every
            for attempt in due:
                with attempt.lock:
                    if attempt.running:
                        try:
                            attempt.context.run(activity.heartbeat)
                        except Exception as err:  # a busy event loop: the next beat may get through
                            log.debug("heartbeat not sent: %r", err)
            time.sleep(TICK)
