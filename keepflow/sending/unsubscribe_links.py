"""Unsubscribe links that cannot be forged or read: the token in `/unsubscribe/<token>` says who,
where and from what, encrypted so only Keepflow can write or read it.

A token is a Fernet token (AES-128-CBC with HMAC-SHA256, from `cryptography`) over compact JSON
(customer id, channel, normalised address, scope). Nobody holding the link, a mail scanner or a
forwarded email, learns the address from it, and changing any byte makes it invalid.

Tokens are valid for `LIFETIME` (a year) from when the message was sent: CAN-SPAM wants the link
to work for at least 30 days, and customers do open year-old emails. Rotation: the first secret in
`KEEPFLOW_UNSUBSCRIBE_SECRET` encrypts, every listed secret decrypts (`MultiFernet`), so a link
keeps working until its secret is dropped from the list; drop an old secret a year after it
stopped encrypting. Each secret is stretched into a Fernet key with HKDF, so any long random
string works as a secret.

Links made before tokens were encrypted (`<payload>.<key id>.<mac>`, the address readable in
base64, no expiry) are still accepted while the secret that signed them is listed (or, for links
signed with a key derived from the webhook secret, while that webhook secret is): they are already
in customers' inboxes, and refusing them would leave people unable to unsubscribe. They stop
working when that secret is rotated out.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, MultiFernet
from cryptography.fernet import InvalidToken as FernetInvalid
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keepflow.language.channels import ChannelName
from keepflow.sending.channels import normalize_address
from keepflow.settings import Settings, dev_secret

LIFETIME = timedelta(days=365)

# Domain separation: a secret stretched for tokens, for the page's CSRF tokens, and (legacy) for
# MACs can never be replayed as one of the others.
_TOKEN_INFO = b"keepflow/sending/unsubscribe_links/fernet/v2"
_CSRF_INFO = b"keepflow/sending/unsubscribe_links/csrf/v1"
_DERIVE_LABEL = b"keepflow/sending/unsubscribe_links/derived-secret/v1"
_KID_LABEL = b"keepflow/sending/unsubscribe_links/key-id/v1"
_MAC_LABEL = b"keepflow/sending/unsubscribe_links/token/v1."

_SCOPE = r"^(marketing|group:[a-z][a-z0-9_]*)$"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,2048}")
_LEGACY_PART = re.compile(r"[A-Za-z0-9_-]{1,2048}")


class InvalidToken(ValueError):
    """The link was not made by Keepflow with a configured secret, was changed since, or expired."""


class UnsubscribeToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128)
    channel: ChannelName
    address: str = Field(min_length=1, max_length=320)
    scope: str = Field(pattern=_SCOPE, max_length=140)


@functools.lru_cache(maxsize=8)
def _fernet(secrets: tuple[str, ...], info: bytes) -> MultiFernet:
    # Cached: every marketing email encrypts a link.
    keys = [HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(s.encode()) for s in secrets]
    return MultiFernet([Fernet(base64.urlsafe_b64encode(k)) for k in keys])


def _tokens(settings: Settings) -> MultiFernet:
    return _fernet(tuple(settings.unsubscribe_secrets), _TOKEN_INFO)


def _csrf(settings: Settings) -> MultiFernet:
    return _fernet(tuple(settings.unsubscribe_secrets), _CSRF_INFO)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_for(settings: Settings, *, customer_id: str, channel: str, address: str, scope: str = "marketing",
              at: datetime | None = None) -> str:
    """A new token each call (Fernet draws a fresh IV), valid for LIFETIME from `at` (default now)."""
    fields = UnsubscribeToken(customer_id=customer_id, channel=channel, address=normalize_address(channel, address),
                              scope=scope)
    body = {"c": fields.customer_id, "ch": fields.channel, "a": fields.address, "s": fields.scope}
    data = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    when = int(at.timestamp()) if at else int(time.time())
    # Fernet's own base64url with the padding dropped: `=` has no business in a URL path.
    return _tokens(settings).encrypt_at_time(data, when).decode("ascii").rstrip("=")


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


def verify(settings: Settings, token: str, at: datetime | None = None) -> UnsubscribeToken:
    if token.count(".") == 2:
        return _verify_legacy(settings, token)
    if not _TOKEN.fullmatch(token):
        raise InvalidToken("not an unsubscribe token")
    tokens = _tokens(settings)
    now = int(at.timestamp()) if at else int(time.time())
    try:
        data = tokens.decrypt_at_time(_padded(token), int(LIFETIME.total_seconds()), now)
    except FernetInvalid:
        raise InvalidToken(_why_invalid(tokens, token, now)) from None
    try:
        body = json.loads(data)
        return UnsubscribeToken(customer_id=body["c"], channel=body["ch"], address=body["a"], scope=body["s"])
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        # Only a holder of the secret could get here, with contents this code never writes.
        raise InvalidToken("the unsubscribe link's contents are not valid") from err


def _padded(token: str) -> bytes:
    return (token + "=" * (-len(token) % 4)).encode("ascii")


def _why_invalid(tokens: MultiFernet, token: str, now: int) -> str:
    try:
        # Authenticated: only a token one of our keys made gets a timestamp back.
        made = tokens.extract_timestamp(_padded(token))
    except FernetInvalid:
        return "this unsubscribe link was not made with a key that is still accepted, or was changed"
    if made > now + 60:
        return "this unsubscribe link claims to be from the future"
    return f"this unsubscribe link expired (links are valid for {LIFETIME.days} days)"


def csrf_token(settings: Settings, token: str) -> str:
    """For the resubscribe form on the page that shows `token`: only that page can lift it."""
    return _csrf(settings).encrypt(_digest(token)).decode("ascii")


def csrf_matches(settings: Settings, token: str, csrf: str | None, max_age: timedelta) -> bool:
    if not csrf:
        return False
    try:
        return hmac.compare_digest(_csrf(settings).decrypt(csrf.encode("ascii"), int(max_age.total_seconds())),
                                   _digest(token))
    except (FernetInvalid, UnicodeEncodeError):
        return False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


# --- links made before tokens were encrypted ----------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    id: str
    secret: bytes


@functools.lru_cache(maxsize=8)
def _legacy_keys(unsubscribe_secrets: tuple[str, ...], webhook_secrets: tuple[str, ...]) -> tuple[_Key, ...]:
    # The old code signed with the unsubscribe secrets as given or, with none set, with a key derived
    # from the webhook secrets (or the dev secret).
    derived = [hmac.new(s.encode(), _DERIVE_LABEL, hashlib.sha256).digest() for s in webhook_secrets]
    secrets = [s.encode() for s in unsubscribe_secrets] + derived
    return tuple(_Key(_b64(hmac.new(s, _KID_LABEL, hashlib.sha256).digest()[:6]), s) for s in secrets)


def _legacy_mac(key: _Key, payload: str) -> str:
    return _b64(hmac.new(key.secret, _MAC_LABEL + f"{key.id}.{payload}".encode("ascii"), hashlib.sha256).digest())


def _verify_legacy(settings: Settings, token: str) -> UnsubscribeToken:
    parts = token.split(".")
    if not all(_LEGACY_PART.fullmatch(p) for p in parts):
        raise InvalidToken("not an unsubscribe token")
    payload, key_id, mac = parts
    webhook = settings.webhook_secrets or [dev_secret(settings.data_dir)]
    keys = [k for k in _legacy_keys(tuple(settings.unsubscribe_secrets), tuple(webhook))
            if hmac.compare_digest(k.id, key_id)]
    if not keys:
        raise InvalidToken("this unsubscribe link was signed with a key that is no longer accepted")
    # Every candidate is checked, whatever the first gives, so timing says nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_legacy_mac(key, payload).encode(), mac.encode())
    if not matched:
        raise InvalidToken("the unsubscribe link's signature does not match")
    try:
        body = json.loads(_unb64(payload))
        return UnsubscribeToken(customer_id=body["c"], channel=body["ch"], address=body["a"], scope=body["s"])
    except (binascii.Error, ValueError, KeyError, TypeError, ValidationError) as err:
        raise InvalidToken("the unsubscribe link's contents are not valid") from err
