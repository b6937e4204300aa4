"""Unsubscribe links that cannot be forged: the token in `/unsubscribe/<token>` says who, where and
from what, and is signed so only Keepflow could have written it.

A token is `<payload>.<key id>.<mac>`: the payload is base64url JSON (customer id, channel,
normalised address, scope), the MAC is HMAC-SHA256 over the key id and the payload. Changing any
byte of either breaks the MAC, so a link cannot be turned against another customer or address.

Tokens never expire: a customer may unsubscribe from an email that is years old (CAN-SPAM and
RFC 8058 expect the link to keep working). Rotation is by key: the first secret in
`KEEPFLOW_UNSUBSCRIBE_SECRET` signs, every listed secret verifies, and the key id picks the one to
try. With no secret configured one is derived from the webhook secret, so `make run` needs no setup.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keepflow.sending.contacts import normalize_address
from keepflow.settings import Settings, dev_secret

# Separate labels keep these keys apart from every other use of the same secret: a webhook secret
# turned into an unsubscribe key, or an unsubscribe MAC, can never be replayed as the other.
_DERIVE_LABEL = b"keepflow/sending/unsubscribe_links/derived-secret/v1"
_KID_LABEL = b"keepflow/sending/unsubscribe_links/key-id/v1"
_MAC_LABEL = b"keepflow/sending/unsubscribe_links/token/v1."

_SCOPE = r"^(marketing|group:[a-z][a-z0-9_]*)$"
_TOKEN_PART = re.compile(r"[A-Za-z0-9_-]{1,2048}")


class InvalidToken(ValueError):
    """The link was not made by Keepflow with a configured secret, or was changed since."""


class UnsubscribeToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128)
    channel: Literal["email", "sms"]
    address: str = Field(min_length=1, max_length=320)
    scope: str = Field(pattern=_SCOPE, max_length=140)
    # Which secret signed it: shows, during a rotation, whether a link still depends on the old one.
    key_id: str = ""


@dataclass(frozen=True)
class _Key:
    id: str
    secret: bytes


def _keys(settings: Settings) -> tuple[_Key, ...]:
    """Signing key first, then every key that still verifies."""
    return _derive_keys(settings.unsubscribe_secret, tuple(settings.webhook_secrets), settings.data_dir)


@functools.lru_cache(maxsize=8)
def _derive_keys(unsubscribe_secret: str | None, webhook_secrets: tuple[str, ...], data_dir: Path) -> tuple[_Key, ...]:
    # Cached: every marketing email signs a link, and the fallback reads the dev secret's file.
    configured = (unsubscribe_secret or "").replace(",", " ").split()
    if configured:
        secrets = [s.encode() for s in configured]
    else:
        # Same fallback as `keepflow dev`, so the worker and the web server agree on the secret.
        webhook = list(webhook_secrets) or [dev_secret(data_dir)]
        secrets = [hmac.new(s.encode(), _DERIVE_LABEL, hashlib.sha256).digest() for s in webhook]
    return tuple(_Key(_b64(hmac.new(s, _KID_LABEL, hashlib.sha256).digest()[:6]), s) for s in secrets)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: _Key, payload: str) -> str:
    return _b64(hmac.new(key.secret, _MAC_LABEL + f"{key.id}.{payload}".encode("ascii"), hashlib.sha256).digest())


def token_for(settings: Settings, *, customer_id: str, channel: str, address: str, scope: str = "marketing") -> str:
    """The same inputs give the same token: one per (customer, address, scope)."""
    fields = UnsubscribeToken(customer_id=customer_id, channel=channel, address=normalize_address(channel, address),
                              scope=scope)
    body = {"c": fields.customer_id, "ch": fields.channel, "a": fields.address, "s": fields.scope}
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode())
    key = _keys(settings)[0]
    return f"{payload}.{key.id}.{_mac(key, payload)}"


def link_for(settings: Settings, *, customer_id: str, channel: str, address: str, scope: str = "marketing") -> str:
    base = settings.public_url.rstrip("/") if settings.public_url else f"http://{settings.http_host}:{settings.http_port}"
    token = token_for(settings, customer_id=customer_id, channel=channel, address=address, scope=scope)
    return f"{base}/unsubscribe/{token}"


def headers_for(settings: Settings, url: str) -> dict[str, str]:
    """RFC 8058 §3.1: an HTTPS URI in List-Unsubscribe (a mailto may follow it) and, in
    List-Unsubscribe-Post, exactly `List-Unsubscribe=One-Click`."""
    targets = [f"<{url}>"]
    if settings.unsubscribe_mailto:
        targets.append(f"<mailto:{settings.unsubscribe_mailto}?subject=unsubscribe>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def verify(settings: Settings, token: str) -> UnsubscribeToken:
    parts = token.split(".")
    if len(parts) != 3 or not all(_TOKEN_PART.fullmatch(p) for p in parts):
        raise InvalidToken("not an unsubscribe token")
    payload, key_id, mac = parts
    keys = [k for k in _keys(settings) if hmac.compare_digest(k.id, key_id)]
    if not keys:
        raise InvalidToken("this unsubscribe link was signed with a key that is no longer accepted")
    # Every candidate is checked, whatever the first gives, so timing says nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_mac(key, payload).encode(), mac.encode())
    if not matched:
        raise InvalidToken("the unsubscribe link's signature does not match")
    try:
        body = json.loads(_unb64(payload))
        return UnsubscribeToken(customer_id=body["c"], channel=body["ch"], address=body["a"], scope=body["s"],
                                key_id=key_id)
    except (binascii.Error, ValueError, KeyError, TypeError, ValidationError) as err:
        # Only a holder of the secret could get here, with a payload this code never writes.
        raise InvalidToken("the unsubscribe link's contents are not valid") from err
