"""Who may be sent what, and when: one pure function decides each attempt at a send.

`send_message` claims the message row and reads the facts in one transaction (the stored
profile, any suppression of the address, the coupon offered), then asks `decide`. The rules, in
the order they are asked; the first that refuses says why:

1. superseded: an event the step names in `superseded_by` reached the run first;
2. expired: the run's clock is past the step's `expires_after`;
3. an address to send to, and a valid one (flagged when stored, or checked here if it comes
   from the run alone);
4. no suppression of that address for this category and unsubscribe group;
5. marketing has the customer's consent for the channel;
6. the coupon the message offers is not redeemed or expired;
7. quiet hours in the customer's time zone (or every fallback zone), where they apply.

A step with `fallback:` is asked about twice when it must: `choose` asks the rules for the step's
own channel, and when they refuse because the customer cannot be reached there (rules 3 to 5: no
address, an invalid or suppressed one, no consent), asks them again for the fallback, whose own
quiet hours and cap then apply. A refusal for any other reason (superseded, expired, the coupon)
would be the same on any channel, so it does not fall back.

Then the message goes, after taking a slot under the frequency cap if it counts (`over_cap` says
what happens when there is none: taking the slot is atomic, so the activity does it).

The policy (quiet hours, the cap, `on_cap`) is resolved here too, from the run's definition: the
workflow only passes the sequence's settings and the snapshot's rules. No I/O and no clock of
its own: everything arrives as arguments, so tests ask it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from keepflow.language.channels import ChannelName
from keepflow.language.dsl import Cap
from keepflow.runtime.payloads import SendPolicy, SendRequest
from keepflow.sending import channels, contacts, frequency_cap, quiet_hours


@dataclass(frozen=True)
class OfferedCoupon:
    code: str
    redeemed: bool
    # None while its days wait for the first message offering it (they start when that goes out).
    expires_at: datetime | None


@dataclass(frozen=True)
class Facts:
    """What the rules read of the store, read once per attempt."""

    # Where the message would go: the stored profile's address, else the one in the run's context.
    recipient: str | None = None
    # The recipient is the stored address, which was checked (and normalised) when it was stored.
    recipient_checked: bool = False
    address_problem: str | None = None  # why the stored address cannot be used
    suppression: tuple[str, str] | None = None  # (reason, source) of one that forbids this send
    consents: Mapping[str, bool] = field(default_factory=dict)  # the stored profile's, else the run's
    timezone: str | None = None
    coupon: OfferedCoupon | None = None  # the coupon offered, when the step offers one and it exists
    # An earlier attempt got as far as the provider call: finish it, never hold it again.
    resumed: bool = False


@dataclass(frozen=True)
class Send:
    cap: Cap | None = None  # take a slot under this cap first
    on_cap: Literal["defer", "skip"] = "defer"
    unsubscribe: bool = False  # one-click unsubscribe in the headers and the footer


@dataclass(frozen=True)
class Skip:
    reason: str
    # Why the customer cannot be reached on this channel, in a marketer's words ("no LINE
    # account"), when that is the refusal: only such a skip gives way to a step's `fallback:`.
    unreachable: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Defer:
    until: datetime  # on the run's clock
    reason: str


Decision = Send | Skip | Defer


@dataclass(frozen=True)
class Chosen:
    """The channel a message goes on, and what the rules say there."""

    channel: ChannelName
    decision: Decision
    # Set when it goes on the step's `fallback:`: why not on the step's own channel.
    fallback_because: str | None = None


def choose(request: SendRequest, facts: Mapping[str, Facts], now: datetime) -> Chosen:
    """The step's channel, or its `fallback:` when the customer cannot be reached on the step's.
    `facts` holds each channel's (the step's, and the fallback's when it has one)."""
    decision = decide(request, facts[request.channel], now)
    if request.fallback is None or not isinstance(decision, Skip) or decision.unreachable is None:
        return Chosen(request.channel, decision)
    second = decide(on_channel(request, request.fallback), facts[request.fallback], now)
    if isinstance(second, Skip):
        # Reachable on neither: the message stays the step's, and says why not on either.
        return Chosen(request.channel, Skip(f"{decision.reason}; fallback {request.fallback}: {second.reason}"))
    return Chosen(request.fallback, second, fallback_because=decision.unreachable)


def on_channel(request: SendRequest, channel: ChannelName) -> SendRequest:
    """The request as it is sent on `channel`, with no fallback left: the rules, the cap,
    rendering and the provider read the channel from it."""
    if channel == request.channel and request.fallback is None:
        return request
    return request.model_copy(update={"channel": channel, "fallback": None})


def decide(request: SendRequest, facts: Facts, now: datetime) -> Decision:
    """May this message go at `now` (the run's clock), and on what terms."""
    channel = request.channel
    on = channels.channel(channel).facts
    if request.drop:
        return Skip(request.drop)
    if request.expires_at is not None and now > request.expires_at:
        return Skip(f"expired: not sent by {request.expires_at:%Y-%m-%d %H:%M} UTC")
    if not facts.recipient:
        return Skip(f"customer has no {channel} address", unreachable=f"no {on.address_noun}")
    problem = facts.address_problem or (None if facts.recipient_checked else _invalid(channel, facts.recipient))
    if problem:
        return Skip(f"invalid {channel} address: {problem}", unreachable=f"invalid {on.address_noun}")
    if facts.suppression is not None:
        reason, source = facts.suppression
        return Skip(f"suppressed: {reason} ({source})", unreachable=f"{on.address_noun} suppressed")
    if request.category == "marketing" and not facts.consents.get(on.consent_key):
        return Skip(f"no {channel} marketing consent", unreachable=f"no {on.label} marketing consent")
    if request.coupon:
        gone = coupon_refusal(request.coupon, facts.coupon, now)
        if gone:
            return Skip(gone)
    rules = policy(request)
    unsubscribe = request.category == "marketing" and channels.channel(channel).facts.unsubscribe_link and rules is not None
    if rules is None or facts.resumed:
        return Send(unsubscribe=unsubscribe)
    if rules.quiet_hours is not None and channel in rules.quiet_hours.channels:
        zones = quiet_hours.zones_for(facts.timezone, rules.fallback_timezones)
        allowed = quiet_hours.next_allowed(now, zones, rules.quiet_hours)
        if allowed > now:
            return Defer(allowed, f"quiet hours until {allowed:%Y-%m-%d %H:%M} UTC")
    counted = rules.cap is not None and bool((request.context.get("customer") or {}).get("id"))
    return Send(cap=rules.cap if counted else None, on_cap=rules.on_cap, unsubscribe=unsubscribe)


def over_cap(send: Send, channel: str, free_at: datetime) -> Skip | Defer:
    """No slot under the cap until `free_at`: wait for it, or drop the message (`on_cap: skip`)."""
    assert send.cap is not None  # only a message that counts meets the cap
    why = f"frequency cap ({frequency_cap.window_text(send.cap, channel)})"
    if send.on_cap == "skip":
        return Skip(why)
    return Defer(free_at, f"{why} until {free_at:%Y-%m-%d %H:%M} UTC")


def coupon_refusal(name: str, coupon: OfferedCoupon | None, now: datetime) -> str | None:
    """Why a message offering this coupon must not go, or None."""
    if coupon is None:
        return f"coupon {name!r} not found"
    if coupon.redeemed:
        return f"coupon {coupon.code} already redeemed"
    if coupon.expires_at is not None and coupon.expires_at <= now:
        return f"coupon {coupon.code} expired"
    return None


def policy(request: SendRequest) -> SendPolicy | None:
    """The quiet hours and cap that apply to this send, from the run's definition."""
    terms = request.terms
    if terms is None:
        return request.policy  # asked for by a run from before the policy was resolved here
    rules = terms.rules
    if request.category != "marketing":
        # Transactional messages are never capped; they keep quiet hours only where their
        # sequence asks for them (a shipping text need not arrive at 2 a.m.).
        if terms.quiet_hours is None:
            return None
        return SendPolicy(group=terms.group, quiet_hours=terms.quiet_hours, fallback_timezones=rules.fallback_timezones)
    return SendPolicy(group=terms.group, quiet_hours=terms.quiet_hours or rules.quiet_hours,
                      fallback_timezones=rules.fallback_timezones, cap=rules.frequency_cap.get(request.channel),
                      on_cap=terms.on_cap)


def unsubscribe_group(request: SendRequest) -> str:
    """The group whose unsubscribes stop this message (marketing only)."""
    if request.terms is not None:
        return request.terms.group
    return request.policy.group if request.policy is not None else request.sequence_id


def sendgrid_group_id(request: SendRequest, default: int | None) -> int | None:
    """SendGrid's unsubscribe group (asm.group_id) for this email: marketing only, its unsubscribe
    group's own from `rules.sendgrid_unsubscribe_groups`, else `default`."""
    if request.category != "marketing":
        return None
    if request.terms is None:  # a run from before the terms: it knew only the default
        return default
    return request.terms.rules.sendgrid_unsubscribe_groups.get(request.terms.group, default)


def _invalid(channel: str, address: str) -> str | None:
    try:
        channels.channel(channel).normalize(address)
    except contacts.InvalidContact as err:
        return str(err)
    return None
