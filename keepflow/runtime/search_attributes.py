"""`KeepflowStep`: where an open run started before this release waits, searchable in Temporal's visibility.

Such runs set it when they settle into a wait (a `wait`, a `wait_for`, a send held by quiet hours
or the cap) to `<sequence>/<step path>`. Runs started since do not (`RunInput.step_attribute`):
each upsert was an Action Temporal Cloud bills, and the dashboard now reads where runs wait from
the store (keepflow/http/dashboard/in_flight.py). A workflow that sets a custom search attribute
not registered on its namespace fails its workflow task, so until the last of the old runs has
ended (docs/operations.md, "Retiring KeepflowStep") the worker still registers it at start where
it may. Where it may not, nothing needs it: an old run only exists on a namespace that had it
(the workers before this one refused to start without), so the worker says so and starts.
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


# The open runs that still set it (docs/operations.md, "Retiring KeepflowStep"): a run continued as
# new carries its attributes over, so a chain that set it is counted until it ends.
STILL_SETTING = f'WorkflowType="sequence" AND ExecutionStatus="Running" AND {STEP.name} IS NOT NULL'


def step_value(sequence_id: str, path: str) -> str:
    return f"{sequence_id}/{path}"


async def ensure_registered(client: Client, namespace: str) -> None:
    """Register `KeepflowStep` (Keyword) on `namespace` unless it already is, or this client may not."""
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
        log.warning("search attribute %s is not registered on namespace %r and this worker may not register it "
                    "(%s: %s): only runs started before this release set it, and they can only be running on a "
                    "namespace where it is registered, so this worker starts anyway", STEP.name, namespace,
                    err.status.name, err.message)
