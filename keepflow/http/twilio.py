"""Twilio's webhooks: replies to our texts (STOP, START, HELP) and what became of each text we sent.

    POST /webhooks/twilio/inbound   a text a customer sent to our number; answered with TwiML
    POST /webhooks/twilio/status    a status callback for a text we sent (StatusCallback on send)

Both are signed by Twilio with X-Twilio-Signature and refused (403, nothing changed) when the
signature does not match the URL Twilio requested and the exact parameters it posted. An opt-out
keyword suppresses the number, an opt-in keyword lifts that, HELP is answered with
KEEPFLOW_SMS_HELP_TEXT; any other text is acknowledged and not kept. Status callbacks become
`message.<kind>` events and move the message's delivery status; error codes that mean the number
cannot or must not be texted again suppress it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from keepflow.http.services import Services, read_body, unprocessable
from keepflow.sending import delivery_events, suppressions
from keepflow.sending.contacts import InvalidContact, normalize_phone
from keepflow.sending.providers.twilio import STATUS_PATH
from keepflow.settings import Settings, reveal
from keepflow.store import Customer, Database

log = logging.getLogger("keepflow.http.twilio")

SOURCE = "twilio"
INBOUND_SOURCE = "twilio-inbound"
INBOUND_PATH = "/webhooks/twilio/inbound"
SIGNATURE_HEADER = "X-Twilio-Signature"
TWIML = "application/xml"

# Twilio's default opt-out keywords for long codes are STOP, UNSUBSCRIBE, END, QUIT, STOPALL,
# REVOKE, OPTOUT and CANCEL; START, YES and UNSTOP opt back in; HELP and INFO ask for help. Only a
# message that is exactly one keyword counts ("STOP PLEASE" does not), in any case.
# https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
# https://help.twilio.com/articles/223134027-Twilio-support-for-opt-out-keywords-SMS-STOP-filtering-
# "opt out" is not Twilio's (Twilio keeps texting after it), but it says plainly what the customer
# wants, and honouring an opt-out too readily costs a text, not a complaint. "opt-out" is in
# neither list, so it is treated as any other text.
OPT_OUT = frozenset({"stop", "stopall", "unsubscribe", "end", "quit", "cancel", "revoke", "optout", "opt out"})
OPT_IN = frozenset({"start", "unstop", "yes"})
HELP = frozenset({"help", "info"})

Keyword = Literal["stop", "start", "help"]

# MessageStatus -> feedback kind. "read" is a read receipt (RCS, WhatsApp): counted as an open.
# Other statuses (canceled, receiving, received, partially_delivered) say nothing Keepflow tracks:
# acknowledged, not recorded.
# https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
KINDS = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued",
    # "sending" is Twilio still handing it to the carrier; "sent" is the carrier having taken it.
    "sending": "queued", "sent": "sent",
    "delivered": "delivered", "undelivered": "undelivered", "failed": "failed", "read": "opened",
}

# ErrorCode on a failed/undelivered callback -> (scope, reason, meaning). https://www.twilio.com/docs/api/errors/<code>
# Scope "all": Twilio refuses every later text from that sender to that number (21610) or the number
# cannot take texts at all, so a transactional text would only fail as well.
ERROR_SUPPRESSIONS = {
    "21610": (suppressions.ALL, "sms_stop", "the recipient replied STOP; Twilio blocks further texts"),
    "21211": (suppressions.ALL, "invalid", "invalid 'To' phone number"),
    "21614": (suppressions.ALL, "invalid", "'To' is not a valid mobile number (a landline, or invalid)"),
    # Also sent when a short code cannot reach the destination carrier; Keepflow sends from long
    # codes or a Messaging Service, where it means a landline.
    "30006": (suppressions.ALL, "invalid", "landline or unreachable carrier"),
}

router = APIRouter()


class InboundSms(BaseModel):
    """The fields of Twilio's incoming-message webhook that Keepflow uses; Twilio sends many more.
    https://www.twilio.com/docs/messaging/guides/webhook-request"""

    model_config = ConfigDict(extra="ignore")

    message_sid: str = Field(alias="MessageSid", min_length=1, max_length=64)
    from_: str = Field(alias="From", min_length=1, max_length=64)
    to: str | None = Field(None, alias="To")
    body: str = Field("", alias="Body")
    # With Advanced Opt-Out on a Messaging Service, Twilio names the keyword it matched (STOP,
    # START, HELP), including custom and other-language keywords Keepflow does not know.
    # https://help.twilio.com/articles/31560110671259
    opt_out_type: str | None = Field(None, alias="OptOutType")

    def keyword(self) -> Keyword | None:
        named = (self.opt_out_type or "").strip().lower()
        if named in ("stop", "start", "help"):
            return named  # type: ignore[return-value]
        text = " ".join(self.body.split()).lower()
        if text in OPT_OUT:
            return "stop"
        if text in OPT_IN:
            return "start"
        if text in HELP:
            return "help"
        return None


class StatusCallback(BaseModel):
    """Twilio's message status callback. https://www.twilio.com/docs/messaging/guides/track-outbound-message-status"""

    model_config = ConfigDict(extra="ignore")

    message_sid: str = Field(alias="MessageSid", min_length=1, max_length=64)
    message_status: str = Field(alias="MessageStatus", min_length=1, max_length=32)
    error_code: str | None = Field(None, alias="ErrorCode", max_length=16)
    to: str | None = Field(None, alias="To", max_length=64)

    @field_validator("error_code", "to")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

    @property
    def notification_id(self) -> str:
        # One callback per status change of a message: a retry repeats both.
        return f"{self.message_sid}:{self.message_status}"


def help_text(brand: dict[str, Any]) -> str:
    """The HELP answer when none is configured: the shop's name first, as carriers ask."""
    name = brand.get("name")
    about = "Order and offer texts" if not isinstance(name, str) or not name.strip() else f"{name.strip()}: order and offer texts"
    return f"{about}. Reply STOP to opt out, START to opt back in."


@router.post(INBOUND_PATH, response_class=Response,
             responses={200: {"content": {TWIML: {}}, "description": "TwiML"}, 403: {}, 413: {}, 415: {}, 422: {}})
async def post_inbound(request: Request) -> Response:
    """A text to our number: opt-out and opt-in keywords change who may be texted; HELP is answered."""
    services: Services = request.app.state.services
    sms = _parse(InboundSms, await verified_form(request, services.settings))
    keyword = sms.keyword()
    reply = MessagingResponse()
    if keyword == "help":
        # Changes nothing, so nothing is kept; a retry (Twilio never got our answer) answers again.
        reply.message(services.settings.sms_help_text or help_text(services.catalog.file.brand))
    elif keyword is not None:
        await asyncio.to_thread(_once, apply_keyword, services.db, sms, keyword)
    # STOP and START get no reply from us: Twilio sends the confirmation itself.
    return Response(reply.to_xml(), media_type=TWIML)


@router.post(STATUS_PATH, response_class=Response, responses={403: {}, 413: {}, 415: {}, 422: {}})
async def post_status(request: Request) -> Response:
    """A status callback. Always 200 once verified (Twilio ignores the body), unknown messages too."""
    services: Services = request.app.state.services
    callback = _parse(StatusCallback, await verified_form(request, services.settings))
    await asyncio.to_thread(_once, apply_status, services.db, callback)
    return Response(status_code=200)


async def verified_form(request: Request, settings: Settings) -> FormData:
    """The posted parameters, if Twilio signed them for the URL it requested; else 403 (or 413/415)."""
    # app.py imports this module to mount the router, so its helpers are imported when called.

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Twilio webhooks are application/x-www-form-urlencoded")
    # Read within the size limit first, then let Starlette parse those bytes (it keeps blank values
    # and repeated names, both of which Twilio signs).
    body = await read_body(request, settings.max_body_bytes)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form()
    if not reveal(settings.twilio_auth_token):
        raise HTTPException(403, "Twilio webhooks are refused: no TWILIO_AUTH_TOKEN is set")
    if not valid_signature(reveal(settings.twilio_auth_token), signed_url(request, settings), form,
                           request.headers.get(SIGNATURE_HEADER)):
        raise HTTPException(403, f"bad or missing {SIGNATURE_HEADER}")
    return form


def valid_signature(token: str, url: str, params: FormData, signature: str | None) -> bool:
    """Twilio's scheme: base64 HMAC-SHA1, keyed with the auth token, of the full URL followed by each
    POST parameter's name and value, sorted by name. The SDK's validator also accepts the URL with
    its port removed, or with the scheme's default port added, as Twilio is not consistent about it.
    Webhooks signed with a SharedKey (X-Twilio-Webhooks-Signature-Settings) are not signed with the
    auth token, so they fail here: Keepflow has no setting for that key.
    https://www.twilio.com/docs/usage/webhooks/webhooks-security"""
    if not signature:
        return False
    try:
        return RequestValidator(token).validate(url, params, signature)
    except ValueError:  # a forwarded port that is not a number
        return False


def signed_url(request: Request, settings: Settings) -> str:
    """The URL Twilio requested, which is what it signed: behind a proxy that is not the one we see."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if settings.public_url:
        return settings.public_url.rstrip("/") + path
    if settings.trust_forwarded_headers:
        headers = request.headers
        scheme = (_first(headers.get("x-forwarded-proto")) or request.url.scheme).lower()
        host = _first(headers.get("x-forwarded-host")) or headers.get("host") or request.url.netloc
        port = _first(headers.get("x-forwarded-port"))
        has_port = ":" in host.rsplit("]", 1)[-1]
        if port and not has_port and port != {"https": "443", "http": "80"}.get(scheme):
            host = f"{host}:{port}"
        return f"{scheme}://{host}{path}"
    return str(request.url)


def _first(value: str | None) -> str | None:
    """Proxies append to these headers; the first value is what the client (Twilio) used."""
    return (value or "").split(",")[0].strip() or None


def apply_keyword(db: Database, sms: InboundSms, keyword: Keyword) -> bool:
    """Suppress or lift the sender's number. False if this MessageSid was handled before."""
    with db.session() as session:
        # A retried STOP arriving after a later START must not opt the customer out again.
        if delivery_events.seen_before(session, INBOUND_SOURCE, sms.message_sid):
            return False
        if keyword == "stop":
            # Scope "all", transactional included: after STOP Twilio refuses every text from that
            # sender to the number (error 21610), so any send would only fail.
            suppressions.suppress(session, channel="sms", address=sms.from_, scope=suppressions.ALL,
                                  reason="sms_stop", source=SOURCE,
                                  detail=f"replied {sms.body.strip()[:32]!r} ({sms.message_sid})",
                                  customer_id=customer_with_phone(session, sms.from_))
        else:
            suppressions.lift(session, channel="sms", address=sms.from_,
                              scopes=[suppressions.ALL, suppressions.MARKETING])
    log.info("SMS %s from a customer number (%s)", keyword.upper(), sms.message_sid)
    return True


def apply_status(db: Database, callback: StatusCallback) -> str:
    """Record one status callback: recorded, duplicate, unknown (not our message) or ignored."""
    kind = KINDS.get(callback.message_status)
    if kind is None:
        return "ignored"
    with db.session() as session:
        if delivery_events.seen_before(session, SOURCE, callback.notification_id):
            return "duplicate"
        message = delivery_events.find_message(session, provider_message_id=callback.message_sid)
        if message is None:
            # Not a text Keepflow sent (another app on the account, or a row since removed). The
            # dedupe row stays, so Twilio's retries are answered without another look.
            return "unknown"
        rule = ERROR_SUPPRESSIONS.get(callback.error_code or "")
        detail = None
        if callback.error_code:
            detail = f"error {callback.error_code}" + (f": {rule[2]}" if rule else "")
        data = {"message_sid": callback.message_sid, "status": callback.message_status}
        if callback.error_code:
            data["error_code"] = callback.error_code
        delivery_events.record(session, source=SOURCE, notification_id=callback.notification_id, message=message, kind=kind,
                        occurred_at=datetime.now(timezone.utc), detail=detail, data=data)
        address = callback.to or message.recipient
        if rule is not None and address:
            scope, reason, meaning = rule
            suppressions.suppress(session, channel="sms", address=address, scope=scope, reason=reason, source=SOURCE,
                                  detail=f"error {callback.error_code}: {meaning} ({callback.message_sid})",
                                  customer_id=message.customer_id)
    return "recorded"


def customer_with_phone(session: Session, phone: str) -> str | None:
    """The customer whose stored phone is this number, however it was written."""
    try:
        e164 = normalize_phone(phone)
    except InvalidContact:
        return session.scalar(select(Customer.id).where(Customer.phone == phone.strip()).order_by(Customer.id))
    exact = session.scalar(select(Customer.id).where(Customer.phone.in_({e164, phone.strip()})).order_by(Customer.id))
    if exact is not None:
        return exact
    # Stored in another format ("+66 81-234-5678"): every format ends with the last two digits
    # together, so only those rows are normalised and compared.
    rows = session.execute(select(Customer.id, Customer.phone).where(Customer.phone.like(f"%{e164[-2:]}"))
                           .order_by(Customer.id))
    for customer_id, stored in rows:
        try:
            if stored is not None and normalize_phone(stored) == e164:
                return customer_id
        except InvalidContact:
            continue
    return None


def _once(apply: Any, db: Database, *args: Any) -> Any:
    """Run `apply` in its own transaction; a concurrent copy of the same webhook loses the race on
    the deliveries key, and its second pass finds it recorded."""
    try:
        return apply(db, *args)
    except IntegrityError:
        return apply(db, *args)


def _parse(model: type[BaseModel], form: Mapping[str, Any]) -> Any:

    try:
        return model.model_validate(dict(form))
    except ValidationError as err:
        raise unprocessable(err) from err
