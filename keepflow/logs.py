"""How Keepflow's processes log: one JSON object a line in production, readable lines under
`keepflow dev`, each carrying what it is about (an event, a run, a message) and never a
customer's address or phone number.

What a line is about comes from three places: `about(...)`, which intake, routing and the send
set for the work they do (an asyncio task or a thread started inside inherits it); inside an
activity, `activity.info()` (its workflow and run); and the `temporal_workflow` and
`temporal_activity` dicts Temporal's `workflow.logger` and `activity.logger` attach. The fields:
event_id, workflow_id, run_id, message_key, activity; unset ones are left out.

Imports nothing of Keepflow's, so every layer may use it. Workflow code logs only through
`workflow.logger`, which Temporal keeps quiet on replay.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

from temporalio import activity

FIELDS = ("event_id", "workflow_id", "run_id", "message_key", "activity")

_about: ContextVar[dict[str, str]] = ContextVar("keepflow_log_about", default={})

# A last guard in production: any address or number that reaches a log line (a provider's error
# quoting the recipient, the outbox's line) is masked before the line leaves the process.
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+\d[\d ()-]{6,}\d")

Style = Literal["json", "text"]

READABLE = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(about)s"


@contextlib.contextmanager
def about(**fields: str) -> Iterator[None]:
    """Lines logged inside (and in tasks and threads started inside) carry these fields."""
    token = _about.set({**_about.get(), **fields})
    try:
        yield
    finally:
        _about.reset(token)


def current() -> dict[str, str]:
    """The fields a line logged here would carry."""
    fields = dict(_about.get())
    if activity.in_activity():
        info = activity.info()
        fields.setdefault("workflow_id", info.workflow_id or "")
        fields.setdefault("run_id", info.workflow_run_id or "")
        fields.setdefault("activity", info.activity_type)
    return {k: v for k, v in fields.items() if v}


class _About(logging.Filter):
    """Puts the fields on each record, as attributes (for the JSON formatter) and as one suffix
    (for the readable one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        workflow = getattr(record, "temporal_workflow", None)
        if isinstance(workflow, dict):
            fields.setdefault("workflow_id", workflow.get("workflow_id", ""))
            fields.setdefault("run_id", workflow.get("run_id", ""))
        task = getattr(record, "temporal_activity", None)
        if isinstance(task, dict):
            fields.setdefault("workflow_id", task.get("workflow_id", ""))
            fields.setdefault("run_id", task.get("workflow_run_id", ""))
            fields.setdefault("activity", task.get("activity_type", ""))
        for name in FIELDS:
            if fields.get(name) and not hasattr(record, name):
                setattr(record, name, fields[name])
        shown = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None))
        record.about = f" [{shown}]" if shown else ""
        return True


def mask(text: str) -> str:
    """`text` with anything shaped like an email address or a phone number replaced."""
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))


class _Masked(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def formatter(style: Style) -> logging.Formatter:
    if style == "text":
        return logging.Formatter(READABLE)
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
        # Temporal's dicts are read into the fields above; `about` is the readable form's suffix.
        reserved_attrs=[*RESERVED_ATTRS, "temporal_workflow", "temporal_activity", "about"],
    )


def handler(style: Style, stream: Any = None) -> logging.Handler:
    """A handler on `stream` (default stderr) in `style`. The JSON one, production's, masks any
    address or number a line would carry."""
    made = logging.StreamHandler(stream)
    made.setFormatter(formatter(style))
    made.addFilter(_About())
    if style == "json":
        made.addFilter(_Masked())
    return made


def configure(style: Style, level: int = logging.INFO) -> None:
    """The root logger's one handler: `handler(style)`."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler(style))
    root.setLevel(level)
    # Each migration logs a line at INFO: noise at every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)
