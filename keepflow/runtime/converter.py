"""Pydantic values to and from JSON payloads, with one cache of type adapters for the process.

Temporal's SDK makes a new payload converter for every workflow activation (a data converter for
the activation's serialization context), and each of `temporalio.contrib.pydantic`'s converters
starts with an empty cache of pydantic TypeAdapters: every activation built the adapters of its
inputs and results again (py-spy on bench/throughput.py). Here every composite converter the SDK
makes shares one instance of pydantic's JSON converter, whose cache then lives as long as the
process. What goes over the wire is exactly what `pydantic_data_converter` writes and reads.
"""

from __future__ import annotations

from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import CompositePayloadConverter, DefaultPayloadConverter, JSONPlainPayloadConverter

_JSON = PydanticJSONPlainPayloadConverter()


class PayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(*(_JSON if isinstance(c, JSONPlainPayloadConverter) else c
                           for c in DefaultPayloadConverter.default_encoding_payload_converters))
