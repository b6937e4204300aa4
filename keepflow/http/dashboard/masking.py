"""What a marketer sees of a customer's contact points: `n•••@e•••.com`, `+•••••••••78`.

The dashboard renders a marketer's pages through a Jinja environment whose `finalize` passes every
printed value through `mask_text`, so no field can be forgotten: a message's subject, its rendered
body (in the preview frame), a provider's error text, a suppression's detail, the search typed.
Fields that are a contact point and nothing else (a customer's email and phone, a message's
recipient) go through `mask_contact`, which hides them even when they are not well formed.

What it finds: email addresses (also percent-encoded, as in a link) and phone numbers written
with their country code (`+66 81 234 5678`, `+66812345678`, as Keepflow stores them), found by
phonenumbers' matcher, which leaves dates, times, prices and order numbers alone. A number written
without its country code in free text is not recognised.
"""

from __future__ import annotations

import re

import phonenumbers
from markupsafe import Markup

DOT = "•"
_NOT_IN_ADDRESS = r"\s@<>()\[\]\\,;:\"'`=/?&%"
_EMAIL = re.compile(
    rf"(?P<local>[^{_NOT_IN_ADDRESS}]+)(?P<at>@|%40)"
    rf"(?P<domain>[^{_NOT_IN_ADDRESS}.]+)(?P<rest>(?:\.[^{_NOT_IN_ADDRESS}.]+)+)",
    re.IGNORECASE,
)


def _email(found: re.Match[str]) -> str:
    top = found["rest"].rsplit(".", 1)[1]
    return f"{found['local'][0]}{DOT * 3}{found['at']}{found['domain'][0]}{DOT * 3}.{top}"


def _digits(text: str, keep: int = 2) -> str:
    """Every digit but the last `keep` as a dot; the rest (+, spaces, dashes) as written."""
    total = sum(c.isdigit() for c in text)
    seen, out = 0, []
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else DOT)
        else:
            out.append(c)
    return "".join(out)


def mask_text(text: str) -> str:
    """`text` with every email address and international phone number in it masked."""
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(_email, text)
    if "+" in text:
        # POSSIBLE, not VALID: a number that failed validation when it was stored is still hidden.
        found = list(phonenumbers.PhoneNumberMatcher(text, None, leniency=phonenumbers.Leniency.POSSIBLE))
        for match in reversed(found):
            text = text[:match.start] + _digits(match.raw_string) + text[match.end:]
    return text


def mask_contact(value: str | None) -> str | None:
    """A field that holds one contact point: masked as above, else all but its first character."""
    if not value:
        return value
    masked = mask_text(value)
    return masked if masked != value else value[0] + DOT * 3


def finalize(value: object) -> object:
    """Jinja's `finalize` for a marketer's pages. Markup is left alone: it is either the output of
    a macro, whose own values went through here, or markup Keepflow drew (the flowcharts)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return mask_text(value)
    return value
