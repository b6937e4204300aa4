"""What the sequence language knows of each channel: its name, its templates, and the customer
fields it reads.

keepflow.sending.channels holds the channels themselves (addresses, providers, lost answers). The
language checks and renders templates and the store erases addresses, and both sit below
keepflow.sending in pyproject's import layers: so the plain facts they need of a channel live here,
as data, and each channel of keepflow.sending.channels is built on its entry. A new channel adds
one entry here, one module there, and its templates under templates/<name>/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# A Literal, not a str: `send:` accepts exactly these, and the JSON schema lists them for editors.
ChannelName = Literal["email", "sms", "line"]


@dataclass(frozen=True)
class ChannelFacts:
    name: ChannelName
    # The customer field (profile column and context key) holding its address.
    address_field: str
    # The key of customer.consents that allows marketing on it.
    consent_key: str
    # templates/<name>/<template>.<locale>.<extension>
    template_extension: str
    # An HTML template with `{% block subject %}`, whose text part is derived from the HTML;
    # otherwise the template is the text as it goes out.
    html: bool
    # Its marketing messages carry an unsubscribe link (`unsubscribe_url` in their context).
    unsubscribe_link: bool
    # It reaches the customer's phone at once: a marketing one is warned about without quiet hours.
    interrupts: bool
    # What one message is called in findings ("2 marketing texts a day").
    noun: str
    # The channel and its address as a marketer reads them: why a message went on a step's
    # `fallback:` ("no LINE account"), in preview, simulate and the message row.
    label: str
    address_noun: str
    # A rich message template beside the text one (LINE's Flex JSON, keepflow/language/flex.py):
    # for a locale that has both, the rich one is used and validate refuses the pair.
    flex_extension: str | None = None


CHANNEL_FACTS: dict[str, ChannelFacts] = {facts.name: facts for facts in (
    ChannelFacts(name="email", address_field="email", consent_key="email", template_extension="html", html=True,
                 unsubscribe_link=True, interrupts=False, noun="email", label="email",
                 address_noun="email address"),
    ChannelFacts(name="sms", address_field="phone", consent_key="sms", template_extension="txt", html=False,
                 unsubscribe_link=False, interrupts=True, noun="text", label="SMS",
                 address_noun="phone number"),
    # A push to the customer's LINE account (the official account's chat), by LINE user id.
    ChannelFacts(name="line", address_field="line_user_id", consent_key="line", template_extension="txt", html=False,
                 unsubscribe_link=False, interrupts=True, noun="LINE message", label="LINE",
                 address_noun="LINE account", flex_extension="json"),
)}
assert set(CHANNEL_FACTS) == set(get_args(ChannelName)), "every channel name has its facts, and no more"
