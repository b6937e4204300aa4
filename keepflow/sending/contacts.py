"""Contact points: emails checked with email-validator, phone numbers normalised to E.164 with
phonenumbers. A profile is checked when it is stored; a bad contact point is kept (the store sent
it) but flagged, and nothing is ever sent to it."""

from __future__ import annotations

import functools
import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class InvalidContact(ValueError):
    pass


# Kept: every send to an address checks it again, and the check is a pure function of the text.
@functools.lru_cache(maxsize=8192)
def normalize_email(value: str) -> str:
    """The address as we store and compare it: syntax checked, domain lower-cased (no DNS lookups)."""
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as err:
        raise InvalidContact(str(err)) from err
    return checked.normalized.lower()


# "The LINE Platform issues a user ID as a string, formatted as U[0-9a-f]{32}" (LINE Developers,
# Messaging API, "Get user IDs"). It is per provider: one shop's id for a customer means nothing to another's.
_LINE_USER_ID = re.compile(r"U[0-9a-f]{32}")


def normalize_line_user_id(value: str) -> str:
    """A LINE user id as LINE issues it (a webhook's `source.userId`), surrounding spaces dropped."""
    value = value.strip()
    if not _LINE_USER_ID.fullmatch(value):
        raise InvalidContact(f"{value[:40]!r} is not a LINE user id (U and 32 hex digits, from a LINE webhook; "
                             "not the LINE ID a customer searches by)")
    return value


def normalize_phone(value: str, region: str | None = None) -> str:
    """E.164 ("+66812345678"). A number without a country code needs `region` (e.g. "TH")."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as err:
        # These words reach the dashboard and the store's logs: say what to change, not the parser's code.
        if err.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not value.strip().startswith("+"):
            raise InvalidContact(f"{value!r} has no country code: send it as +CC…, give the customer a locale "
                                 "with a country (th-TH), or set rules.default_region") from None
        raise InvalidContact(f"{value!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact(f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
