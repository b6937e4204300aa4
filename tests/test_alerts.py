"""deploy/prometheus/keepflow-alerts.yml: `promtool check rules` passes where promtool is
installed; everywhere, each rule has the shape Prometheus reads and asks only for metrics that
Keepflow or the Temporal SDK export."""

from __future__ import annotations

import re
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.metric_names import exported, metrics_in

RULES = Path(__file__).parent.parent / "deploy" / "prometheus" / "keepflow-alerts.yml"


def rules() -> list[dict]:
    document = YAML(typ="safe").load(RULES.read_text(encoding="utf-8"))
    assert list(document) == ["groups"]
    return [rule for group in document["groups"] for rule in group["rules"]]


# Debian's `prometheus` package has promtool; CI installs it and sets KEEPFLOW_REQUIRE_PROMTOOL, so
# there the two tests below run, not skip.
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("KEEPFLOW_REQUIRE_PROMTOOL"),
                                    reason="promtool is not installed")


@needs_promtool
def test_promtool_accepts_the_rules():
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_a_provider_outage_an_intake_backlog_and_a_stalled_scan_fire_their_alerts():
    """deploy/prometheus/keepflow-alerts.test.yml: each fires on a series shaped like the real
    thing, and a blip, a short backlog and hourly scans do not."""
    checked = subprocess.run(["promtool", "test", "rules", RULES.with_suffix(".test.yml").name],
                             capture_output=True, text=True, cwd=RULES.parent)
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
    used = {name for rule in rules() for name in metrics_in(rule["expr"])}
    assert used
    for name in used:
        assert exported(name), name


def test_the_rules_cover_what_operations_watch():
    used = " ".join(rule["expr"] for rule in rules())
    for metric in ("keepflow_provider_errors_total", "keepflow_events_rejected_total", "keepflow_routing_lag_seconds_bucket", "keepflow_events_unrouted_oldest_seconds",
                   'outcome="unknown"', "keepflow_scan_last_finished_timestamp_seconds",
                   "temporal_workflow_task_execution_failed_total"):
        assert metric in used
