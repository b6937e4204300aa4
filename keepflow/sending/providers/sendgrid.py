"""Email through SendGrid's v3 Mail Send API (`POST /v3/mail/send`), with the official SDK."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
from email.utils import parseaddr
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Asm, Category, CustomArg, From, GroupId, Header, Mail, To
from sendgrid.helpers.mail.exceptions import SendGridException

from keepflow import metrics, tracing
from keepflow.sending.providers.base import (
    Accepted,
    OutgoingEmail,
    PermanentError,
    RetryableError,
    is_retryable_status,
    parse_retry_after,
)

NAME = "sendgrid"

# The SDK's HTTP client logs each request's whole payload (recipients, subject, body) at DEBUG.
# A filter, not a level: a logging config that turns DEBUG on for everything must not bring it back.
logging.getLogger("python_http_client.client").addFilter(lambda record: False)


class SendGridEmail:
    """`EmailProvider` for SendGrid. Synchronous (urllib underneath); run it in a thread.

    The SDK never retries by itself and the API has no idempotency key: the message's `key` goes
    out as the custom arg `keepflow_key`, which SendGrid echoes in event webhooks.
    """

    name = NAME

    def __init__(self, api_key: str, host: str, from_: str, timeout: float) -> None:
        if not api_key:
            raise ValueError("SendGridEmail needs an API key (SENDGRID_API_KEY)")
        self.host = host
        self.from_ = from_  # used when a message has an empty from_
        self.timeout = timeout
        self._sg = SendGridAPIClient(api_key=api_key, host=host)
        # SendGridAPIClient has no timeout argument; the underlying python_http_client.Client
        # does, and passes it on to every sub-client. We also pass it per call (below).
        self._sg.client.timeout = timeout

    def _mail(self, msg: OutgoingEmail) -> dict[str, Any]:
        try:
            mail = Mail(
                from_email=_address(From, msg.from_ or self.from_),
                to_emails=_address(To, msg.to),
                subject=msg.subject,
                # SendGrid rejects empty content values, so leave out a missing part.
                plain_text_content=msg.text or None,
                html_content=msg.html or None,
            )
            # On the personalization, not the message: SendGrid's published spec types a top-level
            # custom_args as a string, and a validating proxy or mock refuses the SDK's object there.
            # Event webhooks flatten them into each event either way.
            mail.custom_arg = CustomArg("keepflow_key", msg.key, p=0)
            for name, value in msg.custom_args.items():
                mail.custom_arg = CustomArg(name, str(value), p=0)
            for name, value in msg.headers.items():
                mail.header = Header(name, value)
            # SendGrid refuses a repeated category (400), and a sequence and its template often share
            # a name; at most 10 per message. The SDK inserts each at the front, hence reversed.
            for category in reversed(list(dict.fromkeys(c[:255] for c in msg.categories))[:10]):
                mail.category = Category(category)
            if msg.asm_group_id is not None:
                mail.asm = Asm(GroupId(msg.asm_group_id))
            return mail.get()
        except SendGridException as exc:  # e.g. an API key pasted into the content
            raise PermanentError(NAME, f"invalid message: {exc}") from exc

    @tracing.provider_call(NAME, "send")
    @metrics.provider_call(NAME, "send")
    def send_email(self, msg: OutgoingEmail) -> Accepted:
        body = self._mail(msg)
        try:
            response = self._sg.client.mail.send.post(request_body=body, timeout=self.timeout)
        except HTTPError as exc:  # the API answered with a 4xx/5xx
            status = int(exc.status_code)
            detail = _error_detail(exc.body) or f"HTTP {status}"
            if is_retryable_status(status):
                headers = exc.headers
                retry_after = parse_retry_after(headers.get("Retry-After") if headers is not None else None)
                raise RetryableError(NAME, detail, status=status, retry_after=retry_after, sent=False) from exc
            raise PermanentError(NAME, detail, status=status) from exc
        except urllib.error.URLError as exc:
            # urllib wraps only errors raised while connecting and writing the request (refused,
            # DNS, TLS handshake, connect timeout) in URLError: SendGrid never got the request.
            raise RetryableError(NAME, f"request not delivered: {exc.reason}", sent=False) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Raised while waiting for / reading the answer (read timeout, connection reset,
            # RemoteDisconnected, IncompleteRead): the request was written, so SendGrid may have
            # accepted it.
            raise RetryableError(NAME, f"no answer after sending: {exc!r}", sent=None) from exc
        message_id = response.headers.get("X-Message-Id") if response.headers is not None else None
        return Accepted(NAME, message_id)


def _address(cls: type[From] | type[To], value: str) -> From | To:
    """"Name <addr>" or "addr" as a SendGrid From/To.

    The helper's own parsing turns anything without an "@" into a name-only recipient and then
    crashes with KeyError('email') while building the request; we pass such a value through as
    the address so SendGrid rejects it with a 400 (PermanentError) instead.
    """
    name, addr = parseaddr(value)
    email = cls()
    email.email = addr or value.strip()
    email.name = name or None
    return email


def _error_detail(body: bytes | str | None) -> str:
    """SendGrid errors look like {"errors": [{"message": ..., "field": ..., "help": ...}]}."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(text)["errors"]
        parts = [f"{e['field']}: {e['message']}" if e.get("field") else str(e["message"]) for e in errors]
        return "; ".join(parts)
    except (ValueError, KeyError, TypeError):
        return text[:500]
