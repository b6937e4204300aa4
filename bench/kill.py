"""kill -9 of the worker, again and again, during ~1,000 sends: what each message cost at the provider.

    python bench/kill.py [--runs 250] [--random-kills 10] [--email-kills 5] [--sms-kills 5]
                         [--start-over 120] [--seed 1] [--twilio-queued] [--provider-latency S]
                         [--store-writes N] [--timeout S] [--write-results]

A fault-injection script, not a timed test (tests/faults/test_kill9.py is the small version that
asserts). In a throwaway folder it starts, with the machinery of tests/faults/stack.py and
tests/faults/kills.py: Temporal's dev server (headless, file-backed, free port), the fake
SendGrid/Twilio server from tests/fakes in this process, and worker.py as a separate OS process
with the real SDKs aimed at the fake. It starts N runs of a sequence of four sends (email, text,
a 2 s wait, email, text) spread over `--start-over` seconds, and meanwhile SIGKILLs the worker
again and again, starting a new one after each kill: `--random-kills` at a random moment (1-4 s
after the worker came up), `--email-kills` / `--sms-kills` from inside the fake right after it
accepted a send of that channel and before it answered. Then it waits (bounded by `--timeout`)
for every run to finish.

Load: the fake answers at once unless `--provider-latency` holds each accepted send's answer that
long (a real provider's round trip), which keeps more sends in flight at each kill; and
`--store-writes` has another process write to the store meanwhile (as the public app does when
events arrive), so the worker's writes wait for SQLite's one write lock as in production.

Reported: runs completed, kills done, the send_message attempts running on the worker at each
kill (as Temporal counts them), and per message key the send requests the fake received (0, 1,
2+) against the row's final status in Keepflow's store (sent, unknown, ...); for each `unknown`
email the fake accepted, whether the kill came while it was in the provider call or after the
worker had the answer (and how long after); how many `unknown` emails are left once SendGrid's
`processed` event for each email it accepted goes through the webhook's code; with where the
unknown-outcome policy of activities/builtin/send.py can still send a message twice.

Everything listens on 127.0.0.1 only; every wait is bounded; every process started here is
stopped and the folder removed, also on error or Ctrl-C. Exit code 0 when every run completed,
no message key got two requests and no worker died unasked; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for folder in (ROOT, BENCH):  # tests/ and worker.py at the repository root; ingest.py beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from figures import write_figures  # noqa: E402
from ingest import machine, provenance, write_section  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
SECTION = "## Worker kills mid-send (bench/kill.py)"

# Read from activities/builtin/send.py (MessageSender.send_message) and keepflow/sending/providers/twilio.py: the
# order of the steps decides what a kill at each point costs. Kept here, beside the figures, so a
# change to that order is a reason to rerun this script and reread this text.
WHERE_IT_CAN_DOUBLE = """\
What a kill costs depends on where in `send_message` it lands. The order is: claim the row
(`_claim`); for a text whose row is already `sending`, wait until the earlier attempt's lease has
ended and Twilio's list has had a minute more (`SendInFlight`, retried after that); the checks;
for an email whose row is already `sending`, stop as `unknown`; render; for a text whose row is
already `sending`, look it up at Twilio (`find_sent`); then mark the row `sending` under a lease
(`_mark_sending`, committed), check the row is still this attempt's, *then* call the provider,
then record `sent` (`_finish`). The `sending` mark is committed before the request is written, so
there is no window between the provider's accept and the mark: a kill lands in one of four places.
Temporal notices a killed attempt when its heartbeats stop (10 s) and retries it then.

- Before the mark commits: the row is `pending` and the provider has nothing; the retry sends it
  (1 request).
- After the mark, before the request reaches the provider: the provider has nothing. Email: the
  retry records `unknown` and does not send, so the message is lost (an `unknown` row with 0
  requests) until an operator resends it. Text: the retry waits out the lease and the minute,
  the lookup finds nothing and it sends (1 request).
- After the provider accepted, before `sent` is recorded (what the after-accept kills hit): email
  becomes `unknown` with 1 request, until SendGrid's event webhook reports on it and records it
  `sent`; the text is found at Twilio and recorded `sent`, 1 request.
- After `sent` is recorded, before Temporal hears of it: the retry finds the finished row and
  sends nothing.

How many `unknown` emails one kill makes is how many emails were between the mark and the
recorded `sent`, which is the provider call and the write that records its answer: the report's
"killed while in the provider call" against "killed after the worker had the answer" says which
of the two the kills found them in.

So kill -9 alone cannot double a message. A text can still go twice in these cases, none of which
a kill produces (README.md, "What it promises", has them too):

1. Twilio accepts or lists the text later than the lease plus the minute after the mark (about
   90 s with `KEEPFLOW_PROVIDER_TIMEOUT` at 10 s): the retry's lookup misses it and sends again.
2. Twilio rewrites the body beyond what `_body_matches` knows (Smart Encoding of common
   punctuation, spaces and accented letters; the trial prefix; one trailing line naming STOP).
3. The Temporal server's clock runs more than `LOOKUP_SKEW` (60 s) ahead of Twilio's, so the text
   falls before the lookup's window.
4. A worker freezes after its last check of the lease and before its request has left (resolving
   Twilio's name, connecting), stays frozen past the lease and the minute, and sends after the
   retry has looked, found nothing and sent.

An email retry that finds `sending` sends nothing, so email cannot double.
"""


def interpretation(out, left: int | None = None) -> str:
    """Sentences drawn from the figures, so a rerun elsewhere stays honest. `left`: emails still
    `unknown` once SendGrid's events about the accepted ones went through the webhook."""
    crosstab = out.crosstab()
    lost = crosstab[("email", "unknown", "0")]
    unknown_sent = crosstab[("email", "unknown", "1")]
    after = [k for k, c in out.accept_killed.items() if c == "email"]
    texts = [k for k, c in out.accept_killed.items() if c == "sms"]
    parts = [
        f"{len(out.kills)} kills over {len(out.expected):,} messages: "
        + (f"{len(out.doubled())} message(s) got two or more requests." if out.doubled()
           else "no message got two requests.")]
    parts.append(
        f"Email: {unknown_sent} `unknown` row(s) whose message did reach the provider once "
        f"({len(after)} of the kills came right after an email's accept), and {lost} `unknown` row(s) with no "
        "request at all: the at-most-once price, a message lost when a kill landed between the `sending` mark "
        "and the request.")
    found = sum(1 for k in texts if k in out.rows and out.rows[k].status == "sent" and out.requests.get(k) == 1)
    parts.append(f"Texts: {found} of the {len(texts)} whose accept the worker never heard of were found at the fake's "
                 "Twilio by the retry and recorded `sent` without a second request.")
    if left is not None:
        parts.append(f"Then SendGrid's `processed` event for each email it accepted, through the webhook's code, "
                     f"settled {lost + unknown_sent - left} of the {lost + unknown_sent} `unknown` emails as sent; "
                     f"{left} wait for an operator's decision (`keepflow messages unknown`).")
    if out.failed:
        parts.append(f"{len(out.failed)} run(s) did not complete within the timeout.")
    return " ".join(parts)


def write_results(out, left: int, args) -> None:
    plan = out.plan
    command = (f"python bench/kill.py --runs {plan.runs} --random-kills {plan.random_kills} --email-kills "
               f"{plan.email_accept_kills} --sms-kills {plan.sms_accept_kills} --start-over {plan.start_over:g} "
               f"--seed {plan.seed}" + (f" --provider-latency {plan.provider_latency:g}" if plan.provider_latency else "")
               + (f" --store-writes {args.store_writes:g}" if args.store_writes else "")
               + (" --twilio-queued" if args.twilio_queued else "") + " --write-results")
    # A run under load (a slow provider, another writer) gets a section of its own beside the default one.
    loaded = bool(plan.provider_latency or args.store_writes)
    title = f"{SECTION}, sends in flight" if loaded else SECTION
    section = "\n".join([
        title, "",
        *provenance(command),
        f"- Parameters: {plan.runs} runs of email, text, 2 s wait, email, text ({len(out.expected):,} messages), "
        f"started over {plan.start_over:g} s; worker.py as its own process, SIGKILLed {len(out.kills)} times and "
        f"restarted each time; the fake answers each accepted send after {plan.provider_latency * 1000:.0f} ms"
        + (f"; another process wrote to the store {args.store_writes:g} times a second" if args.store_writes else "")
        + "; the fake Twilio lists accepted texts as "
        + ("still queued (DateSent null)" if args.twilio_queued else "sent at once"),
        "",
        out.report(), "",
        interpretation(out, left), "",
        WHERE_IT_CAN_DOUBLE,
    ])
    write_section(title, section)
    # Each kind of run keeps keys of its own, as it keeps a section: kill.sends_in_flight.duplicates
    # beside kill.duplicates; the fake Twilio listing texts as queued is a variant too.
    key = ".".join(["kill", *(["sends_in_flight"] if loaded else []),
                    *(["twilio_queued"] if args.twilio_queued else [])])
    write_figures({f"{key}.{name}": value for name, value in figures(out, left).items()}, command, machine())


def figures(out, left: int) -> dict[str, int]:
    """The counts the section's verdict rests on; duplicates and lost must be 0."""
    statuses = [out.statuses(channel) for channel in ("email", "sms")]
    return {
        "messages": len(out.expected),
        "runs_not_completed": len(out.failed),
        "kills": len(out.kills),
        "max_sends_in_flight_at_kill": max(out.in_flight, default=0),
        "duplicates": len(out.doubled()),
        # Any message the provider never got, not only the `unknown` emails with no request: a run
        # that stopped short loses its messages too.
        "lost": sum(out.distribution(channel)["0"] for channel in ("email", "sms")),
        "unknown": sum(s["unknown"] for s in statuses),
        "unknown_after_webhook": left,
        "workers_died_unasked": len(out.unexpected_exits),
    }


class StoreWriter:
    """Another process's writes to the store while the campaign runs: `per_second` short
    transactions, each storing one event as the public app does when a webhook arrives. With
    SQLite the worker's writes then wait for the file's one write lock as they do in production."""

    def __init__(self, database_url: str, per_second: float):
        self.database_url, self.per_second = database_url, per_second
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, name="store-writer", daemon=True)
        self.written = 0

    def _write(self) -> None:
        from datetime import datetime, timezone

        from keepflow.store import Database, Event

        db = Database(self.database_url)
        try:
            while not self.stop.wait(1 / self.per_second):
                now = datetime.now(timezone.utc)
                with db.session() as session:
                    session.add(Event(id=f"load-{self.written}", type="order.created", occurred_at=now,
                                      payload={"data": {"note": "x" * 200}}, routed_at=now, runs=0))
                self.written += 1
        finally:
            db.dispose()

    def __enter__(self) -> StoreWriter:
        if self.per_second > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(10)


def settle_by_webhook(stack) -> int:
    """What SendGrid's Event Webhook does next: a `processed` event for each email the fake
    accepted, applied by the webhook's own code (keepflow/http/sendgrid.py, less HTTP and the
    signature). Returns the emails still `unknown`: those SendGrid never got."""
    from sqlalchemy import select

    from keepflow.http.sendgrid import SendGridEvent, apply_batch
    from keepflow.store import Customer, Database, Message

    events = [SendGridEvent(event="processed", sg_event_id=f"replayed-{n}", sg_message_id=f"{m['message_id']}.filter0",
                            email=m["to"], timestamp=int(m["accepted_at"]), keepflow_key=m["keepflow_key"])
              for n, m in enumerate(stack.fake.accepted("sendgrid"))]
    db = Database(stack.database_url)
    try:
        with db.session() as session:
            # The runs were started by hand; in production the public app stores each customer
            # before any run, and the events recorded about their messages refer to them.
            stored = set(session.scalars(select(Customer.id)))
            session.add_all(Customer(id=c, consents={}, attributes={})
                            for c in sorted(set(session.scalars(select(Message.customer_id))) - stored) if c)
        apply_batch(db, events)
    finally:
        db.dispose()
    return sum(1 for r in stack.rows().values() if r.channel == "email" and r.status == "unknown")


async def bench(plan, twilio_queued: bool, store_writes: float = 0.0):
    from tests.faults.kills import campaign
    from tests.faults.stack import Stack

    folder = Path(tempfile.mkdtemp(prefix="keepflow-kill-"))
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    try:
        async with Stack(folder / "stack", twilio_sent_on_accept=not twilio_queued) as stack:
            progress(f"stack up; {plan.runs} runs over {plan.start_over:g} s, {len(plan.kinds())} kills")
            with StoreWriter(stack.database_url, store_writes) as writer:
                out = await campaign(stack, plan, progress)
            if store_writes:
                progress(f"another process stored {writer.written} events meanwhile")
            return out, settle_by_webhook(stack)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    from tests.faults.kills import Plan

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=250, help="runs of 4 sends each (default 250: 1,000 messages)")
    parser.add_argument("--random-kills", type=int, default=10, help="SIGKILLs at a random moment (default 10)")
    parser.add_argument("--email-kills", type=int, default=5,
                        help="SIGKILLs right after the fake accepted an email (default 5)")
    parser.add_argument("--sms-kills", type=int, default=5, help="SIGKILLs right after the fake accepted a text (default 5)")
    parser.add_argument("--start-over", type=float, default=120.0,
                        help="seconds over which the runs are started (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the kill order and timing")
    parser.add_argument("--twilio-queued", action="store_true",
                        help="the fake Twilio lists accepted texts as still queued (DateSent null)")
    parser.add_argument("--provider-latency", type=float, default=0.0,
                        help="seconds the fake holds each accepted send's answer (default 0); more sends in flight")
    parser.add_argument("--store-writes", type=float, default=0.0,
                        help="write transactions per second another process makes on the store meanwhile (default 0)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the runs may take after the last kill (default 300)")
    parser.add_argument("--write-results", action="store_true", help=f"replace this script's section in {RESULTS.name} and its figures in results.json")
    args = parser.parse_args()
    if args.runs < 1 or min(args.random_kills, args.email_kills, args.sms_kills) < 0 or args.start_over < 0:
        parser.error("--runs must be at least 1, kills and --start-over not negative")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    plan = Plan(runs=args.runs, random_kills=args.random_kills, email_accept_kills=args.email_kills,
                sms_accept_kills=args.sms_kills, start_over=args.start_over, seed=args.seed, timeout=args.timeout,
                provider_latency=args.provider_latency)
    out, left = asyncio.run(bench(plan, args.twilio_queued, args.store_writes))
    print()
    print(out.report())
    print()
    print(interpretation(out, left))
    print()
    print(WHERE_IT_CAN_DOUBLE)
    ok = not out.failed and not out.doubled() and not out.unexpected_exits and not out.strays()
    if args.write_results:
        write_results(out, left, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
