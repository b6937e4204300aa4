"""What a channel is to the sending code: the part of a message's journey that differs per channel.

Each channel wraps its provider (keepflow/sending/providers) and stands on its entry in
keepflow/language/channels.py, which holds the plain facts the lower layers need too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from keepflow.language.channels import ChannelFacts, ChannelName
from keepflow.language.rendering import Rendered
from keepflow.sending.providers import Accepted, PermanentError
from keepflow.settings import Settings

Provider = TypeVar("Provider")


@dataclass(frozen=True)
class Draft:
    """A rendered message and what its provider may be told of it, before it is a channel's own."""
    key: str  # the message's key (workflow id and step), one per send
    recipient: str
    rendered: Rendered
    # The brand's name from the run's context, as the sender's display name where one is shown.
    brand_name: Any = None
    unsubscribe_url: str | None = None
    unsubscribe_headers: dict[str, str] = field(default_factory=dict)  # RFC 8058, with the link
    # Tags the provider reports back with its events, so feedback finds its message.
    categories: tuple[str, ...] = ()
    custom_args: dict[str, str] = field(default_factory=dict)
    unsubscribe_group_id: int | None = None
    # The first marketing message to this address: where the channel's rules ask for it, it says
    # how to opt out.
    first_marketing: bool = False


@dataclass(frozen=True)
class Outgoing:
    """A message as its provider will get it, and the one call that hands it over."""
    provider: str
    recipient: str
    rendered: Rendered  # as it goes out: the row keeps it, and a lookup matches on it
    call: Callable[[], Accepted]
    # Asks the provider whether it took this message at or after a time (an earlier attempt whose
    # answer was lost); None where the provider cannot be asked.
    find_sent: Callable[[datetime], Accepted | None] | None = None


class Channel(ABC, Generic[Provider]):
    facts: ClassVar[ChannelFacts]
    # After a lost answer, whether the provider can be asked if it took the message. If not, the
    # message is at-most-once: its row becomes `unknown` and it is never resent.
    finds_earlier_attempts: ClassVar[bool] = False

    @property
    def name(self) -> ChannelName:
        return self.facts.name

    @property
    def address_field(self) -> str:
        return self.facts.address_field

    @property
    def consent_key(self) -> str:
        return self.facts.consent_key

    @property
    def template_extension(self) -> str:
        return self.facts.template_extension

    @abstractmethod
    def normalize(self, address: str) -> str:
        """The address as it is stored and compared; InvalidContact if it is not one."""

    @abstractmethod
    def outgoing(self, provider: Provider, settings: Settings, draft: Draft) -> Outgoing:
        """The draft as this channel's provider takes it."""

    def first_marketing_says_how_to_stop(self, settings: Settings) -> bool:
        """Whether the first marketing message to an address says how to opt out (carrier rules):
        the send activity then looks for an earlier one (Draft.first_marketing)."""
        return False

    def suppression_reason(self, err: PermanentError) -> str | None:
        """The suppression a provider's refusal calls for ("never send to this address again"), if any."""
        return None
