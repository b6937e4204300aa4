"""Provider-neutral types: what Keepflow hands to an email/SMS provider and what comes back.

Errors are split by what the caller should do next:

* `PermanentError`: the provider refused this message for a reason that will not change on
  retry (invalid address, unsubscribed recipient, malformed request). Never retry.
* `RetryableError`: try again later. `sent` says whether the provider might already have the
  message: False means it certainly does not (a 429/5xx answer, or the connection failed before
  the request was written), so resending cannot duplicate; None means unknown (the request was
  written but the answer was lost: read timeout, connection reset). Neither SendGrid nor Twilio
  has an idempotency key, so for `sent is None` the caller must look before resending
  (`SmsProvider.find_sent`) or accept the risk of a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parseaddr, parsedate_to_datetime, quote
from typing import Any, Protocol, runtime_checkable


def named_sender(email_from: str, name: Any) -> str:
    """KEEPFLOW_EMAIL_FROM with `name` as its display name when it has none of its own.

    A bare address shows in the inbox as its local part ("shop"); the brand is what the customer
    bought from. Quoted, so a name with "." or "," (or Thai, Chinese) survives parsing as it is.
    """
    own_name, address = parseaddr(email_from)
    if own_name or not address or not isinstance(name, str) or not name.strip():
        return email_from
    return f'"{quote(name.strip())}" <{address}>'


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    subject: str
    html: str
    text: str
    # "Name <addr@example.com>" or a bare address; empty means "the provider's default sender".
    from_: str
    # Idempotency key of the send (one per workflow step); SendGrid gets it as custom_args
    # {"keepflow_key": key}, so it comes back in event webhooks and shows up in activity search.
    key: str
    # Extra mail headers (List-Unsubscribe, List-Unsubscribe-Post on marketing mail).
    headers: dict[str, str] = field(default_factory=dict)
    # SendGrid categories (sequence, step, template) and more custom_args (message id, customer):
    # both come back in event webhooks, which is how feedback finds its message.
    categories: tuple[str, ...] = ()
    custom_args: dict[str, str] = field(default_factory=dict)
    # SendGrid's unsubscribe group (asm.group_id) of marketing mail: a recipient's spam report or
    # unsubscribe at SendGrid then stops that group only, never order and shipping mail.
    asm_group_id: int | None = None


@dataclass(frozen=True)
class LineText:
    text: str


@dataclass(frozen=True)
class LineFlex:
    # What notifications and the chat list show, where the bubble cannot be drawn.
    alt_text: str
    # A Flex container as LINE's JSON has it: a bubble ({"type": "bubble", "body": {...}, ...}) or
    # a carousel of them.
    contents: Mapping[str, Any]


@dataclass(frozen=True)
class OutgoingLine:
    to: str  # a LINE user id, as LINE's webhooks give it (never logged)
    message: LineText | LineFlex
    key: str  # idempotency key of the send (one per workflow step): its retry key derives from it


@dataclass(frozen=True)
class OutgoingSms:
    to: str  # E.164, e.g. "+15558675310"
    body: str
    key: str  # idempotency key; Twilio has no field for it, see TwilioSms.find_sent
    # Where Twilio posts delivery status (only when a public URL is configured).
    status_callback: str | None = None


@dataclass(frozen=True)
class Accepted:
    provider: str
    provider_message_id: str | None


class ProviderError(Exception):
    """A provider did not accept a message. Subclasses say whether to retry."""

    def __init__(self, provider: str, detail: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(provider, detail)
        self.provider = provider
        self.status = status
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        bits = [f"{self.provider}: {self.detail}"]
        if self.status is not None:
            bits.append(f"status={self.status}")
        if self.code is not None:
            bits.append(f"code={self.code}")
        return " ".join(bits)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({attrs})"

    # Keyword-only constructor arguments do not survive the default Exception pickling (it replays
    # self.args positionally), so pickle the attribute dict instead.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_error, (type(self), dict(self.__dict__)))


def _restore_error(cls: type[ProviderError], state: dict[str, Any]) -> ProviderError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("provider"), state.get("detail"))
    err.__dict__.update(state)
    return err


class RetryableError(ProviderError):
    """Try again later; see the module docstring for `sent`."""

    def __init__(
        self,
        provider: str,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        sent: bool | None = False,
    ) -> None:
        super().__init__(provider, detail, status=status, code=code)
        self.retry_after = retry_after  # seconds, from a Retry-After header
        self.sent = sent  # False: certainly not accepted; None: unknown


class PermanentError(ProviderError):
    """The provider rejected this message for good (invalid address, 400/404, unsubscribed...)."""


# 401/403 mean our credentials are wrong or lack a permission (a rotated or revoked key, a missing
# scope). That is an operator problem, not a property of the message: treating it as permanent
# would silently drop every message sent while the keys are being fixed. Retrying means the
# backlog goes out once the key is fixed; the worker's retry policy and alerting bound the cost.
# 408 (request timeout) and 409 (conflict) are transient by definition; 429 and 5xx say "later".
# The provider answered, so in all these cases it did not accept the message: sent=False.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 409, 429})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP error status from a provider should be retried (see RETRYABLE_STATUSES)."""
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a Retry-After header (RFC 9110 §10.2.3).

    Either delta-seconds ("120") or an HTTP-date ("Fri, 31 Dec 1999 23:59:59 GMT"); a date in
    the past gives 0. Anything unparseable gives None.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" / obsolete forms: HTTP-dates are always UTC
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    seconds = (when - now).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


@runtime_checkable
class EmailProvider(Protocol):
    name: str

    def send_email(self, msg: OutgoingEmail) -> Accepted: ...


@runtime_checkable
class LineSender(Protocol):
    """Pushes LINE messages. A second push of one message (same key) is the first one's acceptance,
    never a second message: LINE's retry key, the outbox's lookup."""
    name: str

    def send_line(self, msg: OutgoingLine) -> Accepted: ...


@runtime_checkable
class SmsProvider(Protocol):
    name: str

    def send_sms(self, msg: OutgoingSms) -> Accepted: ...

    def find_sent(self, msg: OutgoingSms, since: datetime) -> Accepted | None:
        """An SMS the provider already accepted for `msg` (same recipient and body, created at or
        after `since`), or None. For the unknown-outcome case (`RetryableError.sent is None`)."""
        ...
