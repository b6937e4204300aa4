"""Development providers: accept everything and write it to `<directory>/outbox.jsonl`.

Used when no SendGrid/Twilio credentials are configured, so `keepflow dev` works offline and
you can read what would have been sent. Each line is one JSON object with a `channel` field.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from keepflow.sending.providers.base import Accepted, LineText, OutgoingEmail, OutgoingLine, OutgoingSms
from keepflow.settings import private_dir

NAME = "outbox"
FILENAME = "outbox.jsonl"

log = logging.getLogger("keepflow.outbox")

# One lock per file, shared by OutboxEmail and OutboxSms writing to the same directory, so
# lines from concurrent activities never interleave.
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


class _Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(Path(directory))
        self.path = self.directory / FILENAME
        self._lock = _lock_for(self.path.resolve())

    def _append(self, channel: str, fields: dict[str, Any]) -> Accepted:
        accepted = Accepted(NAME, f"outbox-{uuid.uuid4().hex}")
        record = {
            "channel": channel,
            "provider_message_id": accepted.provider_message_id,
            "at": datetime.now(timezone.utc).isoformat(),
            **fields,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # 0600 from the first byte: the file holds customers' addresses and messages.
        with self._lock, os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                                   encoding="utf-8") as f:
            f.write(line)
        return accepted

    def _records(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return []
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a torn line from a crash mid-write
                continue
        return records


class OutboxEmail(_Outbox):
    """`EmailProvider` that writes to the outbox file."""

    name = NAME

    def send_email(self, msg: OutgoingEmail) -> Accepted:
        fields = asdict(msg)
        fields["from"] = fields.pop("from_")
        accepted = self._append("email", fields)
        log.info("email to %s: %r (%s) -> %s", msg.to, msg.subject, accepted.provider_message_id, self.path)
        return accepted


class OutboxLine(_Outbox):
    """A LINE provider that writes to the outbox file. Like LINE with its retry key, a second
    attempt of one message is the first one's acceptance, not a second line."""

    name = NAME

    def send_line(self, msg: OutgoingLine) -> Accepted:
        with self._lock:
            earlier = self._find(msg.key)
        if earlier is not None:
            return earlier
        message = msg.message
        fields = {"to": msg.to, "key": msg.key,
                  **({"text": message.text} if isinstance(message, LineText)
                     else {"alt_text": message.alt_text, "flex": dict(message.contents)})}
        accepted = self._append("line", fields)
        log.info("LINE message to %s (%s) -> %s", msg.to, accepted.provider_message_id, self.path)
        return accepted

    def _find(self, key: str) -> Accepted | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("channel") == "line" and record.get("key") == key:
                return Accepted(NAME, record.get("provider_message_id"))
        return None


class OutboxSms(_Outbox):
    """`SmsProvider` that writes to the outbox file."""

    name = NAME

    def send_sms(self, msg: OutgoingSms) -> Accepted:
        accepted = self._append("sms", asdict(msg))
        log.info("sms to %s: %r (%s) -> %s", msg.to, msg.body, accepted.provider_message_id, self.path)
        return accepted

    def find_sent(self, msg: OutgoingSms, since: datetime) -> Accepted | None:
        """The outbox knows the idempotency key, so it matches on that (and ignores `since`)."""
        for record in reversed(self._records()):
            if record.get("channel") == "sms" and record.get("key") == msg.key:
                return Accepted(NAME, record.get("provider_message_id"))
        return None
