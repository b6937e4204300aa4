"""`send_message`: one activity per message — render, claim, call the provider, record.

A message row moves through these states, keyed by workflow id + step path:

    pending ──► sending ──► sent          provider accepted it
     │ ▲  ▲        │  └───► failed        permanent: bad address, unsubscribed, bad template
     │ │  └────────┘  └───► unknown       email whose outcome was lost (see below)
     │ │  (429/5xx/refused: not sent, retry)
     ▼ │
    deferred     quiet hours or the frequency cap: the run waits on a timer and asks again
    or skipped:  nothing to send to, invalid address, suppressed, no consent, over the cap
                 (`on_cap: skip`), expired, superseded, the offered coupon used up or expired

Before anything goes out, in this order: the step is not stale (expired, superseded); the
address is valid and not suppressed, and marketing has the channel's consent (read from the
stored profile, which may have changed since the run started); marketing waits out the quiet
hours, then takes a slot under the frequency cap (one atomic step, see keepflow/frequency_cap.py).

A retry that finds `sent`, `failed`, `skipped` or `unknown` sends nothing and returns the record.
A retry that finds `sending` means an earlier attempt died, or lost its answer, during the
provider call, so the provider may or may not have the message:
  * SMS: Twilio can list messages, so we look for ours (same number and body, since the claim)
    and resend only if it is not there.
  * Email: SendGrid has no idempotency key and no free, immediate way to look a message up
    (the Email Activity API is a paid add-on and lags by minutes). We choose at-most-once: the
    row becomes `unknown`, nothing is resent, and the row says why, so it is counted in reports
    and an operator can follow up. A missed marketing email costs less than a doubled one, and
    the window is only the length of one HTTP call.

Only one attempt may call the provider for a row: `sending` is set by compare-and-set on the
status and attempt count the attempt read, so an attempt that stalled past its timeout (a frozen
worker) while Temporal ran the next one finds the row moved on and stops. Where a message can
still go twice: a text whose first attempt Twilio accepted but does not yet list (or lists
beyond the 50 newest) when the retry looks; bench/RESULTS.md has the kill -9 figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from keepflow import contacts, frequency_cap, quiet_hours, suppressions, unsubscribe
from keepflow.contracts import SendRequest, SendResult
from keepflow.events import utc
from keepflow.providers import (
    Accepted, EmailProvider, OutgoingEmail, OutgoingSms, PermanentError, RetryableError, SmsProvider,
)
from keepflow.rendering import Renderer, TemplateError
from keepflow.settings import Settings
from keepflow.store import Coupon, Customer, Database, Message
from keepflow.webhooks.twilio import status_callback_url

log = logging.getLogger("keepflow.send")

FINAL = {"sent", "failed", "skipped", "unknown"}

# Twilio errors that mean the number must not be texted again (twilio.com/docs/api/errors):
# 21610 the recipient replied STOP; 21211 invalid 'To' number; 21614 'To' is not a mobile number.
PROVIDER_SUPPRESSIONS = {("twilio", "21610"): "sms_stop", ("twilio", "21211"): "invalid", ("twilio", "21614"): "invalid"}


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
    email: EmailProvider
    sms: SmsProvider


class MessageSender:
    def __init__(self, deps: SendDeps):
        self.deps = deps

    @activity.defn(name="send_message")
    def send_message(self, request: SendRequest) -> SendResult:
        key = f"{request.workflow_id}:{request.step}"
        claim = self._claim(key, request)
        row = claim.row
        if row.status in FINAL:
            return _result(row)
        now = _run_clock(request)

        if request.drop:
            return self._finish(row.id, "skipped", error=request.drop)
        if request.expires_at is not None and now > request.expires_at:
            return self._finish(row.id, "skipped", error=f"expired: not sent by {request.expires_at:%Y-%m-%d %H:%M} UTC")

        customer = request.context.get("customer") or {}
        stored, recipient = claim.stored, claim.recipient
        if not recipient:
            return self._finish(row.id, "skipped", error=f"customer has no {request.channel} address")
        refusal = _refusal(request, customer, stored, claim)
        if refusal:
            return self._finish(row.id, "skipped", error=refusal)
        if request.coupon:
            gone = self._coupon(request, now, activate=False)
            if isinstance(gone, str):
                return self._finish(row.id, "skipped", error=gone)

        if request.channel == "email" and row.status == "sending":
            return self._finish(row.id, "unknown", error=(
                "an earlier attempt stopped during the provider call; not resent (email is at-most-once)"))

        policy = request.policy
        if policy is not None and row.status != "sending":
            held = self._hold(row.id, request, policy, customer, stored, now)
            if held is not None:
                return held

        context = dict(request.context)
        if request.coupon:
            offer = self._coupon(request, now, activate=True)
            if isinstance(offer, str):
                return self._finish(row.id, "skipped", error=offer)
            context[request.coupon] = offer
        unsubscribe_url = None
        if request.category == "marketing" and request.channel == "email" and policy is not None:
            unsubscribe_url = unsubscribe.link_for(self.deps.settings, customer_id=str(customer.get("id", "")),
                                                   channel="email", address=recipient, scope="marketing")
            context["unsubscribe_url"] = unsubscribe_url
        try:
            rendered = self.deps.renderer.render(request.channel, request.template, customer.get("locale"), context)
        except TemplateError as err:
            return self._finish(row.id, "failed", error=f"template: {err}")

        if request.channel == "email":
            # The plain-text part loses the HTML footer's link, so it gets the address spelled out.
            text = f"{rendered.text}\n\n{unsubscribe_url}" if unsubscribe_url else rendered.text
            email = OutgoingEmail(
                to=recipient, subject=rendered.subject or "", html=rendered.body, text=text,
                from_=self.deps.settings.email_from, key=key,
                headers=unsubscribe.headers_for(self.deps.settings, unsubscribe_url) if unsubscribe_url else {},
                categories=(request.sequence_id, request.template),
                custom_args={"keepflow_message_id": str(row.id), "keepflow_customer_id": str(customer.get("id", ""))},
            )
            send = lambda: self.deps.email.send_email(email)  # noqa: E731
            provider = self.deps.email.name
        else:
            sms = OutgoingSms(to=recipient, body=rendered.body, key=key,
                              status_callback=status_callback_url(self.deps.settings))
            if row.status == "sending":
                found = self.deps.sms.find_sent(sms, since=utc(row.sending_at) - timedelta(minutes=1))
                if found is not None:
                    return self._finish(row.id, "sent", accepted=found)
            send = lambda: self.deps.sms.send_sms(sms)  # noqa: E731
            provider = self.deps.sms.name

        if not self._mark_sending(row, provider, recipient, rendered.locale, rendered.subject, rendered.body):
            # Another attempt moved the row since this one read it: this attempt outlived its
            # timeout and Temporal started the next one. Only the row's owner may call the provider.
            raise ApplicationError(f"message {key}: another attempt has taken over this send", type="SendTakenOver")
        try:
            accepted = send()
        except PermanentError as err:
            self._suppress_for(err, request.channel, recipient, customer.get("id"))
            return self._finish(row.id, "failed", error=_describe(err))
        except RetryableError as err:
            if err.sent is False:
                # The provider certainly did not take it: the next attempt may send again.
                self._set(row.id, status="pending", error=_describe(err))
            else:
                self._set(row.id, error=f"outcome unknown: {_describe(err)}")
            delay = timedelta(seconds=err.retry_after) if err.retry_after else None
            raise ApplicationError(_describe(err), type="ProviderUnavailable", next_retry_delay=delay) from err
        return self._finish(row.id, "sent", accepted=accepted)

    # -- who may get what ----------------------------------------------------------------------------

    def _hold(self, row_id: int, request: SendRequest, policy, customer: dict, stored: dict | None,
              now: datetime) -> SendResult | None:
        """Quiet hours, then the frequency cap. None: go ahead (and the cap slot is taken)."""
        if policy.quiet_hours is not None and request.channel in policy.quiet_hours.channels:
            zone = (stored or {}).get("timezone") or customer.get("timezone")
            allowed = quiet_hours.next_allowed(now, quiet_hours.zones_for(zone, policy.fallback_timezones),
                                               policy.quiet_hours)
            if allowed > now:
                return self._defer(row_id, allowed, f"quiet hours until {allowed:%Y-%m-%d %H:%M} UTC")
        customer_id = customer.get("id")
        if policy.cap is not None and customer_id:
            free_at = frequency_cap.take_slot(self.deps.db, message_id=row_id, customer_id=str(customer_id),
                                              channel=request.channel, cap=policy.cap, now=now)
            if free_at is not None:
                why = f"frequency cap ({frequency_cap.window_text(policy.cap, request.channel)})"
                if policy.on_cap == "skip":
                    return self._finish(row_id, "skipped", error=why)
                return self._defer(row_id, free_at, f"{why} until {free_at:%Y-%m-%d %H:%M} UTC")
        return None

    def _defer(self, row_id: int, until: datetime, why: str) -> SendResult:
        self._set(row_id, status="deferred", error=why)
        return SendResult(status="deferred", message_id=row_id, reason=why, retry_at=until)

    def _coupon(self, request: SendRequest, now: datetime, *, activate: bool) -> dict | str:
        """The offered coupon as the template should show it, or why the message must not go.
        With `activate`, the first message offering it starts its validity."""
        offered = request.context.get(request.coupon) or {}
        with self.deps.db.session() as session:
            coupon = session.get(Coupon, offered.get("code", ""))
            if coupon is None:
                return f"coupon {request.coupon!r} not found"
            if coupon.redeemed_at is not None:
                return f"coupon {coupon.code} already redeemed"
            if coupon.activated_at is None and coupon.valid_for_seconds:
                if not activate:
                    return {}
                # The first message offering it: its days count from now, not from its creation.
                coupon.activated_at = now
                coupon.expires_at = now + timedelta(seconds=coupon.valid_for_seconds)
            elif utc(coupon.expires_at) <= now:
                return f"coupon {coupon.code} expired"
            return {**offered, "expires_at": utc(coupon.expires_at).isoformat()}

    def _suppress_for(self, err: PermanentError, channel: str, address: str, customer_id: str | None) -> None:
        """Provider answers that say "never again": remember them, so no later send tries."""
        reason = PROVIDER_SUPPRESSIONS.get((getattr(err, "provider", None), str(getattr(err, "code", None))))
        if reason is None:
            return
        with self.deps.db.session() as session:
            suppressions.suppress(session, channel=channel, address=address, scope=suppressions.ALL, reason=reason,
                                  source=err.provider, detail=_describe(err), customer_id=customer_id)

    # -- the message row ---------------------------------------------------------------------------

    def _claim(self, key: str, request: SendRequest) -> _Claim:
        """The message row (made `pending` if this is the first attempt) and, unless it is final,
        what the checks read: the stored profile and any suppression of the recipient. One
        transaction: a send is a handful of indexed reads, so each round trip (and, on SQLite, each
        wait for the write lock) counts."""
        customer = request.context.get("customer") or {}
        try:
            return self._load(key, request, customer, claim=True)
        except IntegrityError:
            # Another attempt claimed it between our read and write: use its row.
            return self._load(key, request, customer, claim=False)

    def _load(self, key: str, request: SendRequest, customer: dict, *, claim: bool) -> _Claim:
        # Reads first, the claiming insert last: on SQLite the write lock is then held only for the
        # insert and its commit, not while Python checks an address.
        with self.deps.db.transaction() as connection:
            found = connection.execute(_ROW_BY_KEY, {"key": key}).first()
            if found is None and not claim:
                raise LookupError(f"message {key} is neither stored nor claimable")
            row = _Row(*found) if found is not None else None
            if row is not None and row.status in FINAL:
                return _Claim(row)
            stored = _stored_profile(connection, customer.get("id"))
            channel = request.channel
            recipient = (stored or {}).get(channel) or customer.get("email" if channel == "email" else "phone")
            problem = _address_problem(channel, stored, recipient) if recipient else None
            blocked = None
            if recipient and not problem:
                group = request.policy.group if request.policy else request.sequence_id
                blocked = suppressions.blocking_reason(connection, channel=channel, address=recipient,
                                                       category=request.category, group=group)
            if row is None:
                inserted = connection.execute(insert(_messages), {
                    "key": key, "workflow_id": request.workflow_id, "sequence_id": request.sequence_id,
                    "step": request.step, "channel": request.channel, "category": request.category,
                    "template": request.template, "customer_id": customer.get("id"), "status": "pending",
                    "attempts": 0,
                })
                row = _Row(inserted.inserted_primary_key[0], key, "pending", None, None, None, 0)
            return _Claim(row, stored, recipient, problem, blocked)

    def _mark_sending(self, row: _Row, provider: str, recipient: str, locale: str, subject: str | None,
                      body: str) -> bool:
        """Compare-and-set: the row becomes `sending` only if no other attempt changed it since this
        one read it (same status, same attempt count). False: leave the provider alone."""
        with self.deps.db.transaction() as connection:
            marked = connection.execute(_MARK_SENDING, {
                "row_id": row.id, "read_status": row.status, "read_attempts": row.attempts,
                "sending_at": datetime.now(timezone.utc), "provider": provider,
                "recipient": recipient, "locale": locale, "subject": subject, "body": body,
            })
            return marked.rowcount == 1

    def _set(self, row_id: int, **values) -> None:
        with self.deps.db.transaction() as connection:
            connection.execute(_SET, {"row_id": row_id, **values})

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
        return _result(row)


# -- reads and writes of the message row, as Core statements built once ----------------------------

_messages = Message.__table__
_customers = Customer.__table__
_FINAL_ORDERED = sorted(FINAL)
_ROW = select(_messages.c.id, _messages.c.key, _messages.c.status, _messages.c.error,
              _messages.c.provider_message_id, _messages.c.sending_at, _messages.c.attempts)
_ROW_BY_KEY = _ROW.where(_messages.c.key == bindparam("key"))
_ROW_BY_ID = _ROW.where(_messages.c.id == bindparam("row_id"))
_PROFILE = select(_customers.c.email, _customers.c.phone, _customers.c.consents, _customers.c.timezone,
                  _customers.c.email_problem, _customers.c.phone_problem).where(_customers.c.id == bindparam("id"))
# Without .values(): the columns to set are the keys of the parameters given with each call.
_SET = update(_messages).where(_messages.c.id == bindparam("row_id"))
_FINISH = _SET.where(_messages.c.status.not_in(_FINAL_ORDERED))
_MARK_SENDING = update(_messages).where(
    _messages.c.id == bindparam("row_id"), _messages.c.status == bindparam("read_status"),
    _messages.c.attempts == bindparam("read_attempts"),
).values(
    status="sending", sending_at=bindparam("sending_at"), provider=bindparam("provider"),
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
    provider_message_id: str | None
    sending_at: datetime | None
    attempts: int


@dataclass(frozen=True)
class _Claim:
    row: _Row
    stored: dict | None = None  # the stored profile
    recipient: str | None = None
    problem: str | None = None  # why the recipient's address cannot be used
    blocked: tuple[str, str] | None = None  # (reason, source) of a suppression that forbids this send


def _stored_profile(connection, customer_id: str | None) -> dict | None:
    """The stored profile, which is newer than the run's context (consent changes mid-run)."""
    if not customer_id:
        return None
    found = connection.execute(_PROFILE, {"id": str(customer_id)}).first()
    if found is None:
        return None
    return {"email": found.email, "sms": found.phone, "consents": dict(found.consents or {}),
            "timezone": found.timezone, "email_problem": found.email_problem, "sms_problem": found.phone_problem}


def _address_problem(channel: str, stored: dict | None, recipient: str) -> str | None:
    problem = (stored or {}).get(f"{channel}_problem")
    # A stored address was checked (and normalised) when the profile was stored; only one that
    # comes from the run's context alone is checked here.
    if problem is None and recipient != (stored or {}).get(channel):
        try:
            contacts.normalize_email(recipient) if channel == "email" else contacts.normalize_phone(recipient)
        except contacts.InvalidContact as err:
            problem = str(err)
    return problem


def _refusal(request: SendRequest, customer: dict, stored: dict | None, claim: _Claim) -> str | None:
    channel = request.channel
    if claim.problem:
        return f"invalid {channel} address: {claim.problem}"
    if claim.blocked is not None:
        reason, source = claim.blocked
        return f"suppressed: {reason} ({source})"
    if request.category == "marketing":
        consents = (stored or {}).get("consents") or customer.get("consents") or {}
        if not consents.get(channel):
            return f"no {channel} marketing consent"
    return None


def _result(row: _Row) -> SendResult:
    return SendResult(status=row.status, message_id=row.id, provider_message_id=row.provider_message_id,
                      reason=row.error if row.status != "sent" else None)


def _describe(err: Exception) -> str:
    parts = [getattr(err, "provider", None), getattr(err, "status", None), getattr(err, "code", None)]
    prefix = " ".join(str(p) for p in parts if p)
    return f"{prefix}: {getattr(err, 'detail', None) or err}" if prefix else str(err)
