"""The Temporal SDK's own metrics (workflow task failures, schedule-to-start latency, slots,
polls), served with Keepflow's on the worker's one metrics port, so one scrape target has both.

The SDK's exporter is in its Rust core and takes an address of its own: it listens on a loopback
port chosen here, and each scrape of the worker's port reads it back into the same answer. Its
names all begin `temporal_`, Keepflow's `keepflow_`: the two never clash.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

log = logging.getLogger("keepflow.runtime.telemetry")

# A scrape waits at most this long for the SDK's part; without it, Keepflow's part still answers.
READ_TIMEOUT = 2.0


class _Relayed(Collector):
    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=READ_TIMEOUT) as answer:
                text = answer.read().decode("utf-8")
        except OSError as err:
            log.warning("the Temporal SDK's metrics did not answer: %s", err)
            return
        yield from text_string_to_metric_families(text)


def sdk_runtime() -> tuple[Runtime, Collector]:
    """A runtime whose clients and workers export the SDK's metrics, and the collector that reads
    them into this process' registry (register it once the runtime is the one in use)."""
    address = f"127.0.0.1:{_free_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        # As Prometheus names them: counters end in _total, durations are in seconds.
        bind_address=address, counters_total_suffix=True, durations_as_seconds=True)))
    return runtime, _Relayed(f"http://{address}/metrics")


def export_sdk_metrics() -> None:
    """Make the SDK's metrics part of this process' registry: before the first client connects."""
    runtime, relayed = sdk_runtime()
    Runtime.set_default(runtime)
    REGISTRY.register(relayed)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
