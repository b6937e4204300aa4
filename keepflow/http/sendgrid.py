"""SendGrid's Event Webhook: what happened to our email after it left, and who opted out.

    POST /webhooks/sendgrid   a JSON array of events, signed by SendGrid (ECDSA P-256)

Each event becomes one `message.<kind>` events row (what `keepflow report` counts) and moves the
message's delivery status; an email whose outcome was unknown becomes `sent` (SendGrid reports only
on mail it accepted); hard bounces, invalid addresses, spam reports and unsubscribes become
suppressions, a resubscribe lifts one. One POST is one transaction: if anything fails nothing is
kept, the answer is 5xx and SendGrid sends the batch again. Events already recorded (by
`sg_event_id`) are skipped, so that retry, or SendGrid's own re-delivery, changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sqlalchemy.orm import Session

from keepflow.http.services import Services, read_body, unprocessable
from keepflow.sending import delivery_events, suppressions, unknown_outcomes
from keepflow.store import Database, Message

log = logging.getLogger("keepflow.http.sendgrid")

SOURCE = "sendgrid"
# SendGrid signs a timestamp but documents no age limit, and the SDK helper checks none. Five
# minutes either way (as for our own signed events) makes a captured request useless soon after.
TOLERANCE_SECONDS = 5 * 60
# 9999-12-31: a larger "unix seconds" value is not a time, and datetime could not hold it.
_MAX_TIMESTAMP = 253402300799

# SendGrid event -> feedback kind. Account events (e.g. account_status_change) share the webhook but
# concern no message: they are acknowledged and ignored, never refused, or SendGrid would retry the
# whole batch, good events included, until it gives up.
KINDS = {
    "processed": "processed", "deferred": "deferred", "delivered": "delivered", "open": "opened",
    "click": "clicked", "bounce": "bounced", "dropped": "dropped", "spamreport": "spam_reported",
    "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed",
    # Not a delivery state (delivery_events.record leaves delivery_status alone): kept as the audit row of
    # the suppression it lifts.
    "group_resubscribe": "resubscribed",
}

# Dropped events name why SendGrid would not send. The first three mean an earlier event put the
# address on one of SendGrid's suppression lists; mirror it here so Keepflow stops trying too.
# "Invalid" is an address SendGrid cannot send to at all. Other reasons (e.g. "Invalid SMTPAPI
# header", "Spam Content") are about the message, not the address: recorded, nothing suppressed.
# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
DROP_SUPPRESSIONS = {
    "Bounced Address": (suppressions.ALL, "hard_bounce"),
    "Spam Reporting Address": (suppressions.MARKETING, "spam_report"),
    "Unsubscribed Address": (suppressions.MARKETING, "unsubscribe"),
    "Invalid": (suppressions.ALL, "invalid"),
}

router = APIRouter()


class SendGridEvent(BaseModel):
    """One event of the batch, with the fields Keepflow uses.

    SendGrid adds many more (ip, useragent, category, tls, ...) and puts custom args at the top
    level, a personalization's (where Keepflow sets them) as well as the message's, so extra keys
    are allowed. Every Keepflow mail carries the custom arg `keepflow_key`
    (the message's key, "<workflow id>:<step>") and may carry `keepflow_message_id`.
    https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
    """

    model_config = ConfigDict(extra="allow")

    event: str = Field(min_length=1)
    # Dedupe key; stored in deliveries.id and (prefixed) events.id, both 255 characters.
    sg_event_id: str = Field(min_length=1, max_length=200)
    sg_message_id: str | None = None
    # Not validated as an address: "dropped/Invalid" events carry whatever the sender gave.
    email: str | None = None
    timestamp: int = Field(ge=0, le=_MAX_TIMESTAMP)
    reason: str | None = None
    response: str | None = None
    # On bounce events: "bounce" (the receiving server refused the address) or "blocked".
    type: str | None = None
    status: str | None = None
    url: str | None = None
    asm_group_id: int | None = None
    keepflow_key: str | None = None
    keepflow_message_id: int | None = None

    @model_validator(mode="after")
    def _address_for_mail_events(self) -> SendGridEvent:
        if self.event in KINDS and not (self.email or "").strip():
            raise ValueError(f"a {self.event!r} event needs an email")
        return self

    @property
    def provider_message_id(self) -> str | None:
        # sg_message_id is the X-Message-Id our send got back (what providers/sendgrid.py stores)
        # followed by ".filter..." routing detail.
        return self.sg_message_id.split(".", 1)[0] if self.sg_message_id else None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, timezone.utc)


_BATCH = TypeAdapter(list[SendGridEvent])


class Received(BaseModel):
    received: int
    recorded: int
    duplicates: int
    ignored: int


@router.post("/webhooks/sendgrid", response_model=Received,
             responses={401: {}, 413: {}, 422: {}})
async def post_sendgrid(request: Request) -> Received:
    """SendGrid's Event Webhook, verified with `X-Twilio-Email-Event-Webhook-Signature`."""
    # app.py imports this module to mount the router, so its helpers are imported when called.

    services: Services = request.app.state.services
    body = await read_body(request, services.settings.max_body_bytes)
    problem = verify(body, request.headers.get(EventWebhookHeader.SIGNATURE),
                     request.headers.get(EventWebhookHeader.TIMESTAMP), services.settings.sendgrid_webhook_public_key)
    if problem:
        raise HTTPException(401, problem)
    try:
        events = _BATCH.validate_json(body)
    except ValidationError as err:
        raise unprocessable(err) from err
    groups: dict[int, list[str]] = {}
    for group, group_id in services.catalog.file.rules.sendgrid_unsubscribe_groups.items():
        groups.setdefault(group_id, []).append(group)
    return await asyncio.to_thread(apply_batch, services.db, events, groups)


def verify(body: bytes, signature: str | None, timestamp: str | None, public_key: str | None) -> str | None:
    """None if SendGrid signed exactly these bytes within the tolerance, else why not.

    SendGrid signs `timestamp + raw body` with ECDSA P-256 / SHA-256 and sends the base64 DER
    signature and the timestamp in the X-Twilio-Email-Event-Webhook-Signature / -Timestamp headers;
    the verification key is base64 DER from the Mail Settings page.
    https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
    """
    if not public_key:
        return "SendGrid events are refused: no verification key (SENDGRID_WEBHOOK_PUBLIC_KEY) is set"
    if not signature or not timestamp:
        return f"missing {EventWebhookHeader.SIGNATURE} or {EventWebhookHeader.TIMESTAMP}"
    if not (timestamp.isascii() and timestamp.isdigit()):
        return f"{EventWebhookHeader.TIMESTAMP} is not unix seconds"
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return f"{EventWebhookHeader.TIMESTAMP} is more than {TOLERANCE_SECONDS // 60} minutes off"
    try:
        verifier = _verifier(public_key.strip())
    except ValueError as err:
        log.error("SENDGRID_WEBHOOK_PUBLIC_KEY is unusable: %s", err)
        return "SendGrid events are refused: the configured verification key is unusable"
    try:
        # The helper takes text and re-encodes it as UTF-8; strict decoding makes that the very
        # bytes received. A body that is not UTF-8 cannot be what SendGrid signed.
        valid = verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
    except ValueError:  # the body is not UTF-8, or the signature not base64
        valid = False
    return None if valid else "bad signature"


@lru_cache(maxsize=4)
def _verifier(public_key: str) -> EventWebhook:
    verifier = EventWebhook(public_key)
    # The helper verifies with ECDSA whatever key it loaded; an RSA key would raise, not answer.
    if not isinstance(verifier.public_key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return verifier


def apply_batch(db: Database, events: list[SendGridEvent], groups: Mapping[int, list[str]] | None = None) -> Received:
    """Record every event in one transaction. `groups`: the unsubscribe groups each SendGrid group
    id stands for (`rules.sendgrid_unsubscribe_groups` turned around); any other id stands for all
    marketing.

    Two copies of one batch arriving at the same moment can collide on the deliveries key: the
    loser's transaction fails whole, its answer is 500, and SendGrid's retry finds them recorded.
    """
    # In time order, so an unsubscribe and a later resubscribe in one batch end subscribed.
    ordered = sorted(events, key=lambda e: e.timestamp)
    with db.session() as session:
        outcomes = [_apply(session, e, (groups or {}).get(e.asm_group_id or 0, [])) for e in ordered]
    return Received(received=len(events), recorded=outcomes.count("recorded"),
                    duplicates=outcomes.count("duplicate"), ignored=outcomes.count("ignored"))


def _apply(session: Session, e: SendGridEvent, groups: list[str]) -> str:
    kind = KINDS.get(e.event)
    if kind is None or e.email is None:  # the model refuses a mail event (one in KINDS) without an address
        return "ignored"
    if delivery_events.seen_before(session, SOURCE, e.sg_event_id):
        return "duplicate"
    message = _message_for(session, e)
    delivery_events.record(session, source=SOURCE, notification_id=e.sg_event_id, message=message, kind=kind,
                    occurred_at=e.occurred_at, detail=e.reason or e.response, data=_data(e))
    if message is not None:
        # SendGrid reports only on mail it accepted: an email whose outcome was lost did go.
        unknown_outcomes.confirm_accepted(message, kind=kind, provider=SOURCE,
                                          provider_message_id=e.provider_message_id, occurred_at=e.occurred_at)
    customer_id = message.customer_id if message else None
    # A group of its own in SendGrid is one unsubscribe group's mail: opting in or out of it
    # concerns that group alone, not the customer's other marketing.
    group_scopes = [suppressions.group_scope(g) for g in groups] if e.event.startswith("group_") else []
    if e.event == "group_resubscribe":
        # The recipient asked for this mail again, which outweighs an earlier opt-out from it.
        suppressions.lift(session, channel="email", address=e.email, scopes=group_scopes or [suppressions.MARKETING],
                          at=e.occurred_at)
        return "recorded"
    rule = _suppression(e)
    if rule is not None:
        scope, reason = rule
        for target in group_scopes or [scope]:
            suppressions.suppress(session, channel="email", address=e.email, scope=target, reason=reason,
                                  source=SOURCE, detail=_detail(e), customer_id=customer_id, at=e.occurred_at)
    return "recorded"


def _suppression(e: SendGridEvent) -> tuple[str, str] | None:
    if e.event == "bounce":
        # Only a bounce of type "bounce" says the address itself is refused. "blocked" means the
        # receiving server turned this message down (our IP's reputation, content filters) and
        # SendGrid itself does not suppress blocked addresses: a later mail may well arrive.
        # https://www.twilio.com/docs/sendgrid/api-reference/blocks-api
        return (suppressions.ALL, "hard_bounce") if e.type == "bounce" else None
    if e.event == "dropped":
        return DROP_SUPPRESSIONS.get(e.reason or "")
    if e.event == "spamreport":
        return (suppressions.MARKETING, "spam_report")
    if e.event in ("unsubscribe", "group_unsubscribe"):
        return (suppressions.MARKETING, "unsubscribe")
    return None


def _message_for(session: Session, e: SendGridEvent) -> Message | None:
    found = delivery_events.find_message(session, key=e.keepflow_key)
    if found is None and e.keepflow_message_id is not None:
        found = session.get(Message, e.keepflow_message_id)
    if found is None:
        found = delivery_events.find_message(session, provider_message_id=e.provider_message_id)
    return found


def _detail(e: SendGridEvent) -> str | None:
    parts = [e.reason or ""]
    if e.status:
        parts.append(f"status {e.status}")
    if e.asm_group_id is not None:
        parts.append(f"unsubscribe group {e.asm_group_id}")
    return "; ".join(p for p in parts if p) or None


def _data(e: SendGridEvent) -> dict[str, Any]:
    fields = {"event": e.event, "sg_event_id": e.sg_event_id, "sg_message_id": e.sg_message_id, "email": e.email,
              "reason": e.reason, "response": e.response, "type": e.type, "status": e.status, "url": e.url,
              "asm_group_id": e.asm_group_id, "keepflow_key": e.keepflow_key}
    return {k: v for k, v in fields.items() if v is not None}
