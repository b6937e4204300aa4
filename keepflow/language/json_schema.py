"""The JSON Schema of sequences.yaml, from the same models `validate` reads it with.

An editor with a YAML language server uses it to underline a misspelt key and complete step
kinds as the marketer types; `keepflow validate` remains the check that counts (templates,
event types, `start:` targets are beyond a schema). Regenerated with `keepflow schema`; a test
fails when the shipped copy falls behind the models."""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from keepflow.language.dsl import SequencesFile
from keepflow.language.durations import _WHOLE


class _AsWritten(GenerateJsonSchema):
    """Durations and times as a marketer writes them, not as ISO 8601 (which an editor enforces)."""

    def timedelta_schema(self, schema: core_schema.TimedeltaSchema) -> JsonSchemaValue:
        return {"type": "string", "pattern": _WHOLE.pattern,
                "description": "a number and a unit (s, m, h, d, w), e.g. 30m, 3d, 2d12h"}

    def time_schema(self, schema: core_schema.TimeSchema) -> JsonSchemaValue:
        return {"type": "string", "pattern": r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$",
                "description": "local time, e.g. \"21:00\""}


def sequences_schema() -> dict[str, Any]:
    schema = SequencesFile.model_json_schema(by_alias=True, schema_generator=_AsWritten)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Keepflow sequences.yaml",
            **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    return json.dumps(sequences_schema(), indent=2, ensure_ascii=False) + "\n"
