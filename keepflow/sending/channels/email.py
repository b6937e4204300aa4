"""Email, sent by SendGrid (or written to the outbox). SendGrid has no idempotency key and no
immediate way to look a message up, so an email whose answer was lost is never resent."""

from __future__ import annotations

from keepflow.language.channels import CHANNEL_FACTS
from keepflow.sending.channels.base import Channel, Draft, Outgoing
from keepflow.sending.contacts import normalize_email
from keepflow.sending.providers import EmailProvider, OutgoingEmail, named_sender
from keepflow.settings import Settings


class Email(Channel[EmailProvider]):
    facts = CHANNEL_FACTS["email"]

    def normalize(self, address: str) -> str:
        return normalize_email(address)

    def outgoing(self, provider: EmailProvider, settings: Settings, draft: Draft) -> Outgoing:
        rendered, url = draft.rendered, draft.unsubscribe_url
        # The address also alone on the last line: text-only clients make a bare URL clickable.
        text = f"{rendered.text}\n\n{url}" if url else rendered.text
        email = OutgoingEmail(
            to=draft.recipient, subject=rendered.subject or "", html=rendered.body, text=text,
            from_=named_sender(settings.email_from, draft.brand_name), key=draft.key,
            headers=draft.unsubscribe_headers,
            categories=draft.categories, custom_args=draft.custom_args, asm_group_id=draft.unsubscribe_group_id,
        )
        return Outgoing(provider.name, draft.recipient, rendered, lambda: provider.send_email(email))
