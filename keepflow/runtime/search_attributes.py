"""`KeepflowStep`: where each open run is waiting, searchable in Temporal's visibility.

A run sets it when it settles into a wait (a `wait`, a `wait_for`, a send held by quiet hours or
the cap) to `<sequence>/<step path>`, so the dashboard can count runs per step with one
`count_workflows` call each instead of querying every run. A custom search attribute must be
registered on the namespace before a workflow may set it, or the workflow task fails; the worker
registers it at start, and refuses to start, saying how, where it may not.
"""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("keepflow.runtime.client")

STEP = SearchAttributeKey.for_keyword("KeepflowStep")


class SearchAttributeMissing(RuntimeError):
    pass


def step_value(sequence_id: str, path: str) -> str:
    return f"{sequence_id}/{path}"


def waiting_at(sequence_id: str, path: str) -> str:
    """The visibility query for the open runs of `sequence_id` waiting at `path`."""
    return (f'WorkflowType="sequence" AND ExecutionStatus="Running" '
            f'AND {STEP.name}="{step_value(sequence_id, path)}"')


async def ensure_registered(client: Client, namespace: str) -> None:
    """Register `KeepflowStep` (Keyword) on `namespace` unless it already is."""
    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        if STEP.name in listed.custom_attributes:
            return
    except RPCError as err:
        if err.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server cannot list, only add
            raise
    try:
        await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
            namespace=namespace, search_attributes={STEP.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD}))
        log.info("registered search attribute %s on namespace %r", STEP.name, namespace)
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            return  # another worker registered it first
        raise SearchAttributeMissing(
            f"search attribute {STEP.name} is not registered on namespace {namespace!r} and this worker may not "
            f"register it ({err.status.name}: {err.message}). Register it once, then start the worker again: "
            f"`temporal operator search-attribute create --namespace {namespace} --name {STEP.name} --type Keyword` "
            f"(Temporal Cloud: `tcld namespace search-attributes add -n {namespace} --sa {STEP.name}=Keyword`)."
        ) from err
