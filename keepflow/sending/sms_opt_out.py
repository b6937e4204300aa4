"""The opt-out line of a number's first marketing text, per locale.

Carrier rules (CTIA in the US, and the operators' codes elsewhere) ask that the first marketing
message to a number say how to stop them; Twilio's STOP handling (keepflow/http/twilio.py) does
the rest. "First" is decided from the store: no earlier marketing text to that customer at that
number with the status `sent`. A text that failed or was skipped told the customer nothing, so it
does not count; a customer's new number gets the line again.
Only the first gets it: each line costs characters, and with Thai or Chinese a segment holds 70.
"""

from __future__ import annotations

from keepflow.language.rendering import locale_candidates

# Short, with the keyword in Latin letters: Twilio's opt-out keywords are matched as sent.
LINES = {
    "en": "Reply STOP to opt out",
    "th": "ตอบ STOP เพื่อยกเลิกรับข้อความ",
    "zh-Hant": "回覆 STOP 取消訂閱",
    "zh-Hans": "回复 STOP 退订",
}


def line_for(locale: str | None) -> str:
    """The line in the text's own locale, falling back as templates do, finally to English."""
    for candidate in locale_candidates(locale, "en"):
        if candidate in LINES:
            return LINES[candidate]
    return LINES["en"]


def with_line(body: str, locale: str | None) -> str:
    return f"{body.rstrip()}\n{line_for(locale)}"
