"""`send_message`: one activity per message — claim, decide, take a cap slot, render, send, record.

A message row moves through these states, keyed by workflow id + step path:

    pending ──► sending ──► sent          provider accepted it
     │ ▲  ▲        │  └───► failed        permanent: bad address, unsubscribed, bad template
     │ │  └────────┘  └───► unknown       email whose outcome was lost (see below)
     │ │  (429/5xx/refused: not sent, retry)
     ▼ │
    deferred     quiet hours or the frequency cap: the run waits on a timer and asks again
    or skipped:  nothing to send to, invalid address, suppressed, no consent, over the cap
                 (`on_cap: skip`), expired, superseded, the offered coupon used up or expired

The claim reads, in the same transaction, the facts the rules need (the stored profile, which
may have changed since the run started; any suppression of the address; the coupon offered).
keepflow/runtime/send_rules.py decides from those alone whether the message may go, in what order the
rules are asked, and why not; then a message that counts takes a slot under the frequency cap
(one atomic step, see keepflow/sending/frequency_cap.py) before it is rendered and sent.

A step with `fallback:` is still one message and one row. The claim reads the facts of both
channels, `send_rules.choose` picks the one it goes on, and the row moves to that channel before
it takes a cap slot, so the cap, the report and the dashboard count it where it went. Each attempt
chooses again while nothing has gone (the profile may change while a message is held), but a row
an earlier attempt marked `sending` stays on its channel: a retry finishes that send, and never
starts one on the other channel.

A retry that finds `sent`, `failed`, `skipped` or `unknown` sends nothing and returns the record.
A retry that finds `sending` means an earlier attempt died, stalled or lost its answer during the
provider call, so the provider may or may not have the message:
  * SMS: Twilio has no idempotency key, but it lists the messages it took, so we look for ours
    (`find_sent`: from our sender to the same number, the body as Twilio may have rewritten it,
    since the mark) and send only if it is not there. Not before the earlier attempt's lease has
    ended and Twilio's list, which lags, has had LIST_CATCH_UP more: until then the retry changes
    nothing and has Temporal run it again then (`SendInFlight`, with a `next_retry_delay`).
  * Email: SendGrid has no idempotency key and no free, immediate way to look a message up
    (the Email Activity API is a paid add-on and lags by minutes). We choose at-most-once: the
    row becomes `unknown`, nothing is resent, and the row says why; SendGrid's event webhook
    settles it as sent if SendGrid reports on it, else an operator decides
    (keepflow/sending/unknown_outcomes.py). A missed marketing email costs less than a doubled
    one. The window is one HTTP call, but a kill catches every email inside one: about half of
    a busy worker's sends when the provider takes 0.5 s (bench/RESULTS.md).

Only one attempt may call the provider for a row, and only within its lease. `_mark_sending` is a
compare-and-set on the status and attempt count the attempt read; it counts the attempt (so the
count names the holder) and leases the row to it for the length of a provider call plus a margin
(`lease_until`). Just before the call the attempt checks that the row is still its own and that
the call fits in the lease. An attempt heartbeats every second while it runs, so Temporal retries
one whose worker froze or died after SEND_HEARTBEAT (10 s, workflows/sequence.py); the retry
waits out the lease as above, and the frozen attempt, if it wakes, finds the row moved on and
stops (`SendTakenOver`).

Where a text can still go twice (README.md says the same, one sentence each): Twilio accepts or
lists it later than the lease plus LIST_CATCH_UP after the mark (about 90 s with a 10 s provider
timeout); Twilio rewrites its body beyond what `_body_matches` in keepflow/sending/providers/twilio.py
knows; the Temporal server's clock runs more than LOOKUP_SKEW (60 s) ahead of Twilio's; a worker
freezes after its last check and before its request has left (resolving the name, connecting),
stays frozen past the lease and LIST_CATCH_UP, and sends after a retry has looked and sent.
Where one is lost instead: the lookup takes another message with the same text, from the same
sender to the same number, sent between a minute before the mark and the lookup, for this one; and
a lookup with more messages to read than its budget leaves the row `unknown`. bench/RESULTS.md has the kill -9 figures.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.builtin.heartbeats import Heartbeats
from keepflow import logs, metrics, tracing
from keepflow.language.channels import CHANNEL_FACTS, ChannelName
from keepflow.language.rendering import Renderer, TemplateError
from keepflow.runtime import send_rules
from keepflow.runtime.payloads import SendRequest, SendResult
from keepflow.runtime.send_rules import Defer, Send, Skip
from keepflow.sending import channels, frequency_cap, suppressions, unsubscribe_links
from keepflow.sending.channels import Channel, Draft, Outgoing
from keepflow.sending.providers import (Accepted, EmailProvider, LineSender, PermanentError, RetryableError, SmsProvider,
                                        line_provider)
from keepflow.settings import Settings
from keepflow.store import Coupon, Customer, Database, Message, utc

log = logging.getLogger("keepflow.send")

FINAL = {"sent", "failed", "skipped", "unknown"}


# The lease an attempt takes on a row when it marks it `sending`: room for the provider call (a
# connect and a read, each up to KEEPFLOW_PROVIDER_TIMEOUT) and a margin for the mark's own commit
# (SQLite may wait on its write lock). Until it ends, no other attempt calls the provider for that
# row, and the holder starts no call that could outlast it.
LEASE_MARGIN = timedelta(seconds=10)
# After a lease ends, how long a text's retry still waits before it looks the text up: Twilio's
# message list is eventually consistent, and has been seen not to show a text a second after it
# was accepted.
LIST_CATCH_UP = timedelta(seconds=60)
# How often a running attempt heartbeats. The activity's heartbeat timeout (workflows/sequence.py)
# is several times this; Temporal's SDK sends at most one per 80% of that timeout anyway.
HEARTBEAT_EVERY = 1.0


class _Clock:
    """Temporal's clock as this attempt reads it: the server's time when it started the attempt,
    moved on by the time the attempt has run. Leases and waits are measured on it because Temporal
    decides when a retry runs (`next_retry_delay`), and because it is the same clock for every
    worker, whatever theirs say. Outside an activity (a test calling the method), this machine's."""

    def __init__(self) -> None:
        self._started = activity.info().started_time if activity.in_activity() else datetime.now(timezone.utc)
        self._at = time.monotonic()

    def now(self) -> datetime:
        return self._started + timedelta(seconds=time.monotonic() - self._at)


HEARTBEATS = Heartbeats(HEARTBEAT_EVERY)


def _run_clock(request: SendRequest) -> datetime:
    """The run's clock for this attempt: what the workflow said, moved on by the time a retry
    waited (a provider outage)."""
    if request.now is None:
        return datetime.now(timezone.utc)
    info = activity.info()
    return request.now + (info.current_attempt_scheduled_time - info.scheduled_time)


@dataclass
class SendDeps:
    settings: Settings
    db: Database
    renderer: Renderer
    # One provider per channel, by the channel's name: a new channel adds its own here.
    email: EmailProvider
    sms: SmsProvider
    # None: picked from the settings (LINE's API with a channel access token, else the outbox).
    line: LineSender | None = None

    def __post_init__(self) -> None:
        if self.line is None:
            self.line = line_provider(self.settings)

    def provider(self, name: str) -> object:
        return {"email": self.email, "sms": self.sms, "line": self.line}[name]


class MessageSender:
    def __init__(self, deps: SendDeps):
        self.deps = deps

    @activity.defn(name="send_message")
    def send_message(self, request: SendRequest) -> SendResult:
        # Its workflow and run come from activity.info() (keepflow/logs.py); the key names the message.
        with logs.about(message_key=f"{request.workflow_id}:{request.step}"), HEARTBEATS.kept():
            result = self._attempt(request, _Clock())
        metrics.message_settled(result.channel or request.channel, result.status, result.reason)
        tracing.note(**{"keepflow.message.status": result.status})
        return result

    def _attempt(self, request: SendRequest, clock: _Clock) -> SendResult:
        key = f"{request.workflow_id}:{request.step}"
        step_channel = request.channel
        with tracing.span("keepflow.send.checks", {"keepflow.message.key": key, "keepflow.channel": request.channel}):
            claim = self._claim(key, request)
            row = claim.row
            if row.status in FINAL:
                tracing.note(**{"keepflow.send.decision": "settled"})
                return _result(row, request)
            if row.status == "sending":
                # An earlier attempt got as far as the provider on the row's channel: this one
                # finishes it there, never on the other channel of a `fallback:`.
                request = send_rules.on_channel(request, _channel_name(row.channel))
            if channels.channel(request.channel).finds_earlier_attempts and row.status == "sending":
                # Before any rule may skip or defer it: the row may still be another attempt's.
                self._wait_for_lease(key, row, clock)
            now = _run_clock(request)
            chosen = send_rules.choose(request, claim.facts, now)
            tracing.note(**{"keepflow.send.decision": type(chosen.decision).__name__.lower(),
                            "keepflow.channel.used": chosen.channel})
        if chosen.channel != row.channel:
            # One message whichever channel it takes: its row says which, so the cap counts it
            # there and the report and dashboard show it there.
            row = self._move_to(row, chosen.channel)
        result = self._go(key, send_rules.on_channel(request, chosen.channel), row, claim.facts[chosen.channel],
                          chosen.decision, now, clock)
        if chosen.channel == step_channel:
            return result
        why = f"on {chosen.channel}" + (f" (fallback: {chosen.fallback_because})" if chosen.fallback_because else "")
        return result.model_copy(update={"channel": chosen.channel, "reason": result.reason or why})

    def _go(self, key: str, request: SendRequest, row: _Row, facts: send_rules.Facts, decision: send_rules.Decision,
            now: datetime, clock: _Clock) -> SendResult:
        """The rest of the attempt on the channel chosen: skip, hold, or take a slot, render and send."""
        match decision:  # a Send goes on below
            case Skip(reason):
                return self._finish(row.id, "skipped", error=reason)
            case Defer(until, reason):
                return self._defer(row.id, until, reason)
        if not channels.channel(request.channel).finds_earlier_attempts and row.status == "sending":
            # At-most-once (above): never a second provider call for a message that may have gone
            # and cannot be looked up (email).
            return self._finish(row.id, "unknown", error=(
                f"an earlier attempt stopped during the provider call; not resent ({request.channel} is at-most-once)"))
        if decision.cap is not None:
            held = self._take_slot(row.id, request, decision, now)
            if held is not None:
                return held
        recipient = facts.recipient
        assert recipient is not None  # decide() skips a message with no address
        message = self._render(key, request, row, recipient, decision, now)
        if isinstance(message, SendResult):
            return message
        return self._send(key, request, row, message, clock)

    # -- take a cap slot, render, send ---------------------------------------------------------------

    def _take_slot(self, row_id: int, request: SendRequest, decision: Send, now: datetime) -> SendResult | None:
        """Count this message under the frequency cap (one atomic step). None: go ahead."""
        customer_id = str(request.context["customer"]["id"])
        assert decision.cap is not None  # only a message that counts takes a slot
        free_at = frequency_cap.take_slot(self.deps.db, message_id=row_id, customer_id=customer_id,
                                          channel=request.channel, cap=decision.cap, now=now)
        if free_at is None:
            return None
        match send_rules.over_cap(decision, request.channel, free_at):
            case Skip(reason):
                return self._finish(row_id, "skipped", error=reason)
            case Defer(until, reason):
                return self._defer(row_id, until, reason)

    def _render(self, key: str, request: SendRequest, row: _Row, recipient: str, decision: Send,
                now: datetime) -> Outgoing | SendResult:
        """The message as the provider will get it, or the result of a message that cannot go."""
        customer = request.context.get("customer") or {}
        context = dict(request.context)
        if request.coupon:
            offer = self._offer_coupon(request, now)
            if isinstance(offer, str):
                return self._finish(row.id, "skipped", error=offer)
            context[request.coupon] = offer
        unsubscribe_url = None
        if decision.unsubscribe:
            unsubscribe_url = unsubscribe_links.link_for(self.deps.settings, customer_id=str(customer.get("id", "")),
                                                   channel=request.channel, address=recipient, scope="marketing")
            context["unsubscribe_url"] = unsubscribe_url
        try:
            rendered = self.deps.renderer.render(request.channel, request.template, customer.get("locale"), context)
        except TemplateError as err:
            return self._finish(row.id, "failed", error=f"template: {err}")
        sending_on = channels.channel(request.channel)
        draft = Draft(
            key=key, recipient=recipient, rendered=rendered, brand_name=(context.get("brand") or {}).get("name"),
            unsubscribe_url=unsubscribe_url,
            unsubscribe_headers=unsubscribe_links.headers_for(self.deps.settings, unsubscribe_url) if unsubscribe_url else {},
            categories=(request.sequence_id, request.template),
            custom_args={"keepflow_message_id": str(row.id), "keepflow_customer_id": str(customer.get("id", ""))},
            unsubscribe_group_id=send_rules.sendgrid_group_id(request, self.deps.settings.sendgrid_asm_group_id),
            first_marketing=(request.category == "marketing"
                             and sending_on.first_marketing_says_how_to_stop(self.deps.settings)
                             and not self._had_marketing_message(request.channel, str(customer.get("id", "")),
                                                                 recipient, row.id)),
        )
        return sending_on.outgoing(self.deps.provider(request.channel), self.deps.settings, draft)

    def _had_marketing_message(self, channel_name: str, customer_id: str, recipient: str, row_id: int) -> bool:
        """Whether the customer's address already got a marketing message on this channel
        (sms_opt_out says why only `sent` counts). This row is left out, so a retry of the first
        message still carries the opt-out line."""
        with self.deps.db.transaction() as connection:
            found = connection.execute(_EARLIER_MARKETING_MESSAGE, {
                "channel": channel_name, "customer_id": customer_id, "recipient": recipient, "row_id": row_id}).first()
        return found is not None

    def _send(self, key: str, request: SendRequest, row: _Row, message: Outgoing, clock: _Clock) -> SendResult:
        """The one provider call, by the attempt that owns the row; then the row says what came of it."""
        if row.status == "sending" and message.find_sent is not None:
            # An earlier attempt died in the provider call, and its lease and Twilio's catch-up time
            # are over (_wait_for_lease): Twilio lists what it took, so look first.
            assert row.sending_at is not None  # _MARK_SENDING sets both at once
            try:
                found = message.find_sent(utc(row.sending_at))
            except PermanentError as err:
                return self._finish(row.id, "unknown", error=(
                    f"an earlier attempt may have sent it and the lookup could not tell ({_describe(err)}); not resent"))
            except RetryableError as err:
                delay = timedelta(seconds=err.retry_after) if err.retry_after else None
                raise ApplicationError(f"looking for an earlier attempt's text: {_describe(err)}",
                                       type="ProviderUnavailable", next_retry_delay=delay) from err
            if found is not None:
                return self._finish(row.id, "sent", accepted=found)
        rendered = message.rendered
        lease = self._mark_sending(row, message.provider, message.recipient, rendered.locale, rendered.subject,
                                   rendered.body, clock=clock)
        attempt = row.attempts + 1
        if lease is None or not self._holds(row.id, attempt):
            # Another attempt moved the row since this one read it: this attempt outlived its
            # timeout and Temporal started the next one. Only the row's holder may call the provider.
            raise ApplicationError(f"message {key}: another attempt has taken over this send", type="SendTakenOver")
        if clock.now() + self._call_time() > lease:
            # Stalled since the mark: a call now could outlast the lease, and after the lease the
            # next attempt looks the message up and may send it.
            raise ApplicationError(f"message {key}: this attempt stalled past its lease; the next one takes over",
                                   type="SendTakenOver")
        try:
            accepted = message.call()
        except PermanentError as err:
            customer = request.context.get("customer") or {}
            self._suppress_for(err, channels.channel(request.channel), message.recipient, customer.get("id"))
            return self._finish(row.id, "failed", error=_describe(err))
        except RetryableError as err:
            delay = timedelta(seconds=err.retry_after) if err.retry_after else None
            if err.sent is False:
                # The provider certainly did not take it: the next attempt may send again.
                self._set_owned(row.id, attempt, status="pending", error=_describe(err))
            else:
                self._set_owned(row.id, attempt, error=f"outcome unknown: {_describe(err)}")
                if message.find_sent is not None:
                    # The retry can only look the text up once Twilio's list has caught up.
                    delay = max(lease + LIST_CATCH_UP - clock.now(), delay or timedelta(0))
            raise ApplicationError(_describe(err), type="ProviderUnavailable", next_retry_delay=delay) from err
        return self._finish(row.id, "sent", accepted=accepted)

    def _wait_for_lease(self, key: str, row: _Row, clock: _Clock) -> None:
        """A text whose row is `sending`: the attempt that marked it may still be in its provider
        call, and what it sent may not be in Twilio's list yet. Until its lease has ended and the
        list has had LIST_CATCH_UP to catch up, this attempt changes nothing and has Temporal run
        the next one then."""
        assert row.sending_at is not None  # _MARK_SENDING sets both at once
        # A row marked before leases existed: the lease it would have had.
        lease = utc(row.lease_until) if row.lease_until is not None else utc(row.sending_at) + self._lease()
        look_at = lease + LIST_CATCH_UP
        wait = look_at - clock.now()
        if wait > timedelta(0):
            raise ApplicationError(f"message {key}: attempt {row.attempts} may still be sending it; "
                                   f"looking it up at Twilio after {look_at:%H:%M:%S} UTC",
                                   type="SendInFlight", next_retry_delay=wait)

    def _lease(self) -> timedelta:
        return self._call_time() + LEASE_MARGIN

    def _call_time(self) -> timedelta:
        # requests applies the timeout to the connect and to the read, one after the other.
        return timedelta(seconds=2 * self.deps.settings.provider_timeout)

    def _defer(self, row_id: int, until: datetime, why: str) -> SendResult:
        self._set(row_id, status="deferred", error=why)
        return SendResult(status="deferred", message_id=row_id, reason=why, retry_at=until)

    def _offer_coupon(self, request: SendRequest, now: datetime) -> dict | str:
        """The offered coupon as the template should show it, or why the message must not go (it was
        redeemed since the facts were read). The first message offering it starts its days."""
        assert request.coupon is not None  # only a step that offers one gets here
        offered = request.context.get(request.coupon) or {}
        with self.deps.db.session() as session:
            coupon = session.get(Coupon, offered.get("code", ""))
            state = None if coupon is None else _offered(coupon.code, coupon.redeemed_at, coupon.activated_at,
                                                         coupon.valid_for_seconds, coupon.expires_at)
            gone = send_rules.coupon_refusal(request.coupon, state, now)
            if gone:
                return gone
            assert coupon is not None  # coupon_refusal refuses a missing one
            if coupon.activated_at is None and coupon.valid_for_seconds:
                # Its days count from now, when the customer can first read it, not from its creation.
                coupon.activated_at = now
                coupon.expires_at = now + timedelta(seconds=coupon.valid_for_seconds)
            return {**offered, "expires_at": utc(coupon.expires_at).isoformat()}

    def _suppress_for(self, err: PermanentError, sending_on: Channel, address: str, customer_id: str | None) -> None:
        """Provider answers that say "never again": remember them, so no later send tries."""
        reason = sending_on.suppression_reason(err)
        if reason is None:
            return
        with self.deps.db.session() as session:
            suppressions.suppress(session, channel=sending_on.name, address=address, scope=suppressions.ALL, reason=reason,
                                  source=err.provider, detail=_describe(err), customer_id=customer_id)

    # -- the message row ---------------------------------------------------------------------------

    def _move_to(self, row: _Row, channel: str) -> _Row:
        """The row on another channel. Only a row no attempt is sending (`pending`, `deferred`)
        moves: a `sending` one stays on its channel (_attempt)."""
        with self.deps.db.transaction() as connection:
            connection.execute(_MOVE, {"row_id": row.id, "channel": channel})
        return dataclasses.replace(row, channel=channel)

    def _claim(self, key: str, request: SendRequest) -> _Claim:
        """The message row (made `pending` if this is the first attempt) and, unless it is final,
        the facts the rules read. One transaction: a send is a handful of indexed reads, so each
        round trip (and, on SQLite, each wait for the write lock) counts."""
        try:
            return self._load(key, request, claim=True)
        except IntegrityError:
            # Another attempt claimed it between our read and write: use its row.
            return self._load(key, request, claim=False)

    def _load(self, key: str, request: SendRequest, *, claim: bool) -> _Claim:
        # Reads first, the claiming insert last: on SQLite the write lock is then held only for the
        # insert and its commit.
        with self.deps.db.transaction() as connection:
            found = connection.execute(_ROW_BY_KEY, {"key": key}).first()
            if found is None and not claim:
                raise LookupError(f"message {key} is neither stored nor claimable")
            row = _Row(*found) if found is not None else None
            if row is not None and row.status in FINAL:
                return _Claim(row, {})
            resumed = row is not None and row.status == "sending"
            asked = [row.channel] if row is not None and resumed else [
                c for c in (request.channel, request.fallback) if c is not None]
            stored = _stored_profile(connection, (request.context.get("customer") or {}).get("id")) or {}
            facts = {c: _read_facts(connection, send_rules.on_channel(request, _channel_name(c)), stored, resumed=resumed)
                     for c in asked}
            if row is None:
                inserted = connection.execute(insert(_messages), {
                    "key": key, "workflow_id": request.workflow_id, "sequence_id": request.sequence_id,
                    "step": request.step, "channel": request.channel, "category": request.category,
                    "template": request.template, "customer_id": (request.context.get("customer") or {}).get("id"),
                    "status": "pending", "attempts": 0,
                })
                new_key = inserted.inserted_primary_key
                assert new_key is not None  # an INSERT of one row always has it
                row = _Row(new_key[0], key, "pending", None, None, 0, None, request.channel)
            return _Claim(row, facts)

    def _mark_sending(self, row: _Row, provider: str, recipient: str, locale: str, subject: str | None,
                      body: str, *, clock: _Clock) -> datetime | None:
        """Compare-and-set: the row becomes `sending`, leased to this attempt, only if no other
        attempt changed it since this one read it (same status, same attempt count). The count
        goes up by one, so it names the lease's holder: an attempt taking over an expired lease
        names the one it read, and a stalled holder finds the row no longer its own. Returns the
        end of the lease; None: leave the provider alone."""
        now = clock.now()
        lease = now + self._lease()
        with self.deps.db.transaction() as connection:
            marked = connection.execute(_MARK_SENDING, {
                "row_id": row.id, "read_status": row.status, "read_attempts": row.attempts,
                "sending_at": now, "lease_until": lease, "provider": provider,
                "recipient": recipient, "locale": locale, "subject": subject, "body": body,
            })
            return lease if marked.rowcount == 1 else None

    def _holds(self, row_id: int, attempt: int) -> bool:
        """Whether the row is still this attempt's, asked again just before the call: one that
        stalled after its mark for longer than its lease (a paused process; a suspended VM, whose
        clock stood still and so cannot tell) may have been taken over meanwhile."""
        with self.deps.db.transaction() as connection:
            found = connection.execute(_HOLDER, {"row_id": row_id}).first()
        return found is not None and (found.status, found.attempts) == ("sending", attempt)

    def _set(self, row_id: int, **values) -> None:
        with self.deps.db.transaction() as connection:
            connection.execute(_SET, {"row_id": row_id, **values})

    def _set_owned(self, row_id: int, attempt: int, **values) -> None:
        """What the holder's call came to, unless another attempt has taken the row over since."""
        with self.deps.db.transaction() as connection:
            connection.execute(_SET_OWNED, {"row_id": row_id, "owner_attempts": attempt, **values})

    def _finish(self, row_id: int, status: str, *, error: str | None = None, accepted: Accepted | None = None) -> SendResult:
        values: dict = {"status": status, "error": error}
        if status != "sent":
            values["counted_at"] = None  # a message that did not go out gives its cap slot back
        if accepted is not None:
            values.update(provider=accepted.provider, provider_message_id=accepted.provider_message_id,
                          sent_at=datetime.now(timezone.utc))
        with self.deps.db.transaction() as connection:
            # Only an unfinished row may change: a late first attempt cannot overwrite a retry's result.
            connection.execute(_FINISH, {"row_id": row_id, **values})
            row = _Row(*connection.execute(_ROW_BY_ID, {"row_id": row_id}).one())
        if status != "sent":
            log.warning("message %s %s: %s", row.key, row.status, row.error)
        elif accepted is not None:
            # What became of each message, by its key: never its recipient (keepflow/logs.py).
            log.info("message %s sent by %s", row.key, accepted.provider)
        return _result(row)


# -- reads and writes of the message row, as Core statements built once ----------------------------

_messages = Message.__table__
_customers = Customer.__table__
_FINAL_ORDERED = sorted(FINAL)
_ROW = select(_messages.c.id, _messages.c.key, _messages.c.status, _messages.c.error,
              _messages.c.sending_at, _messages.c.attempts, _messages.c.lease_until, _messages.c.channel)
_ROW_BY_KEY = _ROW.where(_messages.c.key == bindparam("key"))
_ROW_BY_ID = _ROW.where(_messages.c.id == bindparam("row_id"))
# Each channel's address, and why it cannot be used (its `<field>_problem` column).
_ADDRESS_FIELDS = sorted({c.address_field for c in CHANNEL_FACTS.values()})
_PROFILE = select(_customers.c.consents, _customers.c.timezone,
                  *(_customers.c[f] for f in _ADDRESS_FIELDS),
                  *(_customers.c[f"{f}_problem"] for f in _ADDRESS_FIELDS)).where(_customers.c.id == bindparam("id"))
_coupons = Coupon.__table__
_COUPON = select(_coupons.c.code, _coupons.c.redeemed_at, _coupons.c.activated_at, _coupons.c.valid_for_seconds,
                 _coupons.c.expires_at).where(_coupons.c.code == bindparam("code"))
# Without .values(): the columns to set are the keys of the parameters given with each call.
# By customer first: ix_messages_customer_sent finds their sent rows, and recipient has no index.
_EARLIER_MARKETING_MESSAGE = select(_messages.c.id).where(
    _messages.c.customer_id == bindparam("customer_id"), _messages.c.status == "sent",
    _messages.c.channel == bindparam("channel"), _messages.c.category == "marketing",
    _messages.c.recipient == bindparam("recipient"), _messages.c.id != bindparam("row_id")).limit(1)
_SET = update(_messages).where(_messages.c.id == bindparam("row_id"))
# A list of bound values, not one list parameter: SQLAlchemy rewrites an `IN` of a list on each execution.
_FINISH = _SET.where(_messages.c.status.not_in([literal(s) for s in _FINAL_ORDERED]))
_MOVE = _SET.where(_messages.c.status.in_([literal("pending"), literal("deferred")]))
# Still `sending` too: SendGrid's event webhook may have settled the row as sent meanwhile.
_SET_OWNED = _SET.where(_messages.c.attempts == bindparam("owner_attempts"), _messages.c.status == "sending")
_HOLDER = select(_messages.c.status, _messages.c.attempts).where(_messages.c.id == bindparam("row_id"))
_MARK_SENDING = update(_messages).where(
    _messages.c.id == bindparam("row_id"), _messages.c.status == bindparam("read_status"),
    _messages.c.attempts == bindparam("read_attempts"),
).values(
    status="sending", sending_at=bindparam("sending_at"), lease_until=bindparam("lease_until"),
    provider=bindparam("provider"),
    recipient=bindparam("recipient"), locale=bindparam("locale"), subject=bindparam("subject"),
    body=bindparam("body"), attempts=_messages.c.attempts + 1,
)


@dataclass(frozen=True)
class _Row:
    """What send_message needs of its message row."""
    id: int
    key: str
    status: str
    error: str | None
    sending_at: datetime | None
    attempts: int
    lease_until: datetime | None
    channel: str


@dataclass(frozen=True)
class _Claim:
    row: _Row
    # Each channel's facts: the step's, and its `fallback:`'s when it has one (a row an earlier
    # attempt is sending: that row's channel only).
    facts: Mapping[str, send_rules.Facts]


def _read_facts(connection, request: SendRequest, stored: dict[str, Any], *, resumed: bool) -> send_rules.Facts:
    """What the rules need of the store for the request's channel. The stored profile is newer
    than the run's context (consent changes mid-run), so it wins; the context fills what the
    store does not have."""
    customer = request.context.get("customer") or {}
    channel = request.channel
    recipient = stored.get(channel) or customer.get(CHANNEL_FACTS[channel].address_field)
    problem = stored.get(f"{channel}_problem")
    suppression = None
    if recipient and not problem:
        suppression = suppressions.blocking_reason(connection, channel=channel, address=recipient,
                                                   category=request.category,
                                                   group=send_rules.unsubscribe_group(request))
    coupon = None
    if request.coupon:
        code = (request.context.get(request.coupon) or {}).get("code", "")
        found = connection.execute(_COUPON, {"code": code}).first()
        coupon = None if found is None else _offered(*found)
    return send_rules.Facts(
        recipient=recipient, recipient_checked=bool(recipient) and recipient == stored.get(channel),
        address_problem=problem, suppression=suppression,
        consents=stored.get("consents") or customer.get("consents") or {},
        timezone=stored.get("timezone") or customer.get("timezone"), coupon=coupon, resumed=resumed,
    )


def _stored_profile(connection, customer_id: str | None) -> dict | None:
    if not customer_id:
        return None
    found = connection.execute(_PROFILE, {"id": str(customer_id)}).first()
    if found is None:
        return None
    profile: dict[str, Any] = {"consents": dict(found.consents or {}), "timezone": found.timezone}
    for name, facts in CHANNEL_FACTS.items():
        profile[name] = found._mapping[facts.address_field]
        profile[f"{name}_problem"] = found._mapping[f"{facts.address_field}_problem"]
    return profile


def _offered(code: str, redeemed_at: datetime | None, activated_at: datetime | None, valid_for_seconds: int | None,
             expires_at: datetime) -> send_rules.OfferedCoupon:
    # A coupon whose days start with the first message offering it has no expiry until then.
    pending = activated_at is None and bool(valid_for_seconds)
    return send_rules.OfferedCoupon(code, redeemed=redeemed_at is not None,
                                    expires_at=None if pending else utc(expires_at))


def _result(row: _Row, request: SendRequest | None = None) -> SendResult:
    result = SendResult(status=row.status, message_id=row.id, reason=row.error if row.status != "sent" else None)
    if request is not None and row.channel != request.channel:
        # Settled by an earlier attempt on the step's `fallback:`.
        return result.model_copy(update={"channel": row.channel, "reason": result.reason or f"on {row.channel}"})
    return result


def _channel_name(name: str) -> ChannelName:
    if name not in CHANNEL_FACTS:
        raise ValueError(f"message row on an unknown channel {name!r}")
    return CHANNEL_FACTS[name].name


def _describe(err: Exception) -> str:
    parts = [getattr(err, "provider", None), getattr(err, "status", None), getattr(err, "code", None)]
    prefix = " ".join(str(p) for p in parts if p)
    return f"{prefix}: {getattr(err, 'detail', None) or err}" if prefix else str(err)
