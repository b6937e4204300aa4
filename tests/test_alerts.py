"""deploy/prometheus/keepflow-alerts.yml: `promtool check rules` passes where promtool is
installed; everywhere, each rule has the shape Prometheus reads and asks only for metrics that
Keepflow or the Temporal SDK export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import temporalio.bridge
from prometheus_client.metrics import MetricWrapperBase
from ruamel.yaml import YAML

from keepflow import metrics

RULES = Path(__file__).parent.parent / "deploy" / "prometheus" / "keepflow-alerts.yml"
# What each kind of metric is scraped as.
SERIES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def keepflow_series() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            names |= {family.name + suffix for suffix in SERIES[family.type]}
    return names


def sdk_exports(name: str) -> bool:
    """The SDK's metrics are named in its Rust core: the name (less the `temporal_` prefix and the
    Prometheus suffixes) is in the bridge library, or the SDK does not export it."""
    base = re.sub(r"_(total|bucket|sum|count)$", "", name.removeprefix("temporal_"))
    library = next(Path(temporalio.bridge.__file__).parent.glob("temporal_sdk_bridge*"))
    return base.encode() in library.read_bytes()


def rules() -> list[dict]:
    document = YAML(typ="safe").load(RULES.read_text(encoding="utf-8"))
    assert list(document) == ["groups"]
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_rule_has_the_shape_prometheus_reads():
    document = YAML(typ="safe").load(RULES.read_text(encoding="utf-8"))
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0m")), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_every_metric_a_rule_reads_is_exported():
    ours = keepflow_series()
    used = {name for rule in rules() for name in re.findall(r"\b(?:keepflow|temporal)_[a-z0-9_]+\b", rule["expr"])}
    assert used
    for name in used:
        assert name in ours if name.startswith("keepflow_") else sdk_exports(name), name


def test_the_rules_cover_what_operations_watch():
    used = " ".join(rule["expr"] for rule in rules())
    for metric in ("keepflow_provider_errors_total", "keepflow_events_rejected_total", "keepflow_routing_lag_seconds_bucket",
                   'outcome="unknown"', "keepflow_scan_last_finished_timestamp_seconds",
                   "temporal_workflow_task_execution_failed_total"):
        assert metric in used
