"""Durations as marketers write them: `3d`, `12h`, `90m`, `1w`, `2d12h`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"^(?:\d+[wdhms])+$")


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        # `wait: 3` would be three seconds to a parser and three days to a marketer: ask.
        raise ValueError(f"{value!r} has no unit; write e.g. {value}d for days, {value}h for hours or {value}m for minutes")
    text = str(value).strip().replace(" ", "")
    if not _WHOLE.match(text):
        raise ValueError(
            f"{value!r} is not a duration; write a number and a unit, e.g. 3d, 12h, 30m, 1w or 2d12h"
        )
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _PART.findall(text)))


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue  # "14d" reads better than "2w" in output
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# Accepts "3d" from YAML; serialises back to "3d" so a definition snapshot round-trips as text.
Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
