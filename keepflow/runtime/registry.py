"""Register an activity that sequences can call with `do:`.

    @activity("create_coupon")
    def create_coupon(args: CreateCouponArgs, ctx: ActivityContext) -> Coupon: ...

    @activity("notify_crm", timeout="2m", max_attempts=5)    # its own limits

The first parameter's type is the argument model: `keepflow validate` checks a step's `with:`
against it, and the worker validates it again at run time. The return value (a pydantic model
or a JSON-safe dict) is bound to the step's `as:` name for later steps and templates.
Any module in `activities/` (but `activities/builtin/`, the engine's own) is imported by
`discover()`, so one new file is all it takes.
Registration refuses what would only fail later: an `async def`, a name a `do:` step cannot
write, one of Keepflow's own activity names, limits that are not limits.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from temporalio import activity as temporal_activity
from temporalio.exceptions import ApplicationError

from keepflow.language import catalog
from keepflow.language.catalog import Catalog
from keepflow.language.dsl import ActivityOptions
from keepflow.language.durations import format_duration, parse_duration
from keepflow.language.problems import InvalidSequences, Problem
from keepflow.runtime.payloads import DoRequest
from keepflow.settings import Settings
from keepflow.store import Database


@dataclass(frozen=True)
class ActivityContext:
    """What a registered activity gets besides its arguments."""

    workflow_id: str
    sequence_id: str
    step: str
    # The run's context: customer, order, event, brand and earlier `as:` results.
    run: dict[str, Any]
    settings: Settings
    db: Database

    @property
    def key(self) -> str:
        """Unique per run and step: use it to make side effects idempotent across retries."""
        return f"{self.workflow_id}:{self.step}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.db.session() as session:
            yield session


@dataclass(frozen=True)
class Registered:
    name: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    description: str
    # Its own timeout and attempts; None keeps the defaults (DO_TIMEOUT and DO_RETRY in
    # workflows/sequence.py). A run gets them in its snapshot when it starts.
    options: ActivityOptions | None = None
    # What `as:` keeps, for `validate` to check its fields and preview and simulate to check a
    # sample against; None when the function returns a dict, whose keys only a run knows.
    result_model: type[BaseModel] | None = None


# The activities the worker runs besides the registered ones (worker.py). A `do:` step with one
# of these names would call Keepflow's own machinery with arguments it does not expect.
RESERVED = frozenset({"send_message", "start_sequence", "scan_inactive_page", "refresh_scores"})
# What a `do:` step may name (keepflow/language/dsl.py): another name could be registered, never called.
_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Set on each registered function, so discover() finds them again after reset().
_MARK = "__keepflow_activity__"

_registry: dict[str, Registered] = {}


def activity(name: str, *, timeout: str | timedelta | None = None,
             max_attempts: int | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the activity `do: <name>` runs.

    `timeout` bounds each attempt ("2m"; default 30 s); `max_attempts` counts the first try too
    (default 50). Attempts back off from 1 s to 5 min, within 2 hours in all (or one timeout,
    if longer).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"activity name {name!r}: a `do:` step can only name lowercase letters, digits and _, "
                         "starting with a letter (e.g. notify_crm)")
    if name in RESERVED:
        raise ValueError(f"activity name {name!r} is Keepflow's own; choose another name")
    options = _options(name, timeout, max_attempts)

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            # It would be called on a worker thread and return a coroutine nobody awaits.
            raise TypeError(
                f"activity {name!r}: write it as a plain `def`, not `async def`. Registered activities run on "
                "the worker's threads, beside the synchronous database and provider clients; call async "
                "code from it with asyncio.run() if you must"
            )
        params = list(inspect.signature(fn).parameters)
        hints = get_type_hints(fn)
        args_model = hints.get(params[0]) if params else None
        if len(params) != 2 or not (inspect.isclass(args_model) and issubclass(args_model, BaseModel)):
            raise TypeError(
                f"activity {name!r}: write it as `def {fn.__name__}(args: SomeModel, ctx: ActivityContext)`, "
                "where SomeModel is a pydantic model of its arguments"
            )
        if name in _registry and _registry[name].fn is not fn:
            raise ValueError(f"activity {name!r} is registered twice ({_registry[name].fn.__module__} and {fn.__module__})")
        returned = hints.get("return")
        result_model = returned if inspect.isclass(returned) and issubclass(returned, BaseModel) else None
        registered = Registered(name, fn, args_model, inspect.getdoc(fn) or "", options, result_model)
        _registry[name] = registered
        setattr(fn, _MARK, registered)
        return fn

    return register


def _options(name: str, timeout: str | timedelta | None, max_attempts: int | None) -> ActivityOptions | None:
    if timeout is not None:
        try:
            timeout = parse_duration(timeout)
        except ValueError as err:
            raise ValueError(f"activity {name!r}: timeout: {err}") from None
        if timeout <= timedelta(0):
            raise ValueError(f"activity {name!r}: timeout must be longer than 0s, got {format_duration(timeout)}")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1):
        # Temporal would read 0 as "retry for ever", which is no limit at all.
        raise ValueError(f"activity {name!r}: max_attempts must be a whole number of at least 1, got {max_attempts!r}")
    if timeout is None and max_attempts is None:
        return None
    return ActivityOptions(timeout=timeout, max_attempts=max_attempts)


# The developers' folder. The engine's own activities live in its `builtin` package, which the
# worker registers by hand: they are not plug-ins and take no `do:` arguments.
PLUGINS = "activities"
BUILTIN = "builtin"


def discover() -> dict[str, Registered]:
    """Import every module in `activities/` so their `@activity` decorators run; every registered activity."""
    package = importlib.import_module(PLUGINS)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name == BUILTIN:
            continue
        try:
            loaded = importlib.import_module(f"{PLUGINS}.{module.name}")
        except SyntaxError as err:
            # Reported like a sequences problem, so every command that loads the catalog (validate,
            # dev, worker, serve) says where to edit in one line instead of an import traceback.
            where = Path(err.filename or f"{PLUGINS}/{module.name}.py")
            raise InvalidSequences([Problem(where, err.lineno or 1, err.offset or 1,
                                            f"syntax error in this activity module: {err.msg} (fix it, or move "
                                            f"the file out of {PLUGINS}/)")]) from None
        # Imported before a reset(), a module does not run its decorators again: take what they marked.
        for value in vars(loaded).values():
            registered = getattr(value, _MARK, None)
            if isinstance(registered, Registered) and registered.fn is value:
                _registry.setdefault(registered.name, registered)
    return dict(_registry)


def reset() -> None:
    """Forget every registration (for tests that register their own); the next discover()
    registers this package's activities again."""
    _registry.clear()


def load_catalog(path: Path, templates_dir: Path | None = None, source: str | None = None) -> Catalog:
    """The sequences file (or `source`, a deployed version of it) with its `do:` steps checked
    against the registered activities."""
    return catalog.load(path, templates_dir, discover(), source)


def check_catalog(path: Path, templates_dir: Path | None = None,
                  source: str | None = None) -> tuple[Catalog | None, list[Problem]]:
    try:
        registered = discover()
    except InvalidSequences as broken:
        return None, broken.problems
    return catalog.check(path, templates_dir, registered, source)


def result_to_json(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise TypeError(f"an activity returns a pydantic model or a dict, not {type(value).__name__}")


def to_temporal(registered: Registered, settings: Settings, db: Database) -> Callable[..., Any]:
    """Wrap a registered function as the Temporal activity a `do:` step calls by name."""
    def run(request: DoRequest) -> dict[str, Any]:
        args = _arguments(registered, request)
        ctx = ActivityContext(request.workflow_id, request.sequence_id, request.step, request.context, settings, db)
        return result_to_json(registered.fn(args, ctx))

    return _named(registered, run)


def sample_activity(registered: Registered, result: dict[str, Any]) -> Callable[..., Any]:
    """The activity a `do:` step calls, answering `result` instead of running (`keepflow simulate --do`).
    Its arguments are still checked, as the real one would."""
    def run(request: DoRequest) -> dict[str, Any]:
        _arguments(registered, request)
        return dict(result)

    return _named(registered, run)


def _arguments(registered: Registered, request: DoRequest) -> BaseModel:
    try:
        return registered.args_model.model_validate(request.args)
    except ValidationError as err:
        # `validate` catches this before deploy; a run still must not retry it forever.
        raise ApplicationError(f"{registered.name}: {err}", type="InvalidArguments", non_retryable=True) from err


def _named(registered: Registered, run: Callable[[DoRequest], dict[str, Any]]) -> Callable[..., Any]:
    run.__name__ = run.__qualname__ = registered.name
    return temporal_activity.defn(name=registered.name)(run)
