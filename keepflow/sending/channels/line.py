"""LINE messages, text or Flex (a template's `.json`, keepflow/language/flex.py), pushed through
LINE's Messaging API (or written to the outbox) to the customer's LINE user id with the shop's
official account.

A lost answer is safe to resend: every attempt of one message carries the same retry key
(keepflow/sending/providers/line.py), so LINE delivers it once and answers a repeat with the
accepted request's id. Asking "did an earlier attempt get through?" is therefore the resend itself.
"""

from __future__ import annotations

from datetime import datetime

from keepflow.language.channels import CHANNEL_FACTS
from keepflow.sending.channels.base import Channel, Draft, Outgoing
from keepflow.sending.contacts import normalize_line_user_id
from keepflow.sending.providers import Accepted, LineFlex, LineSender, LineText, OutgoingLine
from keepflow.settings import Settings


class Line(Channel[LineSender]):
    facts = CHANNEL_FACTS["line"]
    finds_earlier_attempts = True

    def normalize(self, address: str) -> str:
        return normalize_line_user_id(address)

    def outgoing(self, provider: LineSender, settings: Settings, draft: Draft) -> Outgoing:
        flex = draft.rendered.flex
        message = LineFlex(str(flex["altText"]), flex["contents"]) if flex else LineText(draft.rendered.body)
        push = OutgoingLine(to=draft.recipient, message=message, key=draft.key)

        def find_sent(since: datetime) -> Accepted | None:
            return provider.send_line(push)

        return Outgoing(provider.name, draft.recipient, draft.rendered, lambda: provider.send_line(push),
                        find_sent=find_sent)
