"""Whether a production process (`keepflow worker`, `python worker.py`, `keepflow serve`) may start.

One place decides. Each check is a default that is fine on a laptop and wrong for a real shop:
mail "sent" to a local file, unsubscribe links to 127.0.0.1, a key only one process knows, the
example sender, customer data in Temporal in the clear. A process that finds any of them prints
every problem, one line each, and exits non-zero; `keepflow config check` prints the same lines.
`keepflow dev` does not ask: it is the laptop.
"""

from __future__ import annotations

import sys
from email.utils import parseaddr
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from keepflow.language.catalog import Catalog
from keepflow.settings import Settings, reveal

Process = Literal["worker", "serve"]

# RFC 2606 and RFC 6761: names that can never be a real shop's.
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = (".example", ".test", ".invalid", ".localhost")


def problems(settings: Settings, process: Process, catalog: Catalog | None = None) -> list[str]:
    """What production would refuse, one line each, naming the variable to set. With the catalog,
    only the channels its sequences send on need a provider: a shop without texts needs no Twilio."""
    found: list[str] = []
    outbox = settings.data_dir / "outbox.jsonl"
    channels = sending_channels(catalog)
    if not settings.allow_outbox:
        if "email" in channels and not settings.use_sendgrid:
            found.append(f"no email provider: email would be written to {outbox}, not sent; set SENDGRID_API_KEY "
                         "(or KEEPFLOW_ALLOW_OUTBOX=true if a local file is what you want)")
        if "sms" in channels and not settings.use_twilio:
            found.append(f"no SMS provider: texts would be written to {outbox}, not sent; set TWILIO_ACCOUNT_SID and "
                         "TWILIO_AUTH_TOKEN (or KEEPFLOW_ALLOW_OUTBOX=true if a local file is what you want)")
        if "line" in channels and not settings.use_line:
            found.append(f"no LINE provider: LINE messages would be written to {outbox}, not sent; set "
                         "LINE_CHANNEL_ACCESS_TOKEN (or KEEPFLOW_ALLOW_OUTBOX=true if a local file is what you want; "
                         "a shop without a LINE account changes its `send: line` steps to their fallback channel)")
    if "line" in channels and not reveal(settings.line_channel_secret):
        # Only LINE's webhook says who blocked the account (an unfollow): without it every later
        # push to them is still made, and marketing consent never follows a friend's follow.
        found.append("LINE_CHANNEL_SECRET is not set: LINE's webhook (follows and unfollows) cannot be verified, so "
                     "customers who blocked the shop's LINE account would still be pushed to; set it from the "
                     "LINE Developers console (Basic settings, Channel secret)")
    if settings.use_sendgrid or settings.use_twilio or not settings.allow_outbox:
        if not settings.public_url:
            found.append("KEEPFLOW_PUBLIC_URL is not set: unsubscribe links and Twilio callbacks would point at "
                         f"http://{settings.http_host}:{settings.http_port}; set it to the https:// address customers reach")
        elif urlsplit(settings.public_url).scheme != "https" or not urlsplit(settings.public_url).hostname:
            found.append(f"KEEPFLOW_PUBLIC_URL must be an https:// address, not {settings.public_url!r}: "
                         "mailbox providers and customers expect unsubscribe links over TLS")
    if not reveal(settings.unsubscribe_secret).strip(" ,"):
        found.append("KEEPFLOW_UNSUBSCRIBE_SECRET is not set: the worker that makes unsubscribe links and the app "
                      "that opens them must share it (generate one with `openssl rand -base64 32`)")
    if "email" in channels and (settings.use_sendgrid or not settings.allow_outbox) and _example_sender(settings.email_from):
        found.append(f"KEEPFLOW_EMAIL_FROM is {settings.email_from!r}, an example address: set the shop's own "
                     "sender, e.g. 'Your Shop <hello@your-shop.com>'")
    if not reveal(settings.payload_keys).strip(" ,"):
        found.append("KEEPFLOW_PAYLOAD_KEYS is not set: customer names, emails and phones would be stored in "
                     "Temporal in the clear (see docs/operations.md, payload encryption)")
    if process == "serve" and not settings.webhook_secrets:
        found.append("KEEPFLOW_WEBHOOK_SECRET is not set: signed events (POST /events) cannot be verified")
    return found


# When the sequences are not known: email and texts, which nearly every shop sends. LINE needs an
# official account most shops do not have: it is asked for only where a sequence sends on it.
UNLESS_KNOWN = ("email", "sms")


def sending_channels(catalog: Catalog | None) -> set[str]:
    """The channels the sequences send on; email and SMS when they are not known."""
    if catalog is None:
        return set(UNLESS_KNOWN)
    return {channel for sequence in catalog.sequences.values() for channel in sequence.channels()}


def _example_sender(email_from: str) -> bool:
    address = parseaddr(email_from)[1].lower()
    domain = address.rpartition("@")[2]
    return (not domain or domain in _RESERVED_DOMAINS or any(domain.endswith("." + d) for d in _RESERVED_DOMAINS)
            or domain.endswith(_RESERVED_TLDS))


def refuse_if_half_configured(settings: Settings, process: Process, catalog: Catalog | None = None) -> None:
    """Print every problem on stderr, one line each, and exit 1; return when there are none."""
    found = problems(settings, process, catalog)
    if not found:
        return
    for line in found:
        print(f"keepflow {process}: refusing to start: {line}", file=sys.stderr)
    raise SystemExit(1)


def providers_line(settings: Settings) -> str:
    """Which providers this process uses, for its first log lines."""
    outbox = f"the outbox file {settings.data_dir / 'outbox.jsonl'}"
    email = "SendGrid" if settings.use_sendgrid else outbox
    sms = "Twilio" if settings.use_twilio else outbox
    line = "LINE's Messaging API" if settings.use_line else outbox
    return f"email via {email}, SMS via {sms}, LINE via {line}"


def webhooks_line(settings: Settings) -> str:
    """Which webhook sources the public app will accept, for `keepflow serve`'s first log lines."""
    accepted = ["events (Standard Webhooks)" if settings.webhook_secrets else "no events (KEEPFLOW_WEBHOOK_SECRET unset)"]
    accepted.append("Shopify" if settings.shopify_secrets else "no Shopify (SHOPIFY_WEBHOOK_SECRET unset)")
    accepted.append("SendGrid events" if settings.sendgrid_webhook_public_key else
                    "no SendGrid events (SENDGRID_WEBHOOK_PUBLIC_KEY unset)")
    accepted.append("Twilio" if reveal(settings.twilio_auth_token) else "no Twilio (TWILIO_AUTH_TOKEN unset)")
    accepted.append("LINE" if reveal(settings.line_channel_secret) else "no LINE (LINE_CHANNEL_SECRET unset)")
    return "webhooks: " + ", ".join(accepted)


def effective(settings: Settings) -> list[tuple[str, str]]:
    """Every setting by its variable name, as this process sees it; secrets masked."""
    rows = []
    for name, field in Settings.model_fields.items():
        variable = str(field.validation_alias or name)
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            shown = "(set, hidden)" if value.get_secret_value() else "(empty)"
        elif value is None:
            shown = "(not set)"
        else:
            shown = str(value)
        rows.append((variable, shown))
    return rows
