"""Keepflow: sequences in YAML, run as durable Temporal workflows.

What a developer adding an activity imports:

    from keepflow import ActivityContext, activity

Loaded on first use, so `import keepflow.language...` (the workflow sandbox, `keepflow validate`)
does not pull in the database and Temporal's activity machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keepflow.runtime.registry import ActivityContext, activity

__all__ = ["ActivityContext", "activity"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from keepflow.runtime import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'keepflow' has no attribute {name!r}")
