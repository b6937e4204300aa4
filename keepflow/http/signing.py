"""Standard Webhooks signatures (https://www.standardwebhooks.com): verify with rotation, sign for tests.

Secrets are in the spec's `whsec_<base64>` form. During a rotation the receiver accepts several
secrets and a sender may put several signatures in one `webhook-signature` header; a request
passes if any signature matches any secret. The library checks the timestamp (5 minutes either
way) and compares in constant time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone

from standardwebhooks import Webhook


def verify(body: bytes, headers: Mapping[str, str], secrets: list[str]) -> bool:
    wanted = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature") if k in headers}
    for secret in secrets:
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
            return True
        except Exception:  # bad signature, stale timestamp, malformed header or body: all a 401
            continue
    return False


def sign(body: bytes, secret: str, message_id: str | None = None, at: datetime | None = None) -> dict[str, str]:
    """The three headers a sender adds to `body`."""
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(message_id, at, body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}
