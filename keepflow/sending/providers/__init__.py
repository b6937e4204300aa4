"""Email, SMS and LINE providers: SendGrid, Twilio, LINE's Messaging API, and a local outbox file
for development.

`email_provider(settings)` / `sms_provider(settings)` / `line_provider(settings)` pick one from the
settings: the real provider when `settings.use_sendgrid` / `settings.use_twilio` /
`settings.use_line`, else the outbox under `settings.data_dir`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keepflow.sending.providers.base import (
    Accepted,
    EmailProvider,
    LineFlex,
    LineSender,
    LineText,
    OutgoingEmail,
    OutgoingLine,
    OutgoingSms,
    PermanentError,
    ProviderError,
    RetryableError,
    SmsProvider,
    named_sender,
    parse_retry_after,
)
from keepflow.settings import reveal

if TYPE_CHECKING:
    from keepflow.settings import Settings

__all__ = [
    "Accepted",
    "EmailProvider",
    "LineFlex",
    "LineSender",
    "LineText",
    "OutgoingEmail",
    "OutgoingLine",
    "OutgoingSms",
    "PermanentError",
    "ProviderError",
    "RetryableError",
    "SmsProvider",
    "email_provider",
    "line_provider",
    "named_sender",
    "parse_retry_after",
    "sms_provider",
]


def email_provider(settings: Settings) -> EmailProvider:
    """SendGrid if selected (KEEPFLOW_EMAIL_PROVIDER, or "auto" with SENDGRID_API_KEY set), else the outbox."""
    if settings.use_sendgrid:
        missing = [
            var
            for var, value in (("SENDGRID_API_KEY", reveal(settings.sendgrid_api_key)), ("KEEPFLOW_EMAIL_FROM", settings.email_from))
            if not value
        ]
        if missing:
            raise ValueError(
                f"SendGrid is selected as the email provider but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; set "
                f"{', '.join(missing)}, or KEEPFLOW_EMAIL_PROVIDER=outbox to write emails to a local file"
            )
        from keepflow.sending.providers.sendgrid import SendGridEmail

        return SendGridEmail(
            api_key=reveal(settings.sendgrid_api_key),
            host=settings.sendgrid_host,
            from_=settings.email_from,
            timeout=settings.provider_timeout,
        )
    from keepflow.sending.providers.outbox import OutboxEmail

    return OutboxEmail(settings.data_dir)


def sms_provider(settings: Settings) -> SmsProvider:
    """Twilio if selected (KEEPFLOW_SMS_PROVIDER, or "auto" with TWILIO_ACCOUNT_SID and
    TWILIO_AUTH_TOKEN set), else the outbox."""
    if settings.use_twilio:
        missing = [
            var
            for var, value in (
                ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                ("TWILIO_AUTH_TOKEN", reveal(settings.twilio_auth_token)),
            )
            if not value
        ]
        if not (settings.twilio_from or settings.twilio_messaging_service_sid):
            missing.append("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        if missing:
            raise ValueError(
                "Twilio is selected as the SMS provider but some settings are missing; set "
                f"{', '.join(missing)}, or KEEPFLOW_SMS_PROVIDER=outbox to write SMS to a local file"
            )
        from keepflow.sending.providers.twilio import TwilioSms

        return TwilioSms(
            account_sid=settings.twilio_account_sid or "",
            auth_token=reveal(settings.twilio_auth_token),
            from_=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            base_url=settings.twilio_base_url,
            timeout=settings.provider_timeout,
        )
    from keepflow.sending.providers.outbox import OutboxSms

    return OutboxSms(settings.data_dir)


def line_provider(settings: Settings) -> LineSender:
    """LINE's Messaging API with LINE_CHANNEL_ACCESS_TOKEN set, else the outbox."""
    if settings.use_line:
        from keepflow.sending.providers.line import LineProvider

        return LineProvider.from_settings(settings)
    from keepflow.sending.providers.outbox import OutboxLine

    return OutboxLine(settings.data_dir)
