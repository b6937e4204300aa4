"""LINE's webhook: who follows and who blocked the shop's official account.

    POST /webhooks/line   the Messaging API channel's webhook (LINE Developers console), JSON

Signed by LINE with X-Line-Signature (base64 HMAC-SHA256 of the body, keyed with the channel
secret) and checked by the SDK's own `WebhookParser`: a bad or missing signature, or no
LINE_CHANNEL_SECRET, is 401 and changes nothing. A signed body the parser cannot read, or a
follow or unfollow without a LINE user id, is 422, also changing nothing. `follow` and `unfollow`
change who may get LINE messages (keepflow/sending/line_friends.py says how); every other event
(messages, postbacks, joins, types newer than the SDK) is acknowledged with 200 and not kept.
Events in standby mode (another channel, such as a chat module, holds the conversation) count as
well: they still say who follows the account.
LINE's "Verify" button posts a body with no events: 200.

One POST is one transaction, its events applied in the order they happened. Each event's
`webhookEventId` is remembered, so LINE's redelivery of an event (`deliveryContext.isRedelivery`,
when redelivery is on for the channel) changes nothing twice.
https://developers.line.biz/en/reference/messaging-api/#webhooks
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhooks import FollowEvent, UnfollowEvent, UserSource
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError

from keepflow.http.services import Services, read_body, unprocessable
from keepflow.sending import delivery_events, line_friends
from keepflow.sending.contacts import normalize_line_user_id
from keepflow.settings import reveal
from keepflow.store import Database

log = logging.getLogger("keepflow.http.line")

SOURCE = "line"
PATH = "/webhooks/line"
SIGNATURE_HEADER = "X-Line-Signature"

router = APIRouter()


class Friendship(BaseModel):
    """A follow or unfollow, with what Keepflow uses of it."""

    change: Literal["follow", "unfollow"]
    user_id: str
    # Dedupe key; stored in deliveries.id (255 characters). LINE's are ULIDs.
    webhook_event_id: str = Field(min_length=1, max_length=200)
    # Unix milliseconds, when it happened; the year 9999 at most, as datetime can hold no later.
    timestamp: int = Field(ge=0, le=253402300799999)
    redelivery: bool = False

    @field_validator("user_id")
    @classmethod
    def _line_user_id(cls, value: str) -> str:
        return normalize_line_user_id(value)

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, timezone.utc)


class Received(BaseModel):
    received: int
    recorded: int
    duplicates: int
    # Older than a follow or unfollow already recorded for that user: changed nothing.
    outdated: int
    ignored: int


@router.post(PATH, response_model=Received, responses={401: {}, 413: {}, 422: {}})
async def post_line(request: Request) -> Received:
    """LINE's webhook, verified with `X-Line-Signature`."""
    services: Services = request.app.state.services
    body = await read_body(request, services.settings.max_body_bytes)
    secret = reveal(services.settings.line_channel_secret)
    if not secret:
        raise HTTPException(401, "LINE webhooks are refused: no LINE_CHANNEL_SECRET is set")
    events = parse(body, request.headers.get(SIGNATURE_HEADER), secret)
    changes = friendships(events)
    outcomes = await asyncio.to_thread(_once, services.db, changes)
    return Received(received=len(events), recorded=outcomes.count("recorded"), duplicates=outcomes.count("duplicate"),
                    outdated=outcomes.count("outdated"), ignored=len(events) - len(changes))


def parse(body: bytes, signature: str | None, secret: str) -> list[Any]:
    """The events, if LINE signed exactly these bytes; else 401, or 422 for a signed body that is not LINE's."""
    if not signature:
        raise HTTPException(401, f"missing {SIGNATURE_HEADER}")
    try:
        # The parser takes text and signs it re-encoded as UTF-8; strict decoding makes that the
        # very bytes received. A body that is not UTF-8 cannot be what LINE signed.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(401, "bad signature") from None
    try:
        return list(WebhookParser(secret).parse(text, signature))
    except InvalidSignatureError:
        raise HTTPException(401, "bad signature") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        # The SDK reads the body as it comes: not JSON, no `events`, an event without LINE's
        # common fields (an event of an unknown type with them is kept as UnknownEvent).
        raise unprocessable(ValueError(f"not a LINE webhook body: {type(err).__name__}: {err}"[:500])) from None


def friendships(events: list[Any]) -> list[Friendship]:
    """The follows and unfollows among `events`, checked, oldest first; 422 if one is not LINE's shape."""
    found = []
    for event in events:
        if getattr(event, "type", None) in ("follow", "unfollow") and not isinstance(event, FollowEvent | UnfollowEvent):
            # The SDK keeps a follow or unfollow it could not read as an unknown event: ignoring
            # it would lose an unfollow, so it is refused as any body that is not LINE's.
            raise unprocessable(ValueError(f"a {event.type} event without the fields LINE sends with it"))
        if not isinstance(event, FollowEvent | UnfollowEvent):
            continue
        source = event.source
        try:
            found.append(Friendship(
                change="follow" if isinstance(event, FollowEvent) else "unfollow",
                # Follows and unfollows come from users only; anything else has no user id here.
                user_id=source.user_id if isinstance(source, UserSource) and source.user_id else "",
                webhook_event_id=event.webhook_event_id, timestamp=event.timestamp,
                redelivery=bool(event.delivery_context and event.delivery_context.is_redelivery)))
        except ValidationError as err:
            raise unprocessable(err) from err
    return sorted(found, key=lambda f: f.timestamp)


def apply_all(db: Database, changes: list[Friendship]) -> list[str]:
    """Apply each in one transaction: recorded, duplicate (this webhookEventId was seen) or outdated."""
    outcomes = []
    with db.session() as session:
        for change in changes:
            if delivery_events.seen_before(session, SOURCE, change.webhook_event_id):
                outcomes.append("duplicate")
                continue
            detail = f"{change.change} at {change.occurred_at:%Y-%m-%d %H:%M:%S} UTC ({change.webhook_event_id})"
            applied = line_friends.apply(session, change.change, change.user_id, change.occurred_at, detail)
            outcomes.append("recorded" if applied else "outdated")
    for change, outcome in zip(changes, outcomes, strict=True):
        if outcome == "recorded":
            log.info("LINE %s (%s%s)", change.change, change.webhook_event_id, ", a redelivery" if change.redelivery else "")
    return outcomes


# Each lost race means another copy committed: the next pass finds more of the events recorded.
PASSES = 5


def _once(db: Database, changes: list[Friendship]) -> list[str]:
    """A concurrent copy of the same body loses the race on the deliveries key (or a new friend's
    row) and is rolled back whole; a later pass finds the winner's events recorded."""
    for _ in range(PASSES - 1):
        try:
            return apply_all(db, changes)
        except IntegrityError:
            continue
    return apply_all(db, changes)
