"""Compressed definitions for the benchmarks that run real runs on a dev server (throughput, cost).

A benchmark measures what the engine costs per run, so it cannot wait out real days, and with the
wall-clock rules on, runs would stall for hours of real time on quiet hours and the cap. So it
runs a copy of the definitions with every wait and timeout scaled (by default a day to a second)
and with quiet hours, the frequency cap and `expires_after` taken out. Production code knows
nothing of this: the copy is an ordinary catalog, and its runs an ordinary workflow's.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any


def scaled(duration: timedelta, scale: float) -> timedelta:
    """`duration` times `scale`, in whole seconds (the least a definition can say), at least one."""
    return timedelta(seconds=max(1, round(duration.total_seconds() * scale)))


def compressed(catalog, scale: float):
    """The catalog with its waits and timeouts scaled and the wall-clock rules off."""
    from keepflow.language.dsl import SequencesFile
    from keepflow.language.durations import format_duration, parse_duration

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key in ("expires_after", "quiet_hours"):
                continue
            if key in ("wait", "timeout") and isinstance(value, str):
                value = format_duration(scaled(parse_duration(value), scale))
            out[key] = walk(value)
        return out

    data = catalog.file.model_dump(mode="json")
    data["sequences"] = walk(data["sequences"])
    data["rules"] = {**data["rules"], "quiet_hours": {"channels": []}, "frequency_cap": {}}
    return dataclasses.replace(catalog, file=SequencesFile.model_validate(data))
