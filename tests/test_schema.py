"""The JSON Schema editors check sequences.yaml with, generated from the language's models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from keepflow.cli import app

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "schema" / "sequences.schema.json"
COMMAND = "keepflow schema --output schema/sequences.schema.json"


def generated() -> str:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return result.output


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SHIPPED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(data: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(data)]


def test_the_shipped_schema_is_what_keepflow_schema_generates_now():
    assert SHIPPED.is_file(), f"no {SHIPPED.relative_to(ROOT)}; run `{COMMAND}`"
    assert SHIPPED.read_text(encoding="utf-8") == generated(), (
        f"the sequence language changed since {SHIPPED.relative_to(ROOT)} was written; run `{COMMAND}`")


def test_the_shipped_sequences_name_the_schema_and_keep_to_it():
    text = (ROOT / "sequences.yaml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./schema/sequences.schema.json"
    assert errors(YAML(typ="safe").load(text)) == []


def _whole_files(markdown: str) -> list[str]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", markdown, flags=re.S | re.M)
    return [b for b in blocks if re.search(r"^sequences:", b, flags=re.M)]


def test_every_whole_file_in_the_guide_keeps_to_the_schema():
    blocks = _whole_files((ROOT / "docs" / "sequences.md").read_text(encoding="utf-8"))
    assert blocks
    for block in blocks:
        assert errors(YAML(typ="safe").load(block)) == [], block


@pytest.mark.parametrize("step, ok", [
    ({"send": "email", "template": "hello"}, True),
    ("exit", True),
    ({"wait": "2d12h"}, True),
    ({"wait": "3 days"}, False),
    ({"send": "email", "tempalte": "hello"}, False),
    ({"if": "customer.consents.sms", "then": ["exit"]}, True),
])
def test_the_schema_tells_a_step_from_a_mistake(step, ok):
    data = {"rules": {"quiet_hours": {"start": "21:00", "end": "08:00"}},
            "sequences": [{"id": "s", "category": "marketing", "trigger": "order.created", "steps": [step]}]}
    assert (errors(data) == []) is ok, errors(data)
