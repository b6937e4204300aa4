"""SMS through Twilio's Programmable Messaging API, with the official SDK (twilio 9.x)."""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
import urllib3.exceptions
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from keepflow import metrics, tracing
from keepflow.sending.providers.base import (
    Accepted,
    OutgoingSms,
    PermanentError,
    ProviderError,
    RetryableError,
    is_retryable_status,
    parse_retry_after,
)

# Where Twilio posts delivery status for the texts we send (served by keepflow.http.twilio).
STATUS_PATH = "/webhooks/twilio/status"


def status_callback_url(public_url: str | None) -> str | None:
    """The status callback for a text we send, when Twilio can reach us at all."""
    return f"{public_url.rstrip('/')}{STATUS_PATH}" if public_url else None

NAME = "twilio"

# Error codes that mean "this message can never be delivered", whatever the HTTP status:
# https://www.twilio.com/docs/api/errors/<code>
PERMANENT_CODES = frozenset({
    21610,  # recipient replied STOP: unsubscribed
    21211,  # invalid 'To' number
    21614,  # 'To' is not a mobile number
    21408,  # sending to this region is not enabled (geo permissions)
    21612,  # cannot route to this number from this sender
})

# find_sent: how far before `since` to look (clock skew between us and Twilio, and Twilio's
# second-granularity timestamps).
LOOKUP_SKEW = timedelta(seconds=60)
# find_sent reads every message to the number in its window, a page at a time; past this many
# pages it gives up rather than answer "not there" from a partial read (2,000 texts from one
# sender to one number within minutes is not marketing).
LOOKUP_PAGE_SIZE = 100
LOOKUP_PAGES = 20


def _without_query(record: logging.LogRecord) -> bool:
    """urllib3 logs each request line at DEBUG, query included: `find_sent`'s is `To=<phone>`."""
    if isinstance(record.args, tuple):
        record.args = tuple(a.split("?", 1)[0] + "?..." if isinstance(a, str) and "?" in a else a for a in record.args)
    return True


logging.getLogger("urllib3.connectionpool").addFilter(_without_query)


class _HttpClient(TwilioHttpClient):
    """TwilioHttpClient that remembers the last response per thread.

    TwilioRestException keeps the status and error code but drops the response headers, and we
    want Retry-After from a 429/503. The SDK's own `_test_only_last_response` is shared between
    threads; this one is not.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.response = None
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    @property
    def last_response(self) -> Response | None:
        return getattr(self._local, "response", None)

    # The SDK logs every request's URL and query at INFO: `find_sent`'s `To=+66...` is a
    # customer's phone number, and logs are kept and shipped far more widely than the database.
    # Keepflow logs its own line per send, with the message id and no recipient.
    def log_request(self, kwargs: Any) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        pass


class TwilioSms:
    """`SmsProvider` for Twilio. Synchronous (requests underneath); run it in a thread.

    Twilio has no idempotency key and the SDK never retries by itself. When a send ends with
    `RetryableError(sent=None)`, call `find_sent` before sending again.
    """

    name = NAME

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_: str | None,
        messaging_service_sid: str | None,
        base_url: str | None,
        timeout: float,
    ) -> None:
        if not (account_sid and auth_token):
            raise ValueError("TwilioSms needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if not (from_ or messaging_service_sid):
            raise ValueError("TwilioSms needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        self.from_ = from_
        self.messaging_service_sid = messaging_service_sid
        self.timeout = timeout
        self._http = _HttpClient(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        # The SDK reads TWILIO_EDGE / TWILIO_REGION from the environment and then rewrites the
        # host of every URL ("api.twilio.com" -> "api.<edge>.<region>.twilio.com"), which would
        # also mangle a base_url override. Keepflow's settings are the only source of the
        # endpoint: for a regional endpoint set TWILIO_BASE_URL (e.g. https://api.dublin.ie1.twilio.com).
        self._client.edge = None
        self._client.region = None
        if base_url:
            # Every API v2010 URL, including the next_page_uri of list pages, is built by
            # Domain.absolute_url() from `api.base_url` (default "https://api.twilio.com").
            self._client.api.base_url = base_url.rstrip("/")
        self.base_url = self._client.api.base_url

    def close(self) -> None:
        """Close pooled HTTP connections."""
        if self._http.session is not None:
            self._http.session.close()

    @tracing.provider_call(NAME, "send")
    @metrics.provider_call(NAME, "send")
    def send_sms(self, msg: OutgoingSms) -> Accepted:
        # Exactly one sender: a fixed number if configured, else the Messaging Service (which
        # picks a number from its pool and handles opt-out keywords).
        sender: dict[str, str] = (
            {"from_": self.from_} if self.from_ else {"messaging_service_sid": self.messaging_service_sid or ""}
        )
        try:
            extra = {"status_callback": msg.status_callback} if msg.status_callback else {}
            message = self._client.messages.create(to=msg.to, body=msg.body, **sender, **extra)
        except TwilioException as exc:
            raise self._api_error(exc) from exc
        except requests.exceptions.RequestException as exc:
            raise _transport_error(exc) from exc
        return Accepted(NAME, message.sid)

    @tracing.provider_call(NAME, "lookup")
    @metrics.provider_call(NAME, "lookup")
    def find_sent(self, msg: OutgoingSms, since: datetime) -> Accepted | None:
        """The message Twilio accepted for `msg` at or after `since`, if any.

        A match is a message from our sender (the number, or the Messaging Service) to the same
        number, created no earlier than `since` less LOOKUP_SKEW, whose body is `msg.body` as
        Twilio may have rewritten it (`_body_matches`). Its status does not matter: a 'failed'
        or 'undelivered' message was still accepted, and Keepflow's contract is at most one send
        per step, so any match counts as sent.

        Two lookups, because Twilio's list filter is on DateSent, which stays null until the
        message leaves Twilio's queue ('accepted', 'queued', 'scheduled', 'sending'):
        1. `To` (+ `From`) + `DateSent>` (since - skew): every message sent in the window;
        2. if nothing matched, `To` (+ `From`) alone, newest first, until a message created
           before the window: catches messages still queued.
        Both page through everything they match, up to LOOKUP_PAGES pages. Twilio's list is
        eventually consistent; the caller must give it time after the send before it looks.

        Raises RetryableError(sent=None) when the lookup itself fails transiently (the outcome is
        still unknown); PermanentError when it is rejected or has more to read than its budget,
        so no answer can be given.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        start = since - LOOKUP_SKEW
        try:
            for m in self._messages(msg.to, date_sent_after=start):
                if self._is_ours(m, msg, start):
                    return Accepted(NAME, m.sid)
            for m in self._messages(msg.to):
                if m.date_created is not None and m.date_created < start:
                    break
                if self._is_ours(m, msg, start):
                    return Accepted(NAME, m.sid)
        except TwilioException as exc:
            err = self._api_error(exc)
            if isinstance(err, RetryableError):
                err.sent = None
            raise err from exc
        except requests.exceptions.RequestException as exc:
            err = _transport_error(exc)
            err.sent = None
            raise err from exc
        return None

    def _messages(self, to: str, **filters: Any) -> Iterator[Any]:
        """The messages from our sender to `to` (newest first), page after page, within the budget."""
        if self.from_:
            # A Messaging Service's sender is picked from its pool (and null while queued), so
            # only a fixed number can be filtered on here; `_is_ours` checks the service.
            filters["from_"] = self.from_
        budget = LOOKUP_PAGE_SIZE * LOOKUP_PAGES
        for n, m in enumerate(self._client.messages.stream(to=to, page_size=LOOKUP_PAGE_SIZE, **filters)):
            if n == budget:
                raise PermanentError(NAME, f"more than {budget} messages to this number in the lookup window; "
                                           "cannot tell whether this one is among them")
            yield m

    def _is_ours(self, m: Any, msg: OutgoingSms, start: datetime) -> bool:
        if self.messaging_service_sid and m.messaging_service_sid != self.messaging_service_sid:
            return False
        return (m.date_created is None or m.date_created >= start) and _body_matches(m.body, msg.body)

    def _api_error(self, exc: TwilioException) -> ProviderError:
        """Classify an error answer from Twilio. The API answered, so nothing was accepted."""
        status: int | None = getattr(exc, "status", None)
        code: Any = getattr(exc, "code", None)
        detail = getattr(exc, "msg", None) or getattr(exc, "detail", None) or str(exc)
        response = self._http.last_response
        if status is None and len(exc.args) > 1 and isinstance(exc.args[1], Response):
            # List pages fail with TwilioException("Unable to fetch page", response).
            response = exc.args[1]
        if status is None and response is not None:
            status = int(response.status_code)
            detail = f"{exc.args[0]}: {response.text[:500]}"
        code_str = str(code) if code is not None else None
        if code in PERMANENT_CODES or (isinstance(code, str) and code.isdigit() and int(code) in PERMANENT_CODES):
            return PermanentError(NAME, detail, status=status, code=code_str)
        if status is not None and is_retryable_status(status):
            retry_after = None
            if response is not None and response.headers is not None:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RetryableError(NAME, detail, status=status, code=code_str, retry_after=retry_after, sent=False)
        return PermanentError(NAME, detail, status=status, code=code_str)


# Trial accounts prepend this to every body.
TRIAL_PREFIX = "Sent from your Twilio trial account - "

# Twilio's Smart Encoding (a Messaging Service setting, or SmartEncoded=true on the create)
# replaces Unicode characters that look like a GSM-7 one, so a text bills as GSM-7. What each
# character may come back as: here the common substitutions (quotes, dashes, spaces, ellipsis,
# invisible characters dropped); besides, its compatibility decomposition when that is plain
# ASCII (fullwidth letters, ligatures, accented letters).
_REWRITES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys("\u00ab\u00bb\u201c\u201d\u201e\u201f\u2033\u2036\u301d\u301e\uff02", ('"',)),
    **dict.fromkeys("\u2018\u2019\u201b\u2032\u2035\u02b9\u02bb\u02bc\u02bd\u02be\u02bf\u02c8\u02ca\u02cb\u02f4\uff07",
                    ("'",)),
    "\u201a": ("'", ","), "\u2039": ("'", "<"), "\u203a": ("'", ">"),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63\uff0d", ("-",)),
    "\u2026": ("...",),
    **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000",
                    (" ",)),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff", ("",)),
}
# An opt-out line a Messaging Service may append (its compliance text names the STOP keyword).
_FOOTER_MAX = 80
_STOP = re.compile(r"\bstop\b", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _alternatives(char: str) -> tuple[str, ...]:
    found = _REWRITES.get(char, ())
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    if base.isascii() and base and base != char and base not in found:
        found += (base,)
    return (char, *found)


def _body_pattern(wanted: str) -> re.Pattern[str]:
    parts = []
    for char in wanted.rstrip():
        options = _alternatives(char)
        parts.append(re.escape(char) if len(options) == 1 else "(?:" + "|".join(map(re.escape, options)) + ")")
    return re.compile(f"(?:{re.escape(TRIAL_PREFIX)})?{''.join(parts)}(?P<rest>.*)", re.DOTALL)


def _body_matches(found: str | None, wanted: str) -> bool:
    """Whether `found`, a body as Twilio lists it, is `wanted` as Keepflow sent it.

    Twilio may have rewritten the body: the trial prefix, Smart Encoding of each character
    (`_REWRITES`), and an opt-out line appended by a Messaging Service. So each character of
    ours may come back as one of its known replacements, and ours may be followed by one more
    line, of at most _FOOTER_MAX characters, that names STOP. Anything else after ours means
    another, longer message (another step's whose text starts with ours): that one must not
    count as this, or this message would be recorded as sent and never go. The cost of the rule
    is the opposite mistake in one narrow case, a text of ours followed by a short line naming
    STOP, which is then taken for this one: lost rather than sent twice.
    """
    if found is None:
        return False
    matched = _body_pattern(wanted).fullmatch(found.rstrip())
    if matched is None:
        return False
    rest = matched.group("rest")
    if not rest:
        return True
    footer = rest.strip()
    return rest[0] in "\r\n" and "\n" not in footer and len(footer) <= _FOOTER_MAX and bool(_STOP.search(footer))


# urllib3 reasons that mean the TCP/TLS connection was never established, so no request bytes
# reached Twilio. NewConnectionError covers refused connections and DNS failures
# (NameResolutionError); ConnectTimeoutError a connect timeout; SSLError a failed TLS handshake
# (a TLS failure after the request was written is possible in theory, but rare enough that we
# prefer not to turn every certificate problem into an unknown outcome).
_NOT_SENT_REASONS = (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.SSLError)


def _transport_error(exc: requests.exceptions.RequestException) -> RetryableError:
    """No HTTP answer. Decide whether the request could have reached Twilio."""
    sent: bool | None = None
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        sent = False
    elif isinstance(exc, requests.exceptions.ConnectionError):
        # requests wraps a failure to connect as MaxRetryError(reason=NewConnectionError...);
        # a connection dropped after the request was written comes as ProtocolError
        # (RemoteDisconnected, ConnectionResetError): unknown.
        inner = exc.args[0] if exc.args else None
        reason = getattr(inner, "reason", None)
        if isinstance(inner, urllib3.exceptions.MaxRetryError) and isinstance(reason, _NOT_SENT_REASONS):
            sent = False
    # ReadTimeout, ChunkedEncodingError, ProtocolError...: the request was written; unknown.
    what = "request not delivered" if sent is False else "no answer after sending"
    return RetryableError(NAME, f"{what}: {exc!r}", sent=sent)
