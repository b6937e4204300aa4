"""LINE messages through the Messaging API's push endpoint (`POST /v2/bot/message/push`), with
LINE's official SDK (line-bot-sdk v3, `linebot.v3.messaging`).

At most once, through LINE's retry key. Every push carries `X-Line-Retry-Key`, a UUID derived from
the send's key, so each attempt of one step sends the same key. LINE executes a request with a
given key once; a later request with that key gets 409 Conflict and, in the header
`x-line-accepted-request-id`, the id of the request that was accepted. So an answer lost after
LINE accepted the push (`sent=None`) is safe to resend: the resend comes back as a 409, which is
the earlier attempt's acceptance. LINE keeps a key for 24 hours: a resend later than that would
be delivered again.

Sources: github.com/line/line-openapi messaging-api.yml (commit 6e4c2a2a1b7b), operation
pushMessage: the X-Line-Retry-Key header parameter (format uuid), the 200/400/403/409/429
answers, ErrorResponse; github.com/line/line-bot-sdk-python (commit e1fa9338a323), README.rst
"How to get x-line-request-id header and error message" for the headers `x-line-request-id` and
`x-line-accepted-request-id`; LINE's guide "Retry failed API requests"
(developers.line.biz/en/docs/messaging-api/retrying-api-request/) for the 409 and the 24 hours.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import urllib3.exceptions
from linebot.v3.messaging import (
    ApiClient,
    ApiException,
    Configuration,
    FlexContainer,
    FlexMessage,
    Message,
    MessagingApi,
    PushMessageRequest,
    TextMessage,
)

from keepflow import metrics, tracing
from keepflow.sending.providers.base import (
    Accepted,
    LineFlex,
    LineText,
    OutgoingLine,
    PermanentError,
    ProviderError,
    RetryableError,
    is_retryable_status,
    parse_retry_after,
)
from keepflow.settings import reveal

if TYPE_CHECKING:
    from keepflow.settings import Settings

NAME = "line"

# Never to change: keys LINE already holds were derived from it, and a step retried under a new
# namespace would get a new key, which LINE would deliver again.
RETRY_KEY_NAMESPACE = uuid.UUID("6f1e3a52-0c4b-5d8e-9a27-4b1c8d0e2f63")


def retry_key(key: str) -> str:
    """The X-Line-Retry-Key of the send whose key is `key`: the same for each of its attempts."""
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, key))


class LineProvider:
    """Pushes to LINE users. Synchronous (urllib3 underneath); run it in a thread."""

    name = NAME

    def __init__(self, channel_access_token: str, api_base: str, timeout: float) -> None:
        if not channel_access_token:
            raise ValueError("LineProvider needs a channel access token (LINE_CHANNEL_ACCESS_TOKEN)")
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        configuration = Configuration(host=self.api_base, access_token=channel_access_token)
        # urllib3 would otherwise retry a failed connection by itself, three times; one call, one
        # attempt, as for SendGrid and Twilio: the worker's retry policy decides on the next.
        configuration.retries = False
        self._client = ApiClient(configuration)
        self._api = MessagingApi(self._client)

    @classmethod
    def from_settings(cls, settings: Settings) -> LineProvider:
        return cls(reveal(settings.line_channel_access_token), settings.line_api_base, settings.provider_timeout)

    def close(self) -> None:
        """Close pooled HTTP connections."""
        self._client.rest_client.pool_manager.clear()

    @tracing.provider_call(NAME, "send")
    @metrics.provider_call(NAME, "send")
    def send_line(self, msg: OutgoingLine) -> Accepted:
        request = PushMessageRequest(to=msg.to, messages=[_message(msg.message)])
        try:
            response = self._api.push_message_with_http_info(
                request, x_line_retry_key=retry_key(msg.key), _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:
                # An earlier attempt with this retry key was accepted: this one is that one.
                return Accepted(NAME, _header(exc.headers, "x-line-accepted-request-id"))
            raise _api_error(exc, msg.to) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise _transport_error(exc) from exc
        return Accepted(NAME, _header(response.headers, "x-line-request-id"))


def _message(message: LineText | LineFlex) -> Message:
    if isinstance(message, LineText):
        return TextMessage(text=message.text)
    try:
        contents = FlexContainer.from_dict(dict(message.contents))
    except ValueError as exc:  # the SDK's models refuse it (pydantic's ValidationError is a ValueError)
        raise PermanentError(NAME, f"invalid Flex bubble: {exc}") from exc
    return FlexMessage(alt_text=message.alt_text, contents=contents)


def _header(headers: Any, name: str) -> str | None:
    # urllib3's HTTPHeaderDict: names match whatever their case.
    return headers.get(name) if headers is not None else None


def _api_error(exc: ApiException, to: str) -> ProviderError:
    """Classify an error answer from LINE. It answered, so nothing was accepted. As for SendGrid and
    Twilio (base.RETRYABLE_STATUSES): 429 and 5xx are retried, and so are 401 and 403, a token or
    plan an operator has to fix; 400 and the rest are for good."""
    status: int = exc.status
    if status == 0:
        # The SDK's wrapping of a failed TLS handshake: no request was written.
        return RetryableError(NAME, f"request not delivered: {exc.reason}", sent=False)
    detail = _error_detail(exc.body) or f"HTTP {status}"
    if to:  # LINE's messages are not known to quote the recipient; if one ever does, not in our logs
        detail = detail.replace(to, "<user id>")
    if is_retryable_status(status):
        retry_after = parse_retry_after(_header(exc.headers, "Retry-After"))
        return RetryableError(NAME, detail, status=status, retry_after=retry_after, sent=False)
    return PermanentError(NAME, detail, status=status)


def _error_detail(body: str | bytes | None) -> str:
    """LINE's errors look like {"message": ..., "details": [{"message": ..., "property": ...}]}
    (ErrorResponse in messaging-api.yml)."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        error = json.loads(text)
        details = [f"{d['property']}: {d['message']}" if d.get("property") else str(d["message"])
                   for d in error.get("details") or ()]
        return "; ".join([str(error["message"]), *details])
    except (ValueError, KeyError, TypeError, AttributeError):
        return text[:500]


def _transport_error(exc: urllib3.exceptions.HTTPError) -> RetryableError:
    """No HTTP answer. With urllib3's retries off its errors come as they are: a connection that
    was never made (refused, DNS, connect timeout; NewConnectionError is a ConnectTimeoutError)
    means LINE never got the request; anything later (read timeout, a dropped connection) means it
    may have."""
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return RetryableError(NAME, f"request not delivered: {exc!r}", sent=False)
    return RetryableError(NAME, f"no answer after sending: {exc!r}", sent=None)
