"""`keepflow graph`: a sequence drawn as a flowchart, as Mermaid text or a self-contained SVG.

Both come from one structure: a node per step, edges for the flow and for every branch (`then`,
`else`, split variants with their weights, `wait_for` timeouts). The SVG layout is deliberately
simple: steps top to bottom, the arms of a branch side by side under it, so it needs no layout
engine, no network and no external program.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import assert_never
from xml.sax.saxutils import escape, quoteattr

from keepflow.language.dsl import (
    DoStep,
    ExitStep,
    IfStep,
    InactivityTrigger,
    SendStep,
    Sequence,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
)
from keepflow.language.durations import format_duration


@dataclass
class Node:
    id: str
    label: str
    kind: str  # begin, send, wait, wait_for, if, split, do, start, exit, end


@dataclass
class Edge:
    source: str
    target: str
    label: str | None = None
    # An arm with no steps goes straight on to what follows; the SVG draws it down its own lane.
    lane: str | None = None


@dataclass
class Branch:
    id: str
    label: str
    items: list[Item]


@dataclass
class Item:
    node: Node
    branches: list[Branch] = field(default_factory=list)


@dataclass
class Flow:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)


# Edges still waiting for the next node: (source, label, lane).
Pending = list[tuple[str, str | None, str | None]]


class _Builder:
    def __init__(self) -> None:
        self.flow = Flow()
        self.count = 0

    def node(self, label: str, kind: str, pending: Pending) -> Node:
        node = Node(f"n{self.count}", label, kind)
        self.count += 1
        self.flow.nodes.append(node)
        for source, edge_label, lane in pending:
            self.flow.edges.append(Edge(source, node.id, edge_label, lane))
        return node

    def steps(self, steps: list[Step], pending: Pending) -> tuple[list[Item], Pending]:
        items: list[Item] = []
        for step in steps:
            item, pending = self.step(step, pending)
            items.append(item)
        return items, pending

    def step(self, step: Step, pending: Pending) -> tuple[Item, Pending]:
        node = self.node(label_of(step), step.kind, pending)
        arms: list[tuple[str, list[Step] | None]] = []
        match step:
            case ExitStep():
                return Item(node), []
            case IfStep():
                arms = [("then", step.then), ("else", step.else_)]
            case SplitStep():
                total = sum(v.weight for v in step.split)
                arms = [(f"{v.variant} ({v.weight / total:.0%})", v.steps) for v in step.split]
            case WaitForStep():
                if step.on_timeout != "continue":
                    timed_out = f"none within {format_duration(step.timeout)}"
                    arms = [(timed_out, None if step.on_timeout == "exit" else step.on_timeout), ("received", [])]
            case SendStep() | WaitStep() | DoStep() | StartStep():
                pass
            case _:
                assert_never(step)
        if not arms:
            return Item(node), [(node.id, None, None)]
        item = Item(node)
        out: Pending = []
        for label, steps in arms:
            branch = Branch(f"{node.id}_{len(item.branches)}", label, [])
            item.branches.append(branch)
            if steps is None:  # on_timeout: exit
                branch.items.append(Item(self.node("exit", "exit", [(node.id, label, None)])))
            elif not steps:
                out.append((node.id, label, branch.id))
            else:
                branch.items, ends = self.steps(steps, [(node.id, label, None)])
                out += ends
        return item, out


def label_of(step: Step) -> str:
    match step:
        case SendStep():
            channels = f"{step.send}, else {step.fallback}" if step.fallback else step.send
            return f"{channels}: {step.template}"
        case WaitStep():
            return f"wait {format_duration(step.wait)}"
        case WaitForStep():
            return f"wait for {step.wait_for} ({format_duration(step.timeout)})"
        case IfStep():
            return f"if {step.if_}"
        case SplitStep():
            return "split"
        case DoStep():
            return f"do: {step.do}" + (f" → {step.as_}" if step.as_ else "")
        case StartStep():
            return f"start → {step.start}"
        case ExitStep():
            return "exit" if step.exit == "done" else f"exit ({step.exit})"
        case _:
            assert_never(step)


def _begin_label(sequence: Sequence) -> str:
    if isinstance(sequence.trigger, InactivityTrigger):
        return f"{sequence.id}: inactive for {format_duration(sequence.trigger.inactive_for)}"
    if sequence.trigger:
        return f"{sequence.id}: on {sequence.trigger}"
    return f"{sequence.id}: started by another sequence"


def build_flow(sequence: Sequence) -> Flow:
    builder = _Builder()
    begin = builder.node(_begin_label(sequence), "begin", [])
    items, pending = builder.steps(sequence.steps, [(begin.id, None, None)])
    builder.flow.items = [Item(begin), *items]
    if pending:
        builder.flow.items.append(Item(builder.node("end", "end", pending)))
    return builder.flow


# -- Mermaid ------------------------------------------------------------------------------------

_SHAPES = {"begin": '(["{}"])', "end": '(["{}"])', "exit": '(["{}"])', "if": '{{"{}"}}', "split": '{{{{"{}"}}}}',
           "wait": '("{}")', "wait_for": '("{}")', "start": '[["{}"]]', "do": '[/"{}"/]', "send": '["{}"]'}


def mermaid_text(label: str) -> str:
    """A label safe inside Mermaid's quotes: its entity codes stand in for the characters it parses."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        label = label.replace(char, code)
    return label


def to_mermaid(sequence: Sequence) -> str:
    flow = build_flow(sequence)
    lines = ["flowchart TD"]
    lines += [f"    {n.id}{_SHAPES[n.kind].format(mermaid_text(n.label))}" for n in flow.nodes]
    for e in flow.edges:
        arrow = f'-->|"{mermaid_text(e.label)}"|' if e.label else "-->"
        lines.append(f"    {e.source} {arrow} {e.target}")
    return "\n".join(lines) + "\n"


# -- SVG ----------------------------------------------------------------------------------------

FONT_SIZE = 13
CHAR_WIDTH = 7.6  # average advance of the sans-serif font at FONT_SIZE
LINE_HEIGHT = 17
PAD = 10
WRAP = 36  # characters per line in a box
GAP_Y = 44
GAP_X = 28
LANE = 60
MARGIN = 20
_FILL = {"begin": "#1f2a44", "end": "#1f2a44", "exit": "#8a2432", "if": "#fff4d6", "split": "#efe6ff",
         "send": "#e3f1fb", "wait": "#f4f1ec", "wait_for": "#f4f1ec", "do": "#e8f6ea", "start": "#e8f6ea"}
_DARK = {"begin", "end", "exit"}


@dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float
    lines: list[str]

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


def _box_size(node: Node) -> tuple[float, float, list[str]]:
    lines = textwrap.wrap(node.label, WRAP, break_long_words=True) or [""]
    w = max(110, max(len(line) for line in lines) * CHAR_WIDTH + 2 * PAD)
    if node.kind in ("if", "split"):
        w += 2 * 16  # room for the pointed ends
    return w, len(lines) * LINE_HEIGHT + 2 * PAD, lines


class _Layout:
    def __init__(self) -> None:
        self.boxes: dict[str, _Box] = {}
        self.lanes: dict[str, tuple[float, float]] = {}  # branch id -> (x, top y)

    def size(self, items: list[Item]) -> tuple[float, float]:
        sizes = [self.item_size(i) for i in items]
        return max((w for w, _ in sizes), default=0), sum(h for _, h in sizes) + GAP_Y * max(len(sizes) - 1, 0)

    def item_size(self, item: Item) -> tuple[float, float]:
        w, h, _ = _box_size(item.node)
        if not item.branches:
            return w, h
        sizes = [self.size(b.items) if b.items else (LANE, 0) for b in item.branches]
        row = sum(max(bw, LANE) for bw, _ in sizes) + GAP_X * (len(sizes) - 1)
        tallest = max(bh for _, bh in sizes)
        return max(w, row), h + (GAP_Y + tallest if tallest else 0)

    def place(self, items: list[Item], left: float, width: float, top: float) -> None:
        for item in items:
            self.place_item(item, left, width, top)
            top += self.item_size(item)[1] + GAP_Y

    def place_item(self, item: Item, left: float, width: float, top: float) -> None:
        w, h, lines = _box_size(item.node)
        center = left + width / 2
        self.boxes[item.node.id] = _Box(center - w / 2, top, w, h, lines)
        if not item.branches:
            return
        sizes = [max(self.size(b.items)[0] if b.items else LANE, LANE) for b in item.branches]
        x = center - (sum(sizes) + GAP_X * (len(sizes) - 1)) / 2
        for branch, bw in zip(item.branches, sizes):
            if branch.items:
                self.place(branch.items, x, bw, top + h + GAP_Y)
            else:
                self.lanes[branch.id] = (x + bw / 2, top + h)
            x += bw + GAP_X


def _shape(node: Node, box: _Box) -> str:
    style = f'fill="{_FILL[node.kind]}" stroke="#1f2a44" stroke-width="1.2"'
    if node.kind in ("if", "split"):
        x, y, w, h, tip = box.x, box.y, box.w, box.h, 16
        points = [(x + tip, y), (x + w - tip, y), (x + w, y + h / 2), (x + w - tip, y + h), (x + tip, y + h), (x, y + h / 2)]
        return f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in points)}" {style}/>'
    radius = box.h / 2 if node.kind in _DARK else 6
    dashed = ' stroke-dasharray="5 3"' if node.kind in ("wait", "wait_for") else ""
    return (f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" '
            f'rx="{radius:.1f}" {style}{dashed}/>')


def to_svg(sequence: Sequence) -> str:
    flow = build_flow(sequence)
    layout = _Layout()
    width, height = layout.size(flow.items)
    layout.place(flow.items, MARGIN, width, MARGIN)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 2 * MARGIN:.0f}" height="{height + 2 * MARGIN:.0f}" '
        f'viewBox="0 0 {width + 2 * MARGIN:.0f} {height + 2 * MARGIN:.0f}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="{FONT_SIZE}">',
        f"<title>{escape(sequence.id)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    for edge in flow.edges:
        parts += _edge(edge, layout)
    kinds = {n.id: n for n in flow.nodes}
    for node_id, box in layout.boxes.items():
        node = kinds[node_id]
        colour = "#ffffff" if node.kind in _DARK else "#1f2a44"
        parts.append(f'<g class={quoteattr(node.kind)}>{_shape(node, box)}')
        first = box.y + PAD + FONT_SIZE - 1
        for i, line in enumerate(box.lines):
            parts.append(f'<text x="{box.cx:.1f}" y="{first + i * LINE_HEIGHT:.1f}" text-anchor="middle" '
                         f'fill="{colour}">{escape(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _edge(edge: Edge, layout: _Layout) -> list[str]:
    source, target = layout.boxes[edge.source], layout.boxes[edge.target]
    sx, sy, tx, ty = source.cx, source.y + source.h, target.cx, target.y
    below = sy + GAP_Y / 2
    above = ty - GAP_Y / 2
    lane_x = layout.lanes[edge.lane][0] if edge.lane else sx
    corners = [(sx, sy), (sx, below), (lane_x, below), (lane_x, above), (tx, above), (tx, ty)]
    points = [p for i, p in enumerate(corners) if i == 0 or p != corners[i - 1]]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    out = [f'<polyline points="{path}" fill="none" stroke="#555555" stroke-width="1.2" marker-end="url(#arrow)"/>']
    if edge.label:
        # Next to the first stretch that is this edge's own: its lane, or the arm's first step.
        lx, ly = (lane_x + 5, below + FONT_SIZE + 2) if edge.lane or ty - sy > GAP_Y + 1 else (tx + 5, ty - 6)
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#555555" font-size="{FONT_SIZE - 1}">'
                   f"{escape(edge.label)}</text>")
    return out
