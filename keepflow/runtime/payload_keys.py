"""The keys of the payload codec: KEEPFLOW_PAYLOAD_KEYS read, new entries made, the dev key kept.

An entry is `id:base64key` (a 256-bit AES key). Several entries, space or comma separated, make a
rotation possible: the first seals new payloads, every one of them opens old ones. To rotate, put
a new entry (`keepflow keys new`) first and keep the old one after it until no open run or
retained history needs it.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import date
from pathlib import Path

KEY_BYTES = 32  # AES-256
# Ids travel in every payload's metadata and name the key in errors: keep them short and plain.
ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadKeyError(ValueError):
    """KEEPFLOW_PAYLOAD_KEYS cannot be used; the message names the entry, never the key itself."""


@dataclass(frozen=True)
class PayloadKey:
    id: str
    secret: bytes

    def __repr__(self) -> str:  # a key must not end up in a log line or a traceback
        return f"PayloadKey(id={self.id!r})"


def parse_payload_keys(text: str) -> list[PayloadKey]:
    keys: list[PayloadKey] = []
    for n, item in enumerate(text.replace(",", " ").split(), start=1):
        key_id, sep, encoded = item.partition(":")
        if not sep or not ID.fullmatch(key_id):
            raise PayloadKeyError(f"KEEPFLOW_PAYLOAD_KEYS entry {n}: expected id:base64key "
                                  "(id of letters, digits, '.', '_' or '-')")
        try:
            secret = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadKeyError(f"KEEPFLOW_PAYLOAD_KEYS key {key_id}: not base64") from None
        if len(secret) != KEY_BYTES:
            raise PayloadKeyError(f"KEEPFLOW_PAYLOAD_KEYS key {key_id}: {len(secret)} bytes, an AES-256 key is "
                                  f"{KEY_BYTES} bytes (`keepflow keys new` makes one)")
        if any(k.id == key_id for k in keys):
            raise PayloadKeyError(f"KEEPFLOW_PAYLOAD_KEYS: {key_id} appears twice; every key needs its own id")
        keys.append(PayloadKey(key_id, secret))
    if not keys:
        raise PayloadKeyError("KEEPFLOW_PAYLOAD_KEYS has no key (`keepflow keys new` makes one)")
    return keys


def new_payload_key(today: date | None = None) -> str:
    """A fresh `id:base64key` entry; the id starts with the day it was made, so the older of two is plain."""
    key_id = f"{(today or date.today()):%Y%m%d}-{secrets.token_hex(3)}"
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def dev_payload_keys(data_dir: Path) -> str:
    """The key `keepflow dev` seals payloads with when none is configured, kept so a restart can
    still read the runs it started before."""
    path = data_dir / "payload-keys"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # private before the key is in it
        path.chmod(0o600)
        path.write_text(new_payload_key() + "\n")
    return path.read_text().strip()
