"""A local fake of the provider APIs Keepflow talks to, for tests with the real SDKs.

* SendGrid v3 `POST /v3/mail/send`
* Twilio 2010-04-01 `POST|GET /2010-04-01/Accounts/{AccountSid}/Messages.json`
* LINE Messaging API `POST /v2/bot/message/push`, with its retry key (`X-Line-Retry-Key`)

Answers follow the real APIs closely enough for `sendgrid`, `twilio` (9.x) and `line-bot-sdk` (v3)
to parse them, including their error shapes. Failures can be scripted per API (`fail_next`,
`accept_then_drop`, `accept_then_stall`); `on_accept` sees each accepted send before its answer
goes out. The fake LINE executes a retry key once, as LINE does: a push repeating one answers 409,
naming the request accepted earlier (`line_deliveries` counts pushes per key). Twilio's quirks can
be switched on: a list that shows a new message only some seconds after its creation
(`twilio_list_lag`), and bodies rewritten as Twilio stores them (`twilio_rewrites`: Smart
Encoding, an appended opt-out line). Timestamps come from `clock`, which a test on the time-skipping
Temporal server points at that server's time. Everything listens on 127.0.0.1 only.

    with FakeProviders() as fake:
        client = SendGridAPIClient(fake.sendgrid_api_key, host=fake.url)
        ...
        assert fake.accepted("sendgrid")[0]["subject"] == "Hi"
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from jsonschema import Draft202012Validator, FormatChecker

Api = Literal["sendgrid", "twilio", "line"]

# The credentials the fake accepts by default (tests/engine.make_settings uses these).
FAKE_SENDGRID_API_KEY = "SG.test-key"
FAKE_TWILIO_ACCOUNT_SID = "AC" + "0" * 32
FAKE_TWILIO_AUTH_TOKEN = "test-token"
FAKE_LINE_CHANNEL_ACCESS_TOKEN = "line-test-token"

_TWILIO_MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
_TWILIO_DEFAULT_CODES = {401: 20003, 404: 20404, 405: 20004, 429: 20429, 500: 20500, 503: 20503}


# What Twilio's Smart Encoding does to the punctuation Keepflow's templates are likely to hold.
SMART_ENCODING = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "-",
                                "\u2013": "-", "\u2026": "...", "\u00a0": " "})


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def unused_url() -> str:
    """The URL of a local port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class _Script:
    kind: Literal["fail", "drop", "stall"]
    status: int = 0
    retry_after: str | None = None
    body: dict[str, Any] | None = None
    twilio_code: int | None = None
    seconds: float = 0.0


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(
        status,
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        json.dumps(payload).encode(),
    )


def _rfc2822(dt: datetime) -> str:
    return format_datetime(dt)  # aware UTC -> "Thu, 24 Aug 2023 05:01:45 +0000", like Twilio


def _segments(body: str) -> int:
    # GSM-7 (approximated by ASCII) fits 160 chars, 153 per part; anything else is UCS-2: 70 / 67.
    single, part = (160, 153) if body.isascii() else (70, 67)
    if len(body) <= single:
        return 1
    return -(-len(body) // part)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, closed after the answer, so no client ever keeps a
    # pooled socket to this server (no ResourceWarnings, nothing to clean up between tests).
    protocol_version = "HTTP/1.0"
    timeout = 10  # a client that connects and sends nothing does not hold a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    # Join handler threads on close, so a test ends with no thread still holding a socket.
    daemon_threads = False
    block_on_close = True
    fake: FakeProviders


class FakeProviders:
    def __init__(
        self,
        *,
        sendgrid_api_key: str = FAKE_SENDGRID_API_KEY,
        twilio_account_sid: str = FAKE_TWILIO_ACCOUNT_SID,
        twilio_auth_token: str = FAKE_TWILIO_AUTH_TOKEN,
        twilio_sent_on_accept: bool = True,
        line_channel_access_token: str = FAKE_LINE_CHANNEL_ACCESS_TOKEN,
    ) -> None:
        self.sendgrid_api_key = sendgrid_api_key
        self.twilio_account_sid = twilio_account_sid
        self.twilio_auth_token = twilio_auth_token
        self.line_channel_access_token = line_channel_access_token
        # True: list output shows accepted messages as sent at acceptance (date_sent =
        # date_created, status "sent"). False: they stay queued, date_sent null, so Twilio's
        # DateSent filters skip them, as for a real message still in Twilio's queue.
        self.twilio_sent_on_accept = twilio_sent_on_accept
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._accepted: dict[str, list[dict[str, Any]]] = {"sendgrid": [], "twilio": [], "line": []}
        self._scripts: dict[str, deque[_Script]] = {"sendgrid": deque(), "twilio": deque(), "line": deque()}
        self._stopping = threading.Event()
        # Optional: on_accept(api, record) runs in the request's thread once a send is accepted and
        # recorded (the record as `accepted` returns it), before the answer is written. It may
        # hold the answer back (sleep) or return True to drop it, as accept_then_drop does. The
        # fault tests use it to kill a worker exactly between the provider's accept and the
        # worker hearing of it. Not cleared by reset().
        self.on_accept: Callable[[Api, dict[str, Any]], bool | None] | None = None
        self._accepted_here = threading.local()  # the send this request's thread just accepted
        self._quirks_off()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeProviders:
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-providers", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes stalled handlers
        server.shutdown()
        server.server_close()  # closes the listening socket, joins handler threads
        if thread is not None:
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        api: Api,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
        twilio_code: int | None = None,
    ) -> None:
        """Answer the next `times` requests to `api` with `status` (and a Retry-After header,
        and this JSON body, or the API's usual error JSON; `twilio_code` sets Twilio's code)."""
        self._script(api, times, _Script("fail", status, retry_after, body, twilio_code))

    def accept_then_drop(self, api: Api, times: int = 1) -> None:
        """Handle the next `times` requests to `api` normally (a send is accepted and recorded),
        then close the connection without answering: "accepted, response lost"."""
        self._script(api, times, _Script("drop"))

    def accept_then_stall(self, api: Api, seconds: float, times: int = 1) -> None:
        """Like accept_then_drop, but first keep the connection open, silent, for `seconds`
        (or until stop()): the client's read timeout fires."""
        self._script(api, times, _Script("stall", seconds=seconds))

    def twilio_rewrites(self, *, smart_encoding: bool = False, footer: str | None = None) -> None:
        """Store (and list) each new Twilio body as Twilio would rewrite it: Smart Encoding of Unicode
        punctuation (unless the create says SmartEncoded=false), and `footer` appended, like a
        Messaging Service's opt-out line."""
        self.twilio_smart_encoding = smart_encoding
        self.twilio_footer = footer

    def _quirks_off(self) -> None:
        # The fake's clock: Twilio's timestamps, and when a lagging list shows a message.
        self.clock: Callable[[], datetime] = _utc_now
        # Seconds (on `clock`) from a message's creation until the list shows it: Twilio's list is
        # eventually consistent, so a message just accepted may be missing from it.
        self.twilio_list_lag = 0.0
        self.twilio_smart_encoding = False
        self.twilio_footer: str | None = None

    def _script(self, api: Api, times: int, script: _Script) -> None:
        if api not in self._scripts:
            raise ValueError(f"unknown api {api!r}")
        with self._lock:
            self._scripts[api].extend(script for _ in range(times))

    def reset(self) -> None:
        """Forget recorded requests and accepted messages, and drop any scripted behaviour and
        quirks (for one server shared by many tests)."""
        self._quirks_off()
        with self._lock:
            self._requests.clear()
            for messages in self._accepted.values():
                messages.clear()
            for scripts in self._scripts.values():
                scripts.clear()

    # -- recording ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: api, method, path, query, headers, body (parsed)."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def accepted(self, api: Api) -> list[dict[str, Any]]:
        """Messages accepted by `api`, oldest first (copies)."""
        with self._lock:
            return [dict(m) for m in self._accepted[api]]

    def line_deliveries(self) -> Counter[str | None]:
        """How many pushes LINE accepted per retry key (None: pushes without one). A step sent
        once has one key counted once; a retry under a new key would show as a second key."""
        with self._lock:
            return Counter(m["retry_key"] for m in self._accepted["line"])

    # -- request handling --------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path = split.path
        query_values = parse_qs(split.query, keep_blank_values=True)
        query = {k: v[0] for k, v in query_values.items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if len(raw) < length:
            # The client went away mid-body (a worker killed while its request was on its way): no
            # provider acts on a request that never arrived whole, so it is not one of the requests.
            h.close_connection = True
            return
        form: dict[str, list[str]] = {}
        api: str | None
        if path.startswith("/v3/"):
            api = "sendgrid"
        elif path.startswith("/2010-04-01/"):
            api = "twilio"
        elif path.startswith("/v2/bot/"):
            api = "line"
        else:
            api = None
        body: Any = raw.decode("utf-8", "replace")
        if api in ("sendgrid", "line") and raw:
            try:
                body = json.loads(raw)
            except ValueError:
                pass
        elif api == "twilio" and raw:
            form = parse_qs(body, keep_blank_values=True)
            body = {k: v[0] for k, v in form.items()}
        with self._lock:
            self._requests.append(
                {"api": api, "method": h.command, "path": path, "query": query, "headers": dict(h.headers.items()), "body": body}
            )
            script = self._scripts[api].popleft() if api and self._scripts[api] else None
        self._accepted_here.record = None

        if api is None:
            self._send(h, _json_reply(404, {"message": f"no such API: {path}"}))
            return
        if script is not None and script.kind == "fail":
            self._send(h, self._scripted_failure(api, script, path))
            return
        if api == "sendgrid":
            reply = self._sendgrid(h, path, body)
        elif api == "line":
            reply = self._line(h, path, body)
        else:
            reply = self._twilio(h, path, query, body, query_values if h.command == "GET" else form)
        hook, record = self.on_accept, getattr(self._accepted_here, "record", None)
        if hook is not None and record is not None and hook(api, dict(record)):
            h.close_connection = True
            return
        if script is not None:  # drop / stall: the work is done, the answer never arrives
            if script.kind == "stall":
                self._stopping.wait(script.seconds)
            h.close_connection = True
            return
        try:
            self._send(h, reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client is gone (a killed worker): like the real API, nobody to tell

    @staticmethod
    def _send(h: _Handler, reply: _Reply) -> None:
        h.send_response(reply.status)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(reply.body)))
        h.end_headers()
        if reply.body and h.command != "HEAD":
            h.wfile.write(reply.body)

    def _scripted_failure(self, api: str, script: _Script, path: str) -> _Reply:
        status = script.status
        headers = {"Retry-After": script.retry_after} if script.retry_after is not None else {}
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        if script.body is not None:
            payload = script.body
        elif api == "sendgrid":
            payload = {"errors": [{"message": phrase.lower(), "field": None, "help": None}]}
        elif api == "line":
            payload = {"message": phrase}
            headers["x-line-request-id"] = str(uuid.uuid4())
        else:
            code = script.twilio_code or _TWILIO_DEFAULT_CODES.get(status, status)
            payload = {
                "code": code,
                "message": phrase if script.twilio_code is None else f"Scripted error {code} for {path}",
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            }
        return _json_reply(status, payload, headers)

    # -- SendGrid ----------------------------------------------------------------------------

    @staticmethod
    def _sendgrid_errors(*errors: tuple[str, str | None]) -> dict[str, Any]:
        return {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}

    def _sendgrid(self, h: _Handler, path: str, body: Any) -> _Reply:
        if path != "/v3/mail/send":
            return _json_reply(404, self._sendgrid_errors(("not found", None)))
        if h.command != "POST":
            return _json_reply(405, self._sendgrid_errors(("method not allowed", None)))
        if h.headers.get("Authorization") != f"Bearer {self.sendgrid_api_key}":
            return _json_reply(
                401, self._sendgrid_errors(("The provided authorization grant is invalid, expired, or revoked", None))
            )
        if not isinstance(body, dict):
            return _json_reply(400, self._sendgrid_errors(("Bad Request", None)))

        errors: list[tuple[str, str | None]] = _against_the_spec(body)
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            errors.append(
                ("The personalizations field is required and must have at least one personalization.", "personalizations")
            )
            personalizations = []
        for i, p in enumerate(personalizations):
            tos = p.get("to") if isinstance(p, dict) else None
            if not isinstance(tos, list) or not tos or not all(isinstance(t, dict) and t.get("email") for t in tos):
                errors.append(
                    ("The to array is required for all personalization objects, and must have at least one email object with a valid email address.", f"personalizations.{i}.to")
                )
                continue
            for j, t in enumerate(tos):
                if "@" not in str(t["email"]):
                    errors.append(("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email"))
        sender = body.get("from")
        if not isinstance(sender, dict) or not sender.get("email"):
            errors.append(
                ("The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.", "from.email")
            )
        elif "@" not in str(sender["email"]):
            errors.append(("The from email does not contain a valid address.", "from.email"))
        has_subject = bool(body.get("subject")) or (
            bool(personalizations) and all(isinstance(p, dict) and p.get("subject") for p in personalizations)
        )
        if not has_subject and not body.get("template_id"):
            errors.append(
                ("The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.", "subject")
            )
        content = body.get("content")
        if not body.get("template_id"):
            if not isinstance(content, list) or not content:
                errors.append(
                    ("Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.", "content")
                )
            else:
                for k, c in enumerate(content):
                    if not isinstance(c, dict) or not c.get("type") or not c.get("value"):
                        errors.append(("The content value must be a string at least one character in length.", f"content.{k}.value"))
        if errors:
            return _json_reply(400, self._sendgrid_errors(*errors))

        contents = {c["type"]: c["value"] for c in (content or [])}
        custom_args = dict(body.get("custom_args") or {})
        for p in personalizations:
            custom_args.update(p.get("custom_args") or {})
        message_id = secrets.token_urlsafe(16)[:22]
        first_to = personalizations[0]["to"][0]
        record = {
            "message_id": message_id,
            "to": first_to["email"],
            "to_name": first_to.get("name"),
            "from": sender["email"],
            "from_name": sender.get("name"),
            "subject": body.get("subject") or personalizations[0].get("subject"),
            "html": contents.get("text/html"),
            "text": contents.get("text/plain"),
            "custom_args": custom_args,
            "keepflow_key": custom_args.get("keepflow_key"),
            "payload": body,
            "accepted_at": datetime.now(timezone.utc).timestamp(),  # wall clock, to compare with when a test killed the sender
        }
        with self._lock:
            self._accepted["sendgrid"].append(record)
        self._accepted_here.record = record
        return _Reply(202, {"X-Message-Id": message_id}, b"")

    # -- LINE --------------------------------------------------------------------------------

    @staticmethod
    def _line_reply(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> _Reply:
        # LINE names every answer, error or not, with a request id of its own.
        return _json_reply(status, payload, {"x-line-request-id": str(uuid.uuid4()), **(headers or {})})

    def _line(self, h: _Handler, path: str, body: Any) -> _Reply:
        if path != LINE_PUSH:
            return self._line_reply(404, {"message": "Not found"})
        if h.command != "POST":
            return self._line_reply(405, {"message": "Method not allowed"})
        if h.headers.get("Authorization") != f"Bearer {self.line_channel_access_token}":
            return self._line_reply(401, {"message": "Authentication failed. Confirm that the access token in the "
                                                     "authorization header is valid."})
        retry_key = h.headers.get("X-Line-Retry-Key")
        if retry_key is not None and not _is_uuid(retry_key):
            return self._line_reply(400, {"message": "The value of the X-Line-Retry-Key header is invalid"})
        if not isinstance(body, dict):
            return self._line_reply(400, {"message": "The request body has 1 error(s)",
                                          "details": [{"message": "must be a JSON object", "property": ""}]})
        errors = _against_line_spec(body)
        if errors:
            return self._line_reply(400, {"message": f"The request body has {len(errors)} error(s)", "details": errors})

        request_id = str(uuid.uuid4())
        # Only a message that can be quoted gets a quote token (SentMessage in messaging-api.yml).
        sent = [{"id": str(secrets.randbelow(10**18) + 10**17),
                 **({"quoteToken": secrets.token_urlsafe(64)} if m["type"] == "text" else {})}
                for m in body["messages"]]
        record = {
            "request_id": request_id,
            "retry_key": retry_key,
            "to": body["to"],
            "messages": body["messages"],
            "sent_messages": sent,
            "payload": body,
            "accepted_at": datetime.now(timezone.utc).timestamp(),
        }
        with self._lock:  # one lock for look and insert: two attempts racing still deliver once
            earlier = next((m for m in self._accepted["line"] if retry_key and m["retry_key"] == retry_key), None)
            if earlier is None:
                self._accepted["line"].append(record)
        if earlier is not None:
            # LINE: "Once the request is accepted, subsequent retried requests are blocked and you'll
            # get the status code 409", naming the accepted request; its body is an ErrorResponse,
            # which for a push also lists the messages sent then.
            return self._line_reply(409, {"message": "The retry key is already accepted",
                                          "sentMessages": earlier["sent_messages"]},
                                    {"x-line-accepted-request-id": earlier["request_id"]})
        self._accepted_here.record = record
        return _json_reply(200, {"sentMessages": sent}, {"x-line-request-id": request_id})

    # -- Twilio ------------------------------------------------------------------------------

    @staticmethod
    def _twilio_error(status: int, code: int, message: str) -> _Reply:
        return _json_reply(
            status,
            {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        )

    def _twilio(self, h: _Handler, path: str, query: dict[str, str], form: Any,
                params: dict[str, list[str]]) -> _Reply:
        m = _TWILIO_MESSAGES.match(path)
        if m is None:
            return self._twilio_error(404, 20404, f"The requested resource {path} was not found")
        auth = h.headers.get("Authorization") or ""
        expected = "Basic " + base64.b64encode(f"{self.twilio_account_sid}:{self.twilio_auth_token}".encode()).decode()
        if auth != expected:
            return self._twilio_error(401, 20003, "Authenticate")
        if m.group(1) != self.twilio_account_sid:
            return self._twilio_error(404, 20404, f"The requested resource {path} was not found")
        if h.command == "POST":
            return self._twilio_create(path, form if isinstance(form, dict) else {}, params)
        if h.command == "GET":
            return self._twilio_list(path, query, params)
        return self._twilio_error(405, 20004, "Method not allowed")

    def _spec_error(self, method: str, params: dict[str, list[str]]) -> _Reply | None:
        violations = _against_twilio_spec(_TWILIO_SPECS[method], params)
        return self._twilio_error(400, 20001, "Invalid parameters: " + "; ".join(violations)) if violations else None

    def _twilio_create(self, path: str, form: dict[str, str], params: dict[str, list[str]]) -> _Reply:
        to = form.get("To", "")
        sender = form.get("From")
        service = form.get("MessagingServiceSid")
        text = form.get("Body", "")
        if not to:
            return self._twilio_error(400, 21604, "A 'To' phone number is required.")
        if not (sender or service):
            return self._twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message.")
        if not text and not form.get("MediaUrl"):
            return self._twilio_error(400, 21602, "Message body is required.")
        if not re.fullmatch(r"\+[1-9]\d{6,14}", to):
            return self._twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if len(text) > 1600:
            return self._twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        refused = self._spec_error("POST", params)
        if refused is not None:
            return refused
        if self.twilio_smart_encoding and form.get("SmartEncoded", "").lower() != "false":
            text = text.translate(SMART_ENCODING)
        if self.twilio_footer:
            text += self.twilio_footer
        now = self.clock().replace(microsecond=0)
        sid = "SM" + secrets.token_hex(16)
        base = path[: -len(".json")]
        message = {
            "account_sid": self.twilio_account_sid,
            "api_version": "2010-04-01",
            "body": text,
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,  # null until the Messaging Service picks a number
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(_segments(text)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if sender else "accepted",
            "subresource_uris": {"media": f"{base}/{sid}/Media.json"},
            "to": to,
            "uri": f"{base}/{sid}.json",
        }
        record = {**message, "created_at": now}
        with self._lock:
            self._accepted["twilio"].append(record)
        self._accepted_here.record = record
        return _json_reply(201, message)

    def _twilio_listed(self, record: dict[str, Any]) -> dict[str, Any]:
        message = {k: v for k, v in record.items() if k != "created_at"}
        if self.twilio_sent_on_accept:
            message["date_sent"] = message["date_created"]
            message["status"] = "sent"
        return message

    @staticmethod
    def _parse_filter_date(value: str, end_of_day: bool) -> datetime | None:
        """Twilio documents YYYY-MM-DD; the SDK sends YYYY-MM-DDTHH:MM:SSZ. Accept both."""
        try:
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            pass
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=timezone.utc)

    def _twilio_list(self, path: str, query: dict[str, str], params: dict[str, list[str]]) -> _Reply:
        refused = self._spec_error("GET", params)
        if refused is not None:
            return refused
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
        except ValueError:
            return self._twilio_error(400, 20001, "Invalid paging parameter")
        bounds: dict[str, datetime] = {}
        for key in ("DateSent", "DateSent>", "DateSent<"):
            if key in query:
                parsed = self._parse_filter_date(query[key], end_of_day=key == "DateSent<")
                if parsed is None:
                    return self._twilio_error(400, 20001, f"Invalid {key}: {query[key]}")
                bounds[key] = parsed
        shown_until = self.clock() - timedelta(seconds=self.twilio_list_lag)
        with self._lock:
            created = [r for r in self._accepted["twilio"] if r["created_at"] <= shown_until]
            records = [self._twilio_listed(r) for r in created]
            sent_at = {m["sid"]: r["created_at"] for m, r in zip(records, created)}

        def keep(msg: dict[str, Any]) -> bool:
            if "To" in query and msg["to"] != query["To"]:
                return False
            if "From" in query and msg["from"] != query["From"]:
                return False
            if bounds:
                if msg["date_sent"] is None:  # not sent yet: no DateSent filter matches
                    return False
                when = sent_at[msg["sid"]]
                if "DateSent>" in bounds and when < bounds["DateSent>"]:
                    return False
                if "DateSent<" in bounds and when > bounds["DateSent<"]:
                    return False
                if "DateSent" in bounds and when.date() != bounds["DateSent"].date():
                    return False
            return True

        # Newest first; messages not yet sent (date_sent null) before the sent ones.
        matching = [m for m in reversed(records) if keep(m)]
        matching.sort(key=lambda m: m["date_sent"] is not None)
        chunk = matching[page * page_size : (page + 1) * page_size]
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def page_uri(n: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': page_size, 'Page': n})}"

        has_next = (page + 1) * page_size < len(matching)
        payload = {
            "end": page * page_size + max(len(chunk) - 1, 0),
            "first_page_uri": page_uri(0),
            "messages": chunk,
            "next_page_uri": page_uri(page + 1) + f"&PageToken=PA{chunk[-1]['sid']}" if has_next else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": page * page_size,
            "uri": page_uri(page),
        }
        return _json_reply(200, payload)


# SendGrid validates each body against its published Mail Send spec and answers 400 with one error
# per field; the fake does the same, so a body the real API would refuse cannot pass a test.
_MAIL_SEND = Draft202012Validator(
    json.loads((Path(__file__).parent.parent / "contracts" / "sendgrid_mail_send.schema.json").read_text()))


def _against_the_spec(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(error.message, ".".join(str(part) for part in error.absolute_path) or None)
            for error in _MAIL_SEND.iter_errors(body)]


# LINE's push, checked against PushMessageRequest of LINE's published OpenAPI document
# (tests/contracts/README.md). A push that breaks it gets LINE's 400, one detail per violation.
LINE_PUSH = "/v2/bot/message/push"
_LINE_PUSH_SPEC = Draft202012Validator(
    json.loads((Path(__file__).parent.parent / "contracts" / "line_push_message.schema.json").read_text()))


def _against_line_spec(body: dict[str, Any]) -> list[dict[str, str]]:
    # LINE names a property the way its own errors do: messages[0].text
    def where(path: Any) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return [{"message": error.message, "property": where(error.absolute_path)}
            for error in _LINE_PUSH_SPEC.iter_errors(body)]


def _is_uuid(value: str) -> bool:
    # The header's schema is a string of format uuid: 8-4-4-4-12 hexadecimal digits.
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value))


# Twilio's create and list, checked against the request schemas extracted from its published
# OpenAPI document (tests/contracts/README.md). A request that breaks one gets a 400, so the send
# or lookup that made it fails in whichever test made it.
_TWILIO_FORMATS = FormatChecker(formats=())


@_TWILIO_FORMATS.checks("phone-number")
def _phone_number(value: object) -> bool:
    # Twilio's "phone-number" also takes a channel address (whatsapp:+1...) and, for From, an
    # alphanumeric sender ID.
    return not isinstance(value, str) or bool(
        re.fullmatch(r"\+[1-9]\d{1,14}|[a-z-]+:\S+|(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}", value))


@_TWILIO_FORMATS.checks("uri")
def _uri(value: object) -> bool:
    # StatusCallback: "URL must contain a valid hostname and underscores are not allowed."
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "_" not in (parts.hostname or "")


def _twilio_spec(name: str) -> Draft202012Validator:
    schema = json.loads((Path(__file__).parent.parent / "contracts" / name).read_text())
    # date-time is left unchecked: Twilio's own examples for DateSent> include "2008-01-02" and
    # "06/11/2019 22:05:25 MST"; the fake's list parses the shapes it knows.
    return Draft202012Validator(schema, format_checker=_TWILIO_FORMATS)


_TWILIO_SPECS = {"POST": _twilio_spec("twilio_create_message.schema.json"),
                 "GET": _twilio_spec("twilio_list_messages.schema.json")}


def _typed(value: str, schema: dict[str, Any]) -> Any:
    """A form or query value as the JSON type its property names; unchanged (so refused) if it
    is not one. Booleans go as true/false, the way the SDK writes them."""
    kind = schema.get("type")
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _against_twilio_spec(spec: Draft202012Validator, params: dict[str, list[str]]) -> list[str]:
    properties = spec.schema["properties"]
    document: dict[str, Any] = {}
    for name, values in params.items():
        prop = properties.get(name, {})
        if prop.get("type") == "array":
            document[name] = [_typed(v, prop.get("items", {})) for v in values]
        elif len(values) == 1:
            document[name] = _typed(values[0], prop)
        else:
            document[name] = values  # a single-valued parameter given twice
    return [f"{'.'.join(str(p) for p in error.absolute_path) or 'request'}: {error.message}"
            for error in spec.iter_errors(document)]
