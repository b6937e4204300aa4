"""Register an activity that sequences can call with `do:`.

    @activity("create_coupon")
    def create_coupon(args: CreateCouponArgs, ctx: ActivityContext) -> Coupon: ...

The first parameter's type is the argument model: `keepflow validate` checks a step's `with:`
against it, and the worker validates it again at run time. The return value (a pydantic model
or a JSON-safe dict) is bound to the step's `as:` name for later steps and templates.
Any module in `activities/` (but `activities/builtin/`, the engine's own) is imported by
`discover()`, so one new file is all it takes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from temporalio import activity as temporal_activity
from temporalio.exceptions import ApplicationError

from keepflow.language import catalog
from keepflow.language.catalog import Catalog
from keepflow.language.problems import Problem
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


_registry: dict[str, Registered] = {}


def activity(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
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
        if name == "send_message":
            raise ValueError("activity name 'send_message' is Keepflow's own send step; choose another name")
        _registry[name] = Registered(name, fn, args_model, inspect.getdoc(fn) or "")
        return fn

    return register


# The developers' folder. The engine's own activities live in its `builtin` package, which the
# worker registers by hand: they are not plug-ins and take no `do:` arguments.
PLUGINS = "activities"
BUILTIN = "builtin"


def discover() -> dict[str, Registered]:
    """Import every module in `activities/` so their `@activity` decorators run."""
    package = importlib.import_module(PLUGINS)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != BUILTIN:
            importlib.import_module(f"{PLUGINS}.{module.name}")
    return dict(_registry)


def activity_args() -> dict[str, type[BaseModel]]:
    """What `do:` may call, for the language's checks: name -> argument model."""
    return {name: registered.args_model for name, registered in discover().items()}


def load_catalog(path: Path, templates_dir: Path | None = None) -> Catalog:
    """The sequences file with its `do:` steps checked against the registered activities."""
    return catalog.load(path, templates_dir, activity_args())


def check_catalog(path: Path, templates_dir: Path | None = None) -> tuple[Catalog | None, list[Problem]]:
    return catalog.check(path, templates_dir, activity_args())


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
        try:
            args = registered.args_model.model_validate(request.args)
        except ValidationError as err:
            # `validate` catches this before deploy; a run still must not retry it forever.
            raise ApplicationError(f"{registered.name}: {err}", type="InvalidArguments", non_retryable=True) from err
        ctx = ActivityContext(request.workflow_id, request.sequence_id, request.step, request.context, settings, db)
        return result_to_json(registered.fn(args, ctx))

    run.__name__ = run.__qualname__ = registered.name
    return temporal_activity.defn(name=registered.name)(run)
