"""Sample results for `do:` steps, for `keepflow preview` and `keepflow simulate`.

    --do create_coupon='{"code": "WELCOME10", "percent": 10, "expires_at": "2027-01-12T00:00:00Z"}'
    --do load_customer=@profile.json

A preview runs no activity and a simulation may not reach what one calls (a CRM), yet conditions
and templates read the result. A sample stands in for it, checked against what the activity
really returns (its return model, keepflow/runtime/registry.py), so a preview never shows a
result the activity could not give; one given as JSON is kept as the run would keep it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from keepflow.language.schema_errors import did_you_mean
from keepflow.runtime.registry import Registered, result_to_json

EXAMPLE = """--do create_coupon='{"code": "WELCOME10", "percent": 10, "expires_at": "2027-01-12T00:00:00Z"}'"""


class SampleResultError(ValueError):
    """A sample result that could not stand in for its activity's: said in one line."""


def read_do_options(options: list[str] | None) -> dict[str, Any]:
    """`NAME=JSON` or `NAME=@FILE.json` per `--do`; a later one for the same activity wins."""
    samples: dict[str, Any] = {}
    for option in options or []:
        name, sep, value = option.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SampleResultError(f"--do {option!r}: write it as NAME=JSON or NAME=@FILE.json, e.g. {EXAMPLE}")
        where = f"--do {name}"
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                value = path.read_text(encoding="utf-8")
            except OSError as err:
                raise SampleResultError(f"{where}: cannot read {path}: {err.strerror or err}") from None
            where = f"--do {name} ({path.name})"
        try:
            samples[name] = json.loads(value)
        except json.JSONDecodeError as err:
            raise SampleResultError(f"{where} is not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    return samples


def checked_results(samples: Mapping[str, Any], activities: Mapping[str, Registered],
                    where: str = "--do") -> dict[str, dict[str, Any]]:
    """Each sample as the run would keep the activity's result; SampleResultError for the first
    that names no activity or is not what the activity returns."""
    checked: dict[str, dict[str, Any]] = {}
    for name, sample in samples.items():
        registered = activities.get(name)
        if registered is None:
            known = sorted(activities)
            guess = did_you_mean(name, known)
            hint = f"did you mean {guess!r}?" if guess else "activities: " + (", ".join(known) or "none")
            raise SampleResultError(f"{where} {name}: no activity {name!r}; {hint}")
        if not isinstance(sample, dict):
            raise SampleResultError(f"{where} {name}: a result is a JSON object, e.g. {EXAMPLE}")
        model = registered.result_model
        if model is None:
            checked[name] = sample  # it returns a dict: any keys may come back
            continue
        try:
            checked[name] = result_to_json(model.model_validate(sample))
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'result'}: {e['msg']}"
                                 for e in err.errors(include_url=False))
            raise SampleResultError(f"{where} {name}: not what {name} returns: {problems} "
                                    f"(it returns {', '.join(model.model_fields)})") from None
    return checked
