"""One way to reach Temporal, with the pydantic data converter on every client."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

DEFAULT_ADDRESS = "127.0.0.1:7233"


async def connect(address: str | None, namespace: str = "default") -> Client:
    return await Client.connect(address or DEFAULT_ADDRESS, namespace=namespace, data_converter=pydantic_data_converter)
