"""Messages whose outcome is unknown: finding them, and settling each one.

An email's row becomes `unknown` when a retry finds it `sending`: the attempt before died, or lost
its answer, during the SendGrid call (activities/builtin/send.py). SendGrid has no idempotency key,
so Keepflow never resends one by itself. A kill -9 of a worker leaves one such row per email it
had inside the provider call (a handful at low load, about half a busy worker's sends with a slow
provider; bench/RESULTS.md). A text ends `unknown` only when the retry's lookup at Twilio could
not tell (more messages to the number than it reads). Each is settled one of these ways:

* SendGrid reports on it (`processed`, `delivered`, a bounce, ...): it reached SendGrid, so the
  event webhook records it `sent` (`confirm_accepted`, called by keepflow/http/sendgrid.py).
  That settles most of them within seconds, and also a row still `sending` whose retry has not
  come yet.
* An operator finds it in SendGrid's Activity Feed (a text: Twilio's message logs):
  `keepflow messages resolve ID --sent` (`mark_sent`).
* An operator finds an email is not there: `keepflow messages resolve ID --resend` sends the
  stored message again, once (`resend`). A text is not resent from here.
* An operator decides to leave it: `keepflow messages resolve ID --dismiss` (`dismiss`).

An operator's decision changes the row only if nobody changed it since it was read (a
compare-and-set on status and attempt count), so two operators, or one racing a resend, settle it
once. SendGrid's report wins over any decision: it proves the email went.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from keepflow.language import yaml_source
from keepflow.language.problems import Report
from keepflow.language.rendering import text_of_html
from keepflow.sending import suppressions, unsubscribe_links
from keepflow.sending.providers import (
    EmailProvider,
    OutgoingEmail,
    PermanentError,
    RetryableError,
    email_provider,
    named_sender,
)
from keepflow.settings import Settings
from keepflow.store import Customer, Database, Message, utc
from keepflow.store import definitions

log = logging.getLogger("keepflow.unknown")

UNKNOWN = "unknown"
# What an operator runs; the CLI, the dashboard, `keepflow report` and docs/operations.md say the same.
LIST_COMMAND = "keepflow messages unknown"
LOOK_FIRST = ("Look each one up at its provider: an email in SendGrid's Activity Feed (Activity in SendGrid's "
              "console), by the recipient around the time shown (the mail carries the custom arg "
              "keepflow_message_id with the id shown here); a text in Twilio's message logs, by the number and "
              "the time. Then settle it:")
RESOLVE_STEPS = (
    ("keepflow messages resolve ID --sent [--provider-id X]",
     "SendGrid has it: record it sent (X: its message id, optional)"),
    ("keepflow messages resolve ID --resend",
     "SendGrid does not have the email: send the stored message once more, unless the customer opted out since"),
    ("keepflow messages resolve ID --dismiss", "leave it: recorded failed, never resent"),
)
BY_ITSELF = ("SendGrid's event webhook settles by itself each one SendGrid reports on (processed, delivered, ...), "
             "when SENDGRID_WEBHOOK_PUBLIC_KEY is set and the webhook sends processed events.")

# SendGrid's notifications about a message (keepflow/http/sendgrid.py's kinds): any of them means
# SendGrid accepted the request, whatever became of the mail after.
ACCEPTANCE_PROOF = frozenset({"processed", "deferred", "delivered", "opened", "clicked", "bounced", "dropped",
                              "spam_reported", "unsubscribed"})

_messages = Message.__table__
# A resend keeps the row `unknown` during its provider call and says so in its error. Its call is
# bounded by KEEPFLOW_PROVIDER_TIMEOUT (10 s unless set), so one claimed longer ago than this
# has ended, or its process died in the call and left the row for a fresh look.
_UNDER_WAY = "resend under way since"
RESEND_BOUND = timedelta(minutes=2)


class CannotResolve(Exception):
    """The message is not one to settle this way (not `unknown`, not an email, erased, or the
    customer may no longer be sent it); the text says which, for the operator."""


@dataclass(frozen=True)
class UnknownMessage:
    id: int
    sequence_id: str
    step: str
    channel: str
    template: str
    customer_id: str | None
    recipient: str | None
    since: datetime  # when the provider call whose outcome is unknown began
    error: str | None


def count(db: Database, sequence_id: str | None = None) -> int:
    """Messages waiting for a decision, whenever they were created (the status index)."""
    query = select(func.count()).select_from(_messages).where(_messages.c.status == UNKNOWN)
    if sequence_id is not None:
        query = query.where(_messages.c.sequence_id == sequence_id)
    with db.transaction() as connection:
        return int(connection.execute(query).scalar_one())


def listing(db: Database, limit: int = 500) -> list[UnknownMessage]:
    """The messages waiting for a decision, newest first."""
    query = (select(_messages.c.id, _messages.c.sequence_id, _messages.c.step, _messages.c.channel,
                    _messages.c.template, _messages.c.customer_id, _messages.c.recipient, _messages.c.sending_at,
                    _messages.c.created_at, _messages.c.error)
             .where(_messages.c.status == UNKNOWN).order_by(_messages.c.created_at.desc(), _messages.c.id.desc())
             .limit(limit))
    with db.transaction() as connection:
        rows = connection.execute(query).all()
    return [UnknownMessage(id=r.id, sequence_id=r.sequence_id, step=r.step, channel=r.channel, template=r.template,
                           customer_id=r.customer_id, recipient=r.recipient, since=utc(r.sending_at or r.created_at),
                           error=r.error) for r in rows]


# -- settled by the provider's own report ----------------------------------------------------------


def confirm_accepted(message: Message, *, kind: str, provider: str, provider_message_id: str | None,
                     occurred_at: datetime) -> bool:
    """A provider notification about this email proves the provider took it: a row still
    `unknown`, or still `sending` (its attempt died and the retry has not come yet), becomes
    `sent`. In the caller's session; True if it changed the row. No compare-and-set: whatever an
    operator decided meanwhile, the email went."""
    if message.channel != "email" or message.status not in (UNKNOWN, "sending") or kind not in ACCEPTANCE_PROOF:
        return False
    was = message.status
    values = _sent(message, provider=provider, provider_message_id=provider_message_id,
                   sent_at=utc(message.sending_at) if message.sending_at else occurred_at)
    for name, value in values.items():
        setattr(message, name, value)
    log.info("message %s %s -> sent: the provider reported it %s", message.id, was, kind)
    return True


def _sent(message: Message, *, provider: str | None, provider_message_id: str | None, sent_at: datetime) -> dict:
    """The columns of a row recorded `sent` after all."""
    values = {"status": "sent", "error": None, "sent_at": sent_at, "provider": provider or message.provider,
              "provider_message_id": provider_message_id or message.provider_message_id}
    if message.counted_at is None and message.category == "marketing" and message.customer_id:
        # Marking it `unknown` gave its frequency-cap slot back; it went, so it counts again.
        values["counted_at"] = sent_at
    return values


# -- settled by an operator ----------------------------------------------------------------------


def mark_sent(db: Database, message_id: int, provider_message_id: str | None = None) -> Message:
    """The operator found the message in the provider's activity feed."""
    message = _settle(db, message_id, lambda m: _sent(m, provider=None, provider_message_id=provider_message_id,
                                                      sent_at=utc(m.sending_at or m.created_at)))
    log.info("message %s unknown -> sent: confirmed by an operator", message_id)
    return message


def dismiss(db: Database, message_id: int) -> Message:
    """The operator leaves it: not resent, whether or not it went."""
    message = _settle(db, message_id, lambda m: {
        "status": "failed", "error": f"outcome unknown, not resent (dismissed by an operator); was: {m.error or '-'}"})
    log.info("message %s unknown -> failed: dismissed by an operator", message_id)
    return message


def _settle(db: Database, message_id: int, values_for: Callable[[Message], dict]) -> Message:
    """Change a row that is `unknown`, only if nobody changed it since it was read (the same status
    and attempt count): a resend under way keeps the status but has counted its attempt."""
    with db.session() as session:
        message = _unknown(session, message_id)
        values, read_attempts = values_for(message), message.attempts
    with db.transaction() as connection:
        changed = connection.execute(update(_messages).where(
            _messages.c.id == message_id, _messages.c.status == UNKNOWN, _messages.c.attempts == read_attempts,
        ).values(**values))
    if changed.rowcount != 1:
        raise CannotResolve(f"message {message_id} changed while this read it (a resend under way?): look again")
    return _read(db, message_id)


def resend(db: Database, settings: Settings, message_id: int, provider: EmailProvider | None = None) -> Message:
    """Send the stored message again, once, and record what came of it on the same row.

    Only a row that is `unknown` when this claims it: the claim is a compare-and-set on the status
    and the attempt count, so a second `--resend` sends nothing, and an operator's `--sent` or
    `--dismiss` meanwhile is refused. The row stays `unknown` during the call, so a process that
    dies in it leaves the row where an operator looks; its error says a resend was under way.
    """
    provider = provider or email_provider(settings)
    with db.session() as session:
        message = _unknown(session, message_id)
        if message.channel != "email":
            raise CannotResolve(f"message {message_id} is {message.channel}: only an email is resent this way")
        if not message.recipient or message.body is None:
            raise CannotResolve(f"message {message_id} has no stored recipient and body (erased?): nothing to resend")
        if message.provider and message.provider != provider.name:
            # A shell without the worker's configuration would "resend" into the outbox file.
            raise CannotResolve(f"message {message_id} went to {message.provider}, but the email provider configured "
                                f"here is {provider.name}: run this where the worker's settings are")
        refusal = _refusal(session, message)
        if refusal:
            raise CannotResolve(f"message {message_id} is not resent: {refusal}")
        ours = message.attempts + 1
        email = _outgoing(settings, message, _live_source(db))
    started = datetime.now(timezone.utc)
    with db.transaction() as connection:
        claimed = connection.execute(
            update(_messages).where(_messages.c.id == message_id, _messages.c.status == UNKNOWN,
                                    _messages.c.attempts == ours - 1)
            .values(attempts=ours, sending_at=started,
                    error=f"{_UNDER_WAY} {started:%Y-%m-%d %H:%M:%S} UTC: check the provider before deciding"))
        if claimed.rowcount != 1:
            raise CannotResolve(f"message {message_id} changed while this resend read it: look again")
    try:
        accepted = provider.send_email(email)
    except PermanentError as err:
        return _after_resend(db, message_id, ours, {"status": "failed", "error": f"resend refused: {err}"})
    except RetryableError as err:
        why = ("not sent: try again later" if err.sent is False
               else "outcome unknown again: check the provider before deciding")
        return _after_resend(db, message_id, ours, {"error": f"resend {why} ({err})"})
    with db.session() as session:
        sent = _sent(_read_in(session, message_id), provider=accepted.provider,
                     provider_message_id=accepted.provider_message_id, sent_at=started)
    return _after_resend(db, message_id, ours, sent)


def _after_resend(db: Database, message_id: int, ours: int, values: dict) -> Message:
    """Record the resend's outcome on a row this resend still owns (its attempt count; the
    webhook may have recorded the same send `sent` already, which an outcome of `sent` repeats)."""
    owned = [_messages.c.id == message_id, _messages.c.attempts == ours]
    if values.get("status") != "sent":
        owned.append(_messages.c.status == UNKNOWN)
    with db.transaction() as connection:
        connection.execute(update(_messages).where(*owned).values(**values))
    message = _read(db, message_id)
    log.info("message %s resent by an operator: %s", message_id, message.status)
    return message


def _read(db: Database, message_id: int) -> Message:
    with db.session() as session:
        return _read_in(session, message_id)


def _read_in(session, message_id: int) -> Message:
    message = session.get(Message, message_id)
    assert message is not None  # it was there a moment ago, and rows are never deleted
    return message


def _unknown(session, message_id: int) -> Message:
    message = session.get(Message, message_id)
    if message is None:
        raise CannotResolve(f"there is no message {message_id}")
    if message.status != UNKNOWN:
        raise CannotResolve(f"message {message_id} is {message.status}, not {UNKNOWN}: there is nothing to decide")
    if ((message.error or "").startswith(_UNDER_WAY) and message.sending_at is not None
            and utc(message.sending_at) > datetime.now(timezone.utc) - RESEND_BOUND):
        # Another resend is in its provider call: deciding now could send the email twice.
        raise CannotResolve(f"message {message_id}: a resend is under way since "
                            f"{utc(message.sending_at):%Y-%m-%d %H:%M:%S} UTC; wait for its outcome")
    return message


def _refusal(session, message: Message) -> str | None:
    """Why the customer may no longer be sent this message, as the rules would say now. Stricter
    than send_rules for marketing: any marketing suppression of the address stops a resend."""
    assert message.recipient is not None  # resend checks first
    customer = session.get(Customer, message.customer_id) if message.customer_id else None
    if customer is not None and customer.email_problem:
        return f"the customer's email address is unusable ({customer.email_problem})"
    for suppression in suppressions.active(session, "email", message.recipient):
        if message.category != "transactional" or suppression.scope == suppressions.ALL:
            return f"the address is suppressed since: {suppression.reason} ({suppression.source})"
    if message.category == "marketing" and customer is not None and not (customer.consents or {}).get("email"):
        return "the customer no longer consents to marketing email"
    return None


def _outgoing(settings: Settings, message: Message, live_source: str | None = None) -> OutgoingEmail:
    """The stored message as send_message built it: the body and subject as rendered then; the
    plain-text part, the unsubscribe headers and the custom args made again."""
    assert message.recipient is not None and message.body is not None  # resend checks first
    text = text_of_html(message.body)
    headers: dict[str, str] = {}
    tree = _sequences_tree(settings, live_source)
    if message.category == "marketing":
        url = unsubscribe_links.link_for(settings, customer_id=message.customer_id or "", channel="email",
                                         address=message.recipient, scope="marketing")
        text = f"{text}\n\n{url}"
        headers = unsubscribe_links.headers_for(settings, url)
    return OutgoingEmail(
        to=message.recipient, subject=message.subject or "", html=message.body, text=text,
        from_=named_sender(settings.email_from, _brand_name(tree)),
        key=message.key, headers=headers, categories=(message.sequence_id, message.template),
        custom_args={"keepflow_message_id": str(message.id), "keepflow_customer_id": message.customer_id or ""},
        asm_group_id=_sendgrid_group_id(tree, message.sequence_id, settings.sendgrid_asm_group_id)
        if message.category == "marketing" else None,
    )


def _sequences_tree(settings: Settings, live_source: str | None) -> Any:
    """The live version of sequences.yaml (the file, if none was deployed) parsed with validate's
    own limits, not loaded as a catalog: a resend needs neither its sequences' steps nor the
    worker's activities. Unreadable: None, and the resend still goes, with what the settings
    alone give it."""
    path = Path(settings.sequences_path)
    return yaml_source.parse(path, Report(path), live_source)


def _live_source(db: Database) -> str | None:
    """The text of the newest deployed version (keepflow/runtime/deployments.py), if any."""
    with db.session() as session:
        live = definitions.newest(session)
        return live.source if live else None


def _brand_name(tree: Any) -> str | None:
    """`brand.name`, as the first send put it in From."""
    brand = tree.get("brand") if isinstance(tree, dict) else None
    return brand.get("name") if isinstance(brand, dict) else None


def _sendgrid_group_id(tree: Any, sequence_id: str, default: int | None) -> int | None:
    """The SendGrid unsubscribe group the first send put the message in: its sequence's
    unsubscribe group's, from `rules.sendgrid_unsubscribe_groups`, else `default`."""
    if not isinstance(tree, dict):
        return default
    rules = tree.get("rules")
    mapping = rules.get("sendgrid_unsubscribe_groups") if isinstance(rules, dict) else None
    sequences = tree.get("sequences")
    if not isinstance(mapping, dict) or not isinstance(sequences, list):
        return default
    sequence = next((s for s in sequences if isinstance(s, dict) and s.get("id") == sequence_id), None)
    group = (sequence.get("group") or sequence_id) if sequence is not None else sequence_id
    found = mapping.get(group)
    return found if isinstance(found, int) and not isinstance(found, bool) and found > 0 else default
