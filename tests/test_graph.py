"""`keepflow graph`: a sequence as Mermaid text and as an SVG that needs nothing to draw it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import combinations
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.insights.graph import build_flow, to_mermaid, to_svg
from keepflow.language.dsl import SequencesFile
from keepflow.runtime.registry import load_catalog
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES

CATALOG = load_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)
SVG = "{http://www.w3.org/2000/svg}"
NODE = re.compile(r'^\s+(n\d+)\W+"(.*)"\W*$')
EDGE = re.compile(r'^\s+(n\d+) -->(?:\|"(.*)"\|)? (n\d+)$')


def parse_mermaid(text: str) -> tuple[dict[str, str], set[tuple[str, str | None, str]]]:
    """Labels by node id, and edges as (source label, edge label, target label)."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes = {m[1]: m[2] for m in map(NODE.match, lines[1:]) if m}
    edges = {(nodes[m[1]], m[2], nodes[m[3]]) for m in map(EDGE.match, lines[1:]) if m}
    assert len(nodes) + len(edges) == len(lines) - 1, "every line is a node or an edge"
    return nodes, edges


def test_fulfilment_mermaid_has_every_step_and_the_flow_between_them():
    nodes, edges = parse_mermaid(to_mermaid(CATALOG.sequences["fulfilment"]))
    assert sorted(nodes.values()) == sorted([
        "fulfilment: on order.created", "email: order_confirmed", "wait for order.shipped (7d)", "exit",
        "email: order_shipped", "sms: order_shipped", "wait for order.delivered (14d)", "email: order_delivered",
        "start → education", "end"])
    assert edges == {
        ("fulfilment: on order.created", None, "email: order_confirmed"),
        ("email: order_confirmed", None, "wait for order.shipped (7d)"),
        ("wait for order.shipped (7d)", "none within 7d", "exit"),
        ("wait for order.shipped (7d)", "received", "email: order_shipped"),
        ("email: order_shipped", None, "sms: order_shipped"),
        ("sms: order_shipped", None, "wait for order.delivered (14d)"),
        ("wait for order.delivered (14d)", None, "email: order_delivered"),
        ("email: order_delivered", None, "start → education"),
        ("start → education", None, "end"),
    }


def test_branches_fan_out_and_join_again():
    text = to_mermaid(CATALOG.sequences["cross_sell"])
    nodes, edges = parse_mermaid(text)
    assert "{\"if 'TRIPOD-01' not in profile.purchased_skus\"}" in text  # a diamond
    assert '{{"split"}}' in text
    assert ("split", "plain (50%)", "email: cross_sell_tripod") in edges
    assert ("split", "offer (50%)", "do: create_coupon → coupon") in edges
    assert ("if 'TRIPOD-01' not in profile.purchased_skus", "then", "split") in edges
    # Both variants and the empty else arm go on to the wait.
    assert {(s, l) for s, l, t in edges if t == "wait 3d"} == {
        ("email: cross_sell_tripod", None), ("email: cross_sell_tripod_offer", None),
        ("if 'TRIPOD-01' not in profile.purchased_skus", "else")}
    nodes, edges = parse_mermaid(to_mermaid(CATALOG.sequences["review_request"]))
    assert ("wait for review.submitted (4d)", "none within 4d", "email: review_reminder") in edges
    assert ("wait for review.submitted (4d)", "received", "end") in edges


TRICKY = """
sequences:
  - id: tricky
    category: marketing
    steps:
      - if: 'customer.first_name == "Nok" or customer.tags["vip"] | default(false)'
        then:
          - exit
        else:
          - send: email
            template: a_b
"""


def tricky():
    return SequencesFile.model_validate(YAML(typ="safe").load(TRICKY)).sequences[0]


def test_labels_are_escaped_for_mermaid_and_svg():
    text = to_mermaid(tricky())
    line = next(line for line in text.splitlines() if "first_name" in line)
    assert line == ('    n1{"if customer.first_name == #quot;Nok#quot; or customer.tags[#quot;vip#quot;] '
                    '#124; default(false)"}')
    assert '    n1 -->|"then"| n2' in text  # the exit: nothing follows it
    root = ET.fromstring(to_svg(tricky()))
    words = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert 'customer.first_name == "Nok" or' in words


def box(element: ET.Element) -> tuple[float, float, float, float]:
    if element.tag == f"{SVG}rect":
        x, y = float(element.get("x")), float(element.get("y"))
        return x, y, x + float(element.get("width")), y + float(element.get("height"))
    points = [tuple(map(float, p.split(","))) for p in element.get("points").split()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


@pytest.mark.parametrize("sequence_id", list(CATALOG.sequences))
def test_svg_parses_labels_every_step_and_no_boxes_overlap(sequence_id: str):
    sequence = CATALOG.sequences[sequence_id]
    root = ET.fromstring(to_svg(sequence))
    assert root.tag == f"{SVG}svg"
    groups = root.findall(f"{SVG}g")
    shown = [" ".join(t.text for t in g.findall(f"{SVG}text")) for g in groups]
    assert sorted(shown) == sorted(n.label for n in build_flow(sequence).nodes)
    boxes = [box(g[0]) for g in groups]
    width, height = float(root.get("width")), float(root.get("height"))
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
    for a, b in combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"boxes overlap: {a} {b}"


def test_cli_graph_prints_svg_and_refuses_unknown_ids_and_formats():
    runner = CliRunner()
    result = runner.invoke(app, ["graph", "winback", "--format", "svg"])
    assert result.exit_code == 0, result.output
    texts = [t.text for t in ET.fromstring(result.stdout).iter(f"{SVG}text")]
    assert "email: winback_last_chance" in texts
    assert ["if customer.consents.sms |", "default(false)"] == texts[texts.index("if customer.consents.sms |"):][:2]
    result = runner.invoke(app, ["graph", "fulfillment"])
    assert result.exit_code == 2
    assert "no sequence 'fulfillment'" in result.output and "known sequences: fulfilment," in result.output
    result = runner.invoke(app, ["graph", "winback", "--format", "png"])
    assert result.exit_code == 2
    assert "choose mermaid or svg" in result.output
    result = runner.invoke(app, ["graph", "winback"])
    assert result.exit_code == 0 and result.stdout.startswith("flowchart TD\n")


def test_a_send_with_a_fallback_names_both_channels():
    from keepflow.insights.graph import label_of
    from keepflow.language.dsl import SendStep

    step = SendStep(send="line", template="education_lighting", fallback="sms")
    assert label_of(step) == "line, else sms: education_lighting"
