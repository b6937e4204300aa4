"""deploy/grafana/keepflow-dashboard.json: Grafana imports it (the shape "Import dashboard" reads, its
Prometheus a choice made on import), each panel asks for something, and only for metrics that
Keepflow or the Temporal SDK export."""

from __future__ import annotations

import json
from pathlib import Path

from tests.metric_names import exported, metrics_in

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "keepflow-dashboard.json"
# The datasource each panel names: the one the importer picks for the DS_PROMETHEUS input.
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict]:
    """The panels that draw something (rows only group them)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_grafana_can_import_it():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["title"] and board["uid"]
    assert board["__inputs"] == [{**board["__inputs"][0], "name": "DS_PROMETHEUS", "type": "datasource",
                                  "pluginId": "prometheus"}]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_each_panel_has_a_title_a_datasource_and_a_query():
    assert panels()
    for panel in panels():
        assert panel["title"].strip(), panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_every_metric_a_panel_reads_is_exported():
    for panel in panels():
        used = {name for target in panel["targets"] for name in metrics_in(target["expr"])}
        assert used, panel["title"]
        for name in used:
            assert exported(name), f"{panel['title']}: {name}"


def test_the_panels_show_what_on_call_watches():
    """A provider outage, an intake backlog, a stalled scan, and the SDK's view of the worker."""
    used = " ".join(target["expr"] for panel in panels() for target in panel["targets"])
    for metric in ("keepflow_events_received_total", "keepflow_events_accepted_total", "keepflow_events_rejected_total",
                   "keepflow_routing_lag_seconds_bucket", "keepflow_events_unrouted_oldest_seconds", "max(keepflow_events_unrouted)", "keepflow_messages_total", 'outcome="unknown"',
                   "keepflow_provider_request_seconds_bucket", "keepflow_provider_errors_total",
                   "keepflow_suppressions_added_total", "keepflow_runs_started_total",
                   "keepflow_scan_last_finished_timestamp_seconds", "keepflow_scan_last_page_timestamp_seconds",
                   "temporal_workflow_task_schedule_to_start_latency", "temporal_sticky_cache",
                   "temporal_workflow_task_execution_failed_total"):
        assert metric in used, metric
