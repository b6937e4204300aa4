"""`keepflow customers forget`: erase a customer on their request, and stop what is running for them.

Their open runs are terminated first, so no run sends them anything more or writes what is being
erased; then the store is erased (keepflow/store/erasure.py says what goes and what stays).
Temporal keeps the histories of their runs, closed ones included, until the namespace's retention
period ends: the README's "Forgetting a customer" says what that means for an operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from keepflow.sending.channels import CHANNELS
from keepflow.sending.contacts import InvalidContact
from keepflow.store import Customer, Database, Run
from keepflow.store.erasure import Erased, erase

REASON = "customer forgotten on request (keepflow customers forget)"


@dataclass
class Forgotten:
    customer_ids: list[str]
    terminated: list[str]
    erased: Erased


def whom(db: Database, who: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The customers `who` names (an id, an email, a phone number or a LINE user id) and the addresses it is."""
    addresses: list[tuple[str, str]] = []
    for name, channel in CHANNELS.items():
        try:
            addresses.append((name, channel.normalize(who)))
        except InvalidContact:
            pass
    with db.session() as session:
        ids = set(session.scalars(select(Customer.id).where(or_(
            Customer.id == who,
            *(getattr(Customer, CHANNELS[name].address_field) == address for name, address in addresses)))))
    return sorted(ids), addresses


async def forget(db: Database, client: Client, who: str) -> Forgotten:
    customer_ids, addresses = whom(db, who)
    with db.session() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.customer_id.in_(customer_ids)))) if customer_ids else []
    terminated = [run_id for run_id in run_ids if await _terminate(client, run_id)]
    with db.session() as session:
        erased = erase(session, customer_ids, addresses)
    return Forgotten(customer_ids, terminated, erased)


async def _terminate(client: Client, workflow_id: str) -> bool:
    """Terminate the run if it is still open; True if it was."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return False
        await handle.terminate(reason=REASON)
        return True
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # past retention, or never started
            return False
        raise
