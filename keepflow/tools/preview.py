"""`keepflow preview`: every message one customer could get from a sequence, before it goes live.

Nothing is sent and nothing runs: the steps are walked as written, with every arm of every `if`,
every `split` variant and every `on_timeout` branch shown and labelled, and `start:` followed
into the sequence it starts. Templates are rendered with the same renderer and context a run
uses, so a missing variable shows up here as it would on a real message. No activity runs: a
`do:` step's result is the sample given with `--do`, or a placeholder the preview names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, assert_never

from pydantic import ValidationError

from keepflow.insights import rfm
from keepflow.language import expressions, flex
from keepflow.language.catalog import Catalog
from keepflow.language.channels import CHANNEL_FACTS, ChannelName
from keepflow.language.dsl import (
    DoStep,
    ExitStep,
    IfStep,
    SendStep,
    Sequence,
    SplitStep,
    StartStep,
    Step,
    WaitForStep,
    WaitStep,
    step_path,
)
from keepflow.language.durations import format_duration, parse_duration
from keepflow.language.rendering import Renderer, TemplateError
from keepflow.runtime import send_rules
from keepflow.runtime.events import CustomerIn, OrderIn
from keepflow.runtime.payloads import SendRequest
from keepflow.runtime.registry import Registered, discover, load_catalog

SAMPLE_UNSUBSCRIBE_URL = "https://keepflow.example.com/unsubscribe/preview-sample-link"


class PreviewError(ValueError):
    """A problem with what the marketer asked for (unknown sequence, unreadable file)."""


@dataclass(frozen=True)
class When:
    """When a step happens: a fixed offset from the start, or from an awaited event."""

    offset: timedelta = timedelta(0)
    after: str | None = None  # e.g. "order.shipped (up to 7d)"

    def later(self, duration: timedelta) -> When:
        return When(self.offset + duration, self.after)

    @property
    def day(self) -> float | None:
        return None if self.after else self.offset / timedelta(days=1)

    def describe(self) -> str:
        if self.after is None:
            days, rest = divmod(self.offset, timedelta(days=1))
            return f"day {days}" + (f" +{format_duration(rest)}" if rest else "")
        if not self.offset:
            return f"after {self.after}"
        return f"{format_duration(self.offset)} after {self.after}"


@dataclass
class Message:
    number: int
    sequence_id: str
    path: str
    channel: str
    template: str
    category: str
    when: When
    branch: list[str]
    locale: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    error: str | None = None
    # A step with `fallback:`: set when this customer would get it on the fallback, and why not
    # on the step's own channel ("no LINE account").
    fallback_because: str | None = None
    alt_text: str | None = None  # a LINE Flex message's; its text is then the words in its bubbles

    @property
    def channel_text(self) -> str:
        return f"{self.channel} (fallback: {self.fallback_because})" if self.fallback_because else self.channel


@dataclass
class Note:
    """Something the marketer should know that is not a message: a branch, a simulation, an exit."""

    text: str
    branch: list[str]


@dataclass
class Preview:
    sequence_id: str
    locale: str | None
    entries: list[Message | Note] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return [e for e in self.entries if isinstance(e, Message)]


def open_sequence(sequences_path: Path, templates_dir: Path | None, sequence_id: str) -> tuple[Catalog, Sequence]:
    """The catalog and the named sequence; an unknown id names the ones there are."""
    catalog = load_catalog(sequences_path, templates_dir)
    sequence = catalog.sequences.get(sequence_id)
    if sequence is None:
        known = ", ".join(catalog.sequences)
        raise PreviewError(f"there is no sequence {sequence_id!r} in {sequences_path.name}; known sequences: {known}")
    return catalog, sequence


def read_json_part(path: Path, part: str, model: type[CustomerIn] | type[OrderIn]) -> dict[str, Any]:
    """A customer or order from a JSON file: on its own, or inside an event (as examples/ has)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PreviewError(f"cannot read {path.name}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise PreviewError(f"{path.name} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get(part), dict):
        data = data[part]
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or part}: {e['msg']}" for e in err.errors())
        raise PreviewError(f"{path.name} is not a valid {part}: {problems}") from None


class _Walker:
    def __init__(self, catalog: Catalog, renderer: Renderer, locale: str | None, now: datetime,
                 unsubscribe_url: str, preview: Preview, results: Mapping[str, dict[str, Any]],
                 activities: Mapping[str, Registered]):
        self.catalog = catalog
        self.results = results
        self.activities = activities
        self.renderer = renderer
        self.locale = locale
        self.now = now
        self.unsubscribe_url = unsubscribe_url
        self.preview = preview

    def note(self, text: str, branch: list[str]) -> None:
        self.preview.entries.append(Note(text, branch))

    def sequence(self, sequence: Sequence, context: dict[str, Any], when: When, branch: list[str],
                 started: tuple[str, ...]) -> None:
        self.steps(sequence, sequence.steps, "", context, when, branch, started + (sequence.id,))

    def steps(self, sequence: Sequence, steps: list[Step], prefix: str, context: dict[str, Any], when: When,
              branch: list[str], started: tuple[str, ...]) -> When | None:
        """Walk a list of steps; the time after the last, or None when it ends the run (`exit`)."""
        for index, step in enumerate(steps):
            path = step_path(prefix, index, step)
            next_when = self.step(sequence, step, path, context, when, branch, started)
            if next_when is None:
                return None
            when = next_when
        return when

    def step(self, sequence: Sequence, step: Step, path: str, context: dict[str, Any], when: When,
             branch: list[str], started: tuple[str, ...]) -> When | None:
        match step:
            case SendStep():
                self.send(sequence, step, path, context, when, branch)
                return when
            case WaitStep():
                return when.later(step.wait)
            case WaitForStep():
                return self.wait_for(sequence, step, path, context, when, branch, started)
            case IfStep():
                outcome = self.outcome(step.if_, context)
                arms = [(f"if {step.if_} → then{outcome.get('then', '')}", step.then, f"{path}.then", context),
                        (f"if {step.if_} → else{outcome.get('else', '')}", step.else_, f"{path}.else", context)]
                return self.arms(sequence, arms, context, when, branch, started)
            case SplitStep():
                total = sum(v.weight for v in step.split)
                arms = []
                for variant in step.split:
                    arm_context = {**context, "variants": {**context.get("variants", {}), path: variant.variant}}
                    label = f"split: variant {variant.variant} ({variant.weight / total:.0%})"
                    arms.append((label, variant.steps, f"{path}.{variant.variant}", arm_context))
                return self.arms(sequence, arms, context, when, branch, started)
            case DoStep():
                self.do(step, context, branch, when)
                return when
            case StartStep():
                self.start(step, context, when, branch, started)
                return when
            case ExitStep():
                self.note(f"exit: the {sequence.id} run ends here ({step.exit})", branch)
                return None
            case _:
                assert_never(step)

    def outcome(self, expression: str, context: dict[str, Any]) -> dict[str, str]:
        """Which arm this customer would take, when the preview's data is enough to tell."""
        try:
            taken = "then" if expressions.truthy(expression, context) else "else"
        except Exception:  # placeholder data from a `do:` the preview does not run
            return {}
        return {taken: " (this customer)"}

    def arms(self, sequence: Sequence, arms: list[tuple[str, list[Step], str, dict[str, Any]]],
             context: dict[str, Any], when: When, branch: list[str], started: tuple[str, ...]) -> When | None:
        """Each arm from the same moment and context, one after the other; the time after them."""
        ends: list[When] = []
        merged: dict[str, Any] = dict(context)
        for label, steps, prefix, start_context in arms:
            arm_context = dict(start_context)
            arm_branch = [*branch, label]
            if not steps:
                self.note("nothing is sent on this branch", arm_branch)
            end = self.steps(sequence, steps, prefix, arm_context, when, arm_branch, started)
            if end is not None:
                ends.append(end)
            # Later steps may use what any arm set up (a coupon made in one variant): keep it all.
            merged.update({k: v for k, v in arm_context.items() if k not in context})
        context.update(merged)
        if not ends:
            return None
        # Arms may wait different lengths; what follows is shown at the latest of them.
        return max(ends, key=lambda w: (w.after is not None, w.offset))

    def wait_for(self, sequence: Sequence, step: WaitForStep, path: str, context: dict[str, Any], when: When,
                 branch: list[str], started: tuple[str, ...]) -> When | None:
        timeout = format_duration(step.timeout)
        if step.on_timeout == "exit":
            self.note(f"if no {step.wait_for} arrives within {timeout}, the {sequence.id} run ends", branch)
        elif isinstance(step.on_timeout, list):
            label = f"wait_for {step.wait_for} → on timeout (none within {timeout})"
            timed_out = when.later(step.timeout)
            if not step.on_timeout:
                self.note("nothing is sent on this branch", [*branch, label])
            self.steps(sequence, step.on_timeout, f"{path}.on_timeout", dict(context), timed_out,
                       [*branch, label], started)
        if step.as_:
            context[step.as_] = {"id": f"preview-{step.wait_for}", "type": step.wait_for,
                                 "occurred_at": self.now.isoformat(), "data": {}}
            self.note(f"`{step.as_}` is a sample {step.wait_for} event with no data", branch)
        return When(timedelta(0), f"{step.wait_for} (up to {timeout})")

    def do(self, step: DoStep, context: dict[str, Any], branch: list[str], when: When) -> None:
        sample = self.results.get(step.do)
        if sample is not None:
            result = dict(sample)
            shown = f"the sample result given with --do {step.do}"
        elif step.do == "create_coupon":
            prefix = str(step.with_.get("prefix", "KEEP"))
            valid_for = step.with_.get("valid_for", "7d")
            try:
                lasts = parse_duration(valid_for)
            except (TypeError, ValueError):
                lasts = timedelta(days=7)
            result = {"code": f"{prefix}-PREVIEW1", "percent": step.with_.get("percent", 10),
                      "expires_at": (self.now + lasts).isoformat()}
            shown = f"a sample coupon {result['code']} (--do create_coupon gives another)"
        else:
            result = {}
            shown = (f"empty: no --do {step.do} sample was given and a preview runs no activity, so what reads it "
                     f"cannot show; give one, e.g. --do {step.do}='{{...}}' ({self.returns(step.do)})")
        if step.as_:
            context[step.as_] = result
            self.note(f"do: {step.do} → `{step.as_}` is {shown}", branch)
        else:
            self.note(f"do: {step.do} is not run in a preview", branch)

    def returns(self, activity: str) -> str:
        registered = self.activities.get(activity)
        model = registered.result_model if registered else None
        return f"it returns {', '.join(model.model_fields)}" if model else "any JSON object"

    def start(self, step: StartStep, context: dict[str, Any], when: When, branch: list[str],
              started: tuple[str, ...]) -> None:
        label = f"start → {step.start}"
        if step.start in started:
            self.note(f"{label}: already shown above, not followed again (it would loop)", branch)
            return
        self.note(f"{label}: its messages follow", branch)
        # The started run gets a copy of this run's context, as `start_sequence` passes it.
        self.sequence(self.catalog.sequences[step.start], dict(context), when, [*branch, label], started)

    def send(self, sequence: Sequence, step: SendStep, path: str, context: dict[str, Any], when: When,
             branch: list[str]) -> None:
        category = step.category or sequence.category
        customer = context.get("customer") or {}
        channel, because = _channel_for(sequence, step, path, category, customer, self.now)
        message = Message(number=len(self.preview.messages) + 1, sequence_id=sequence.id, path=path,
                          channel=channel, template=step.template, category=category, when=when,
                          branch=list(branch), fallback_because=because)
        variables = dict(context)
        if category == "marketing" and CHANNEL_FACTS[channel].unsubscribe_link:
            variables["unsubscribe_url"] = self.unsubscribe_url
        try:
            rendered = self.renderer.render(channel, step.template, self.locale or customer.get("locale"), variables)
        except TemplateError as err:
            message.error = str(err)
        else:
            message.locale, message.subject = rendered.locale, rendered.subject
            # An email's text is its plain-text part, as it goes out: links written with their address.
            message.text = rendered.text
            message.html = rendered.body if CHANNEL_FACTS[channel].html else None
            if rendered.flex is not None:
                message.alt_text = str(rendered.flex.get("altText"))
                message.text = "\n".join(flex.texts(rendered.flex.get("contents")))
        self.preview.entries.append(message)


def _channel_for(sequence: Sequence, step: SendStep, path: str, category: str, customer: dict[str, Any],
                 now: datetime) -> tuple[ChannelName, str | None]:
    """The channel this customer would get the step on, and why the fallback if it is that: the
    sending rules' own choice, from the customer as given (addresses and consents; the store's
    suppressions and the clock's quiet hours are the run's to know)."""
    if step.fallback is None:
        return step.send, None
    request = SendRequest(workflow_id="preview", sequence_id=sequence.id, step=path, channel=step.send,
                          fallback=step.fallback, template=step.template, category=category,
                          context={"customer": customer})
    facts: dict[str, send_rules.Facts] = {
        channel: send_rules.Facts(recipient=customer.get(CHANNEL_FACTS[channel].address_field),
                                  consents=customer.get("consents") or {})
        for channel in (step.send, step.fallback)}
    chosen = send_rules.choose(request, facts, now)
    return chosen.channel, chosen.fallback_because


def build_preview(catalog: Catalog, sequence: Sequence, customer: dict[str, Any], order: dict[str, Any] | None = None,
                  locale: str | None = None, now: datetime | None = None,
                  unsubscribe_url: str = SAMPLE_UNSUBSCRIBE_URL, scores: dict[str, Any] | None = None,
                  results: Mapping[str, dict[str, Any]] | None = None) -> Preview:
    """`results`: sample results of `do:` steps by activity (keepflow/tools/sample_results.py), checked already."""
    customer = {**customer, "locale": locale} if locale else dict(customer)
    # Templates may read `customer.rfm`: a customer not scored yet, as the router gives it, or `scores`.
    customer["rfm"] = {**rfm.unscored(), **(customer.get("rfm") or {}), **(scores or {})}
    context: dict[str, Any] = {"customer": customer, "brand": catalog.file.brand}
    if order is not None:
        context["order"] = order
    preview = Preview(sequence.id, customer.get("locale"))
    walker = _Walker(catalog, Renderer(catalog.templates_dir), customer.get("locale"),
                     now or datetime.now(timezone.utc), unsubscribe_url, preview, results or {}, discover())
    walker.sequence(sequence, context, When(), [], ())
    return preview


def write_html(preview: Preview, folder: Path) -> list[Path]:
    """Each rendered email as DIR/<nn>-<sequence>-<step>-<template>.html, to open in a browser."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for m in preview.messages:
        if m.html is None:
            continue
        path = folder / f"{m.number:02d}-{m.sequence_id}-{m.path}-{m.template}.html"
        path.write_text(m.html, encoding="utf-8")
        written.append(path)
    return written


def print_preview(preview: Preview, console=None) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = console or Console()
    count = len(preview.messages)
    console.print(Text(f"{preview.sequence_id}: {count} message{'s' if count != 1 else ''} "
                       f"(every branch shown; locale {preview.locale or 'en'})", style="bold"))
    for entry in preview.entries:
        where = " › ".join(entry.branch)
        if isinstance(entry, Note):
            console.print(Text(f"  · {entry.text}" + (f"   [{where}]" if where else ""), style="dim"))
            continue
        m = entry
        title = f"#{m.number:02d} {m.when.describe()} · {m.channel_text} · {m.sequence_id}/{m.template} ({m.category})"
        if m.error:
            body = Text(f"could not render: {m.error}", style="bold red")
        else:
            body = Text()
            if m.subject is not None:
                body.append(f"Subject: {m.subject}\n\n", style="bold")
            if m.alt_text is not None:
                body.append(f"Flex message · alt text: {m.alt_text}\n\n", style="bold")
            body.append(m.text or "")
        # Text, not str: an expression such as profile['x'] in a label is not rich markup.
        console.print(Panel(body, title=Text(title), title_align="left", subtitle=Text(where) if where else None,
                            subtitle_align="left",
                            border_style="red" if m.error else ("cyan" if m.channel == "email" else "green")))
    errors = sum(1 for m in preview.messages if m.error)
    if errors:
        console.print(Text(f"{errors} message{'s' if errors != 1 else ''} could not be rendered: fix the "
                           "template or the sample data above", style="bold red"))
