"""Pydantic values to and from JSON payloads, with one cache of type adapters for the process.

Temporal's SDK makes a new payload converter for every workflow activation (a data converter for
the activation's serialization context), and each of `temporalio.contrib.pydantic`'s converters
starts with an empty cache of pydantic TypeAdapters: every activation built the adapters of its
inputs and results again (py-spy on bench/throughput.py). Here one JSON converter, whose adapters
are kept for the life of the process, serves every composite converter the SDK makes. What goes
over the wire is exactly what `pydantic_data_converter` writes and reads.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import CompositePayloadConverter, DefaultPayloadConverter, JSONPlainPayloadConverter


@functools.lru_cache(maxsize=1024)
def _adapter(type_hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(type_hint)


class _JSONConverter(PydanticJSONPlainPayloadConverter):
    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        hint = type_hint if type_hint is not None else Any
        try:
            adapter = _adapter(hint)
        except TypeError:
            try:
                hash(hint)
            except TypeError:  # an unhashable hint: its adapter cannot be cached
                adapter = TypeAdapter(hint)
            else:
                raise
        return adapter.validate_json(payload.data)


_JSON = _JSONConverter()


class PayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(*(_JSON if isinstance(c, JSONPlainPayloadConverter) else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters))
