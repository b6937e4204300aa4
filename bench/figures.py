"""bench/results.json: every script's headline figures, machine-readable, beside RESULTS.md.

One entry per figure, keyed like `cost.post_purchase.actions`, each with the date it was
measured, the command, the machine line and the commit: scripts run at different times on
different code, so a figure carries its own provenance. A script replaces only its own keys.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"


def write_figures(figures: dict[str, float | int], command: str, machine: dict[str, str]) -> None:
    """Replace these keys in results.json (the others stay), each stamped with its provenance."""
    current: dict[str, Any] = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    stamp = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": f"{machine['nproc']} CPUs (nproc), {machine['os']}, Python {machine['python']}, {machine['temporal']}",
        "commit": machine["commit"],
    }
    for key, value in figures.items():
        current[key] = {"value": value, **stamp}
    RESULTS_JSON.write_text(json.dumps(dict(sorted(current.items())), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(figures)} figures to bench/{RESULTS_JSON.name}")
