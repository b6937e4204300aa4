"""The channels Keepflow sends on, by name. The send activity, the rules, erasure and the
dashboard ask a channel for what differs (its address, consent, provider, lost answers) instead of
comparing names. A new channel: its facts in keepflow/language/channels.py, a module here,
and its templates."""

from __future__ import annotations

from typing import Any

from keepflow.language.channels import ChannelName
from keepflow.sending.channels.base import Channel, Draft, Outgoing
from keepflow.sending.channels.email import Email
from keepflow.sending.channels.line import Line
from keepflow.sending.channels.sms import Sms
from keepflow.sending.contacts import InvalidContact

__all__ = ["CHANNELS", "Channel", "ChannelName", "Draft", "Outgoing", "channel", "normalize_address"]

CHANNELS: dict[str, Channel[Any]] = {c.name: c for c in (Email(), Sms(), Line())}


def channel(name: str) -> Channel[Any]:
    """The channel called `name`; KeyError if there is none."""
    return CHANNELS[name]


def normalize_address(name: str, value: str) -> str:
    """Best-effort normal form for lookups; an unparseable value is compared as given (trimmed)."""
    try:
        return channel(name).normalize(value)
    except InvalidContact:
        return value.strip().lower()
