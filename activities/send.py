"""`send_message`: one activity per message — render, claim, call the provider, record.

A message row moves through these states, keyed by workflow id + step path:

    pending ──► sending ──► sent          provider accepted it
       ▲           │  └───► failed        permanent: bad address, unsubscribed, bad template
       └───────────┘  └───► unknown       email whose outcome was lost (see below)
    (429/5xx/refused: not sent, retry)     or skipped: nothing to send to

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from keepflow.contracts import SendRequest, SendResult
from keepflow.events import utc
from keepflow.providers import (
    Accepted, EmailProvider, OutgoingEmail, OutgoingSms, PermanentError, RetryableError, SmsProvider,
)
from keepflow.rendering import Renderer, TemplateError
from keepflow.settings import Settings
from keepflow.store import Database, Message

log = logging.getLogger("keepflow.send")

FINAL = {"sent", "failed", "skipped", "unknown"}


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
        row = self._claim(key, request)
        if row.status in FINAL:
            return _result(row)

        customer = request.context.get("customer") or {}
        recipient = customer.get("email" if request.channel == "email" else "phone")
        if not recipient:
            return self._finish(row.id, "skipped", error=f"customer has no {request.channel} address")

        if request.channel == "email" and row.status == "sending":
            return self._finish(row.id, "unknown", error=(
                "an earlier attempt stopped during the provider call; not resent (email is at-most-once)"))
        try:
            rendered = self.deps.renderer.render(request.channel, request.template, customer.get("locale"), request.context)
        except TemplateError as err:
            return self._finish(row.id, "failed", error=f"template: {err}")

        if request.channel == "email":
            email = OutgoingEmail(to=recipient, subject=rendered.subject or "", html=rendered.body,
                                  text=rendered.text, from_=self.deps.settings.email_from, key=key)
            send = lambda: self.deps.email.send_email(email)  # noqa: E731
            provider = self.deps.email.name
        else:
            sms = OutgoingSms(to=recipient, body=rendered.body, key=key)
            if row.status == "sending":
                found = self.deps.sms.find_sent(sms, since=utc(row.sending_at) - timedelta(minutes=1))
                if found is not None:
                    return self._finish(row.id, "sent", accepted=found)
            send = lambda: self.deps.sms.send_sms(sms)  # noqa: E731
            provider = self.deps.sms.name

        self._mark_sending(row.id, provider, recipient, rendered.locale, rendered.subject, rendered.body)
        try:
            accepted = send()
        except PermanentError as err:
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

    # -- the message row ---------------------------------------------------------------------------

    def _claim(self, key: str, request: SendRequest) -> Message:
        customer = request.context.get("customer") or {}
        with self.deps.db.session() as session:
            row = session.scalar(select(Message).where(Message.key == key))
            if row is not None:
                return row
        try:
            with self.deps.db.session() as session:
                row = Message(
                    key=key, workflow_id=request.workflow_id, sequence_id=request.sequence_id, step=request.step,
                    channel=request.channel, category=request.category, template=request.template,
                    customer_id=customer.get("id"), status="pending", attempts=0,
                )
                session.add(row)
            return row
        except IntegrityError:
            # Another attempt claimed it between our read and write: use its row.
            with self.deps.db.session() as session:
                return session.scalars(select(Message).where(Message.key == key)).one()

    def _mark_sending(self, row_id: int, provider: str, recipient: str, locale: str, subject: str | None, body: str) -> None:
        with self.deps.db.session() as session:
            session.execute(
                update(Message).where(Message.id == row_id).values(
                    status="sending", sending_at=datetime.now(timezone.utc), provider=provider,
                    recipient=recipient, locale=locale, subject=subject, body=body,
                    attempts=Message.attempts + 1,
                )
            )

    def _set(self, row_id: int, **values) -> None:
        with self.deps.db.session() as session:
            session.execute(update(Message).where(Message.id == row_id).values(**values))

    def _finish(self, row_id: int, status: str, *, error: str | None = None, accepted: Accepted | None = None) -> SendResult:
        values: dict = {"status": status, "error": error}
        if accepted is not None:
            values.update(provider=accepted.provider, provider_message_id=accepted.provider_message_id,
                          sent_at=datetime.now(timezone.utc))
        with self.deps.db.session() as session:
            # Only an unfinished row may change: a late first attempt cannot overwrite a retry's result.
            session.execute(update(Message).where(Message.id == row_id, Message.status.not_in(FINAL)).values(**values))
            row = session.get(Message, row_id)
            if status != "sent":
                log.warning("message %s %s: %s", row.key, row.status, row.error)
            return _result(row)


def _result(row: Message) -> SendResult:
    return SendResult(status=row.status, message_id=row.id, provider_message_id=row.provider_message_id,
                      reason=row.error if row.status != "sent" else None)


def _describe(err: Exception) -> str:
    parts = [getattr(err, "provider", None), getattr(err, "status", None), getattr(err, "code", None)]
    prefix = " ".join(str(p) for p in parts if p)
    return f"{prefix}: {getattr(err, 'detail', None) or err}" if prefix else str(err)
