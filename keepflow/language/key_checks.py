"""What a sequence's `key:` means for who hears what and who may enter, checked by `keepflow validate`.

The router (keepflow.runtime.routing) gives a run the id `<sequence>/<key>`, the key rendered
over the trigger's context, and delivers an event to the run whose id the same key, rendered over
that event's own context, names. So:

- A run keyed by its order (`key: order.id`) hears only events about that order. An `order.created`
  is the creation of a new order, with an id of its own: when every way into the sequence is an
  event about an order that exists already (an order event, directly or through `start:`), no
  `order.created` can ever reach it. A `wait_for` on it always times out, a goal never converts.
- A run keyed by its customer (`key: customer.id`, the default) is one per customer. Temporal
  refuses a second run under the same id, so a trigger that comes again for the same customer
  (each order) starts nothing for them after the first, until the server forgets the old run,
  unless the sequence declares `reentry:` (the router then starts a new run after its window).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Protocol

from jinja2 import nodes
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from keepflow.language.dsl import DoStep, SendStep, Sequence, SequencesFile, StartStep, WaitForStep
from keepflow.language.durations import format_duration
from keepflow.language.expressions import ExpressionError, parse
from keepflow.language.problems import Severity
from keepflow.language.yaml_source import StepAt, key_pos, value_pos

# Each is about one order that exists already: it comes after that order's own order.created.
ORDER_EVENTS = frozenset({"order.created", "order.cancelled", "order.shipped", "order.delivered", "order.refunded"})
# Built-in events that come again and again for the same customer (customer.created comes once;
# a shop's own events are the shop's to know).
REPEATING = ORDER_EVENTS | {"customer.updated", "customer.active", "review.submitted", "referral.created"}
# What names one order; a key on anything else about it (`order.currency`) is shared by many.
ORDER_IDENTITY = frozenset({"order.id", "order.number"})
NEW_ORDER = "order.created"
# What each place that names an event loses when the event never comes.
CONSEQUENCE = {
    "wait_for": "this wait always times out",
    "exit_on": "it never ends a run",
    "goal": "a run never ends as converted",
    "superseded_by": "it never drops this message",
}


class Semantics(Protocol):
    """What `checks.Semantics` shares with these checks (a protocol, so neither imports the other)."""

    file: SequencesFile
    seq_nodes: list[CommentedMap]
    steps: list[list[StepAt]]

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None: ...


def check(sem: Semantics) -> None:
    entries = _entry_triggers(sem.file)
    # A step that keeps its result as `order` replaces the trigger's order in the context: a key
    # read after it may name any order, so nothing is said about order keys then.
    order_replaced = any(isinstance(s, (DoStep, WaitForStep)) and s.as_ == "order"
                         for seq in sem.file.sequences for _, s in seq.walk())
    for seq, node, steps in zip(sem.file.sequences, sem.seq_nodes, sem.steps):
        fields = _fields(seq.key)
        reached_by = entries.get(seq.id, set())
        if fields & ORDER_IDENTITY and not order_replaced and reached_by and reached_by <= ORDER_EVENTS:
            for field, pos in _new_orders(seq, node, steps):
                sem.add(pos, _unheard(field, seq.key))
        if "customer.id" in fields and not any(f.startswith("order.") for f in fields):
            _once_only(sem, seq, node)
        _reentry(sem, seq, node)


def _fields(expression: str) -> set[str]:
    """`customer.id`, `order.id`: the fields of the context a key reads (`root.field`)."""
    try:
        tree = parse(expression)
    except ExpressionError:
        return set()  # reported by the expression check
    found = set()
    for node in [tree, *tree.find_all((nodes.Getattr, nodes.Getitem))]:
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)) or not isinstance(node.node, nodes.Name):
            continue
        if isinstance(node, nodes.Getattr):
            found.add(f"{node.node.name}.{node.attr}")
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.add(f"{node.node.name}.{node.arg.value}")
    return found


def _entry_triggers(file: SequencesFile) -> dict[str, set[str]]:
    """Per sequence, the triggers (event types; `inactivity` for the scan) of every run it starts
    in: its own, or, for one only started by others, theirs, through any chain of `start:`s."""
    starters: dict[str, set[str]] = {}
    for seq in file.sequences:
        for _, step in seq.walk():
            if isinstance(step, StartStep) and step.start != seq.id:
                starters.setdefault(step.start, set()).add(seq.id)
    by_id = file.by_id()

    def triggers(seq_id: str, seen: frozenset[str]) -> set[str]:
        seq = by_id.get(seq_id)
        if seq is None or seq_id in seen:
            return set()
        if seq.trigger is not None:
            return {seq.trigger if isinstance(seq.trigger, str) else "inactivity"}
        return {t for starter in starters.get(seq_id, ()) for t in triggers(starter, seen | {seq_id})}

    return {seq.id: triggers(seq.id, frozenset()) for seq in file.sequences}


def _new_orders(seq: Sequence, node: CommentedMap, steps: list[StepAt]) -> Iterator[tuple[str, tuple[int, int]]]:
    for field in ("exit_on", "goal"):
        items = node.get(field)
        for index, event_type in enumerate(getattr(seq, field)):
            if event_type == NEW_ORDER:
                yield field, value_pos(items, index) if isinstance(items, CommentedSeq) else value_pos(node, field)
    for at in steps:
        if isinstance(at.step, WaitForStep) and at.step.wait_for == NEW_ORDER:
            yield "wait_for", at.pos("wait_for")
        elif isinstance(at.step, SendStep) and NEW_ORDER in at.step.superseded_by:
            items = at.node.get("superseded_by") if isinstance(at.node, CommentedMap) else None
            yield "superseded_by", (value_pos(items, at.step.superseded_by.index(NEW_ORDER))
                                    if isinstance(items, CommentedSeq) else at.pos("superseded_by"))


def _unheard(field: str, key: str) -> str:
    same_order = {"wait_for": "wait for an event about the same order, such as order.shipped or order.delivered",
                  "exit_on": "end it on an event about the same order, such as order.refunded or order.cancelled",
                  "goal": "count as its goal an event about the same order, such as review.submitted",
                  "superseded_by": "name an event about the same order, such as order.delivered"}[field]
    return (f"{field}: {NEW_ORDER} can never be heard here, so {CONSEQUENCE[field]}: this sequence has one run "
            f"per order (key: {key}), and a new order has a new id, so its {NEW_ORDER} goes to a run of its own, "
            f"never to this one. To hear the customer's next order, key this sequence by customer.id "
            f"(with reentry: {{after: 90d}} to let them in again), or {same_order}")


def _once_only(sem: Semantics, seq: Sequence, node: CommentedMap) -> None:
    trigger = seq.trigger
    if not isinstance(trigger, str) or trigger not in REPEATING or seq.reentry is not None:
        return
    per_order = " with every order, so" if trigger in ORDER_EVENTS else ""
    by_order = ", or key: order.id for one run per order" if trigger in ORDER_EVENTS else ""
    sem.add(value_pos(node, "trigger"),
            f"trigger: {trigger} comes{per_order} again and again for the same customer, but this sequence has "
            f"one run per customer (key: {seq.key}) and Temporal refuses a second run under the same id: a customer "
            f"can enter it only once (until the server forgets their run), and later {trigger} events start "
            f"nothing for them, without notice. To let them in again, add reentry: {{after: 90d}} "
            f"(a new run once their last has ended and 90 days have passed since the event that started it){by_order}", "warning")


def _reentry(sem: Semantics, seq: Sequence, node: CommentedMap) -> None:
    if seq.reentry is None:
        return
    pos = key_pos(node, "reentry")
    after = format_duration(seq.reentry.after)
    if seq.inactivity is not None:
        sem.add(pos, f"reentry: the inactivity scan starts this sequence, and lets a customer in again after its "
                     f"cool_down (now {format_duration(seq.cool_down)}), not after reentry; write cool_down: {after} "
                     "instead")
    elif seq.trigger is None:
        sem.add(pos, "reentry: this sequence has no trigger, and reentry applies to the runs a trigger starts; a "
                     "start: step starts one run per key whatever this says. Give the sequence a trigger of its own, "
                     "or key it by what is new each time it is started, such as order.id")
    elif seq.trigger == NEW_ORDER and _fields(seq.key) & ORDER_IDENTITY:
        sem.add(pos, f"reentry does nothing here: every {NEW_ORDER} is a new order, which gets a run of its own "
                     f"(key: {seq.key}); remove reentry, or key this sequence by customer.id to let a customer in "
                     "again on a later order", "warning")
    elif seq.reentry.after <= timedelta(0):
        reentry_node = node.get("reentry")
        sem.add(value_pos(reentry_node, "after") if isinstance(reentry_node, CommentedMap) else pos,
                f"reentry: after must be longer than 0s: it is how long after the event that let a customer in "
                f"last they may enter again, e.g. {{after: 90d}}")
