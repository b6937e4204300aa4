"""Texts, sent by Twilio (or written to the outbox). Twilio lists the messages it took, so a text
whose answer was lost is looked up there before it is sent again."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from keepflow.language.channels import CHANNEL_FACTS
from keepflow.sending import sms_opt_out
from keepflow.sending.channels.base import Channel, Draft, Outgoing
from keepflow.sending.contacts import normalize_phone
from keepflow.sending.providers import Accepted, OutgoingSms, PermanentError, SmsProvider
from keepflow.sending.providers.twilio import NAME as TWILIO, status_callback_url
from keepflow.settings import Settings

# Twilio errors that mean the number must not be texted again (twilio.com/docs/api/errors):
# 21610 the recipient replied STOP; 21211 invalid 'To' number; 21614 'To' is not a mobile number.
_SUPPRESSIONS = {"21610": "sms_stop", "21211": "invalid", "21614": "invalid"}


class Sms(Channel[SmsProvider]):
    facts = CHANNEL_FACTS["sms"]
    finds_earlier_attempts = True

    def normalize(self, address: str) -> str:
        return normalize_phone(address)

    def first_marketing_says_how_to_stop(self, settings: Settings) -> bool:
        return settings.sms_opt_out_line

    def outgoing(self, provider: SmsProvider, settings: Settings, draft: Draft) -> Outgoing:
        rendered = draft.rendered
        if draft.first_marketing:
            body = sms_opt_out.with_line(rendered.body, rendered.locale)
            # The row keeps the body as sent: a retry's lookup at Twilio matches on it.
            rendered = replace(rendered, body=body, text=body)
        sms = OutgoingSms(to=draft.recipient, body=rendered.body, key=draft.key,
                          status_callback=status_callback_url(settings.public_url))

        def find_sent(since: datetime) -> Accepted | None:
            return provider.find_sent(sms, since=since)

        return Outgoing(provider.name, draft.recipient, rendered, lambda: provider.send_sms(sms), find_sent=find_sent)

    def suppression_reason(self, err: PermanentError) -> str | None:
        return _SUPPRESSIONS.get(str(err.code)) if err.provider == TWILIO else None
