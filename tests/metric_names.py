"""Which metric names a Prometheus scrape of Keepflow can hold: Keepflow's own (keepflow/metrics.py)
and the Temporal SDK's. The alert rules and the Grafana dashboard are checked against them, so
neither can ask for a metric nobody exports."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import temporalio.bridge
from prometheus_client.metrics import MetricWrapperBase

from keepflow import metrics

# What each kind of metric is scraped as.
SERIES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
# A metric's name wherever it stands in PromQL: Keepflow's and the SDK's carry these prefixes.
NAMES = re.compile(r"\b(?:keepflow|temporal)_[a-z0-9_]+\b")


@functools.cache
def keepflow_series() -> frozenset[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            names |= {family.name + suffix for suffix in SERIES[family.type]}
    return frozenset(names)


def sdk_exports(name: str) -> bool:
    """The SDK's metrics are named in its Rust core: the name (less the `temporal_` prefix and the
    Prometheus suffixes) is in the bridge library, or the SDK does not export it."""
    base = re.sub(r"_(total|bucket|sum|count)$", "", name.removeprefix("temporal_"))
    library = next(Path(temporalio.bridge.__file__).parent.glob("temporal_sdk_bridge*"))
    return base.encode() in library.read_bytes()


def metrics_in(expr: str) -> set[str]:
    return set(NAMES.findall(expr))


def exported(name: str) -> bool:
    return name in keepflow_series() if name.startswith("keepflow_") else sdk_exports(name)
