"""When a message may reach a customer: outside the quiet window of their local time.

Pure functions of an instant and zone names, so a test can pin both. A customer with no (or an
unknown) time zone is checked against every fallback zone at once: the message waits until it is
outside the quiet window in all of them, the most restrictive reading.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keepflow.language.dsl import QuietHours

# If the fallback zones' windows together cover the whole day there is no common free moment;
# after this long we settle for the first fallback zone alone rather than never sending.
_SEARCH_DAYS = 3


def zones_for(customer_timezone: str | None, fallback: list[str]) -> list[ZoneInfo]:
    if customer_timezone:
        try:
            return [ZoneInfo(customer_timezone)]
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return [ZoneInfo(name) for name in fallback]


def is_quiet(at: datetime, zone: ZoneInfo, quiet: QuietHours) -> bool:
    local = at.astimezone(zone).time().replace(tzinfo=None)
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end  # the window spans midnight


def next_allowed(at: datetime, zones: list[ZoneInfo], quiet: QuietHours) -> datetime:
    """`at` itself when no zone is in its quiet window, else the earliest instant when none is."""
    at = at.astimezone(timezone.utc)
    if not any(is_quiet(at, z, quiet) for z in zones):
        return at
    candidates = sorted(end for ends in (_window_ends(at, z, quiet.end) for z in zones) for end in ends if end > at)
    for candidate in candidates:
        if not any(is_quiet(candidate, z, quiet) for z in zones):
            return candidate
    return next(c for c in _window_ends(at, zones[0], quiet.end) if c > at and not is_quiet(c, zones[0], quiet))


def _window_ends(at: datetime, zone: ZoneInfo, end: time) -> list[datetime]:
    """The local `end` time on the days around `at`, as UTC instants (DST-aware)."""
    today = at.astimezone(zone).date()
    ends = []
    for offset in range(-1, _SEARCH_DAYS + 1):
        local = datetime.combine(today + timedelta(days=offset), end, tzinfo=zone)
        # A wall time inside a DST gap does not exist; the round trip moves it past the gap.
        ends.append(local.astimezone(timezone.utc))
    return ends
