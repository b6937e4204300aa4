"""`scan_inactive_page`: one page of the inactivity scan — find, check and start.

A customer gets a run of an inactivity-triggered sequence when their `last_seen_at` is older
than its `inactive_for`, unless:
  * they are in a run of it already (Temporal refuses a second run with the same id),
  * they had a run of it within its `cool_down` (default 90 days),
  * it is a marketing sequence and they consented to none of the channels it uses,
  * it filters on RFM segment or level and they are not in it.
Retrying a page is harmless: every check above holds again, so nothing starts twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import and_, inspect, or_, select
from temporalio import activity
from temporalio.client import Client

from keepflow import metrics
from keepflow.language.catalog import Catalog
from keepflow.language.dsl import InactivityTrigger, Sequence
from keepflow.runtime.deployments import LiveCatalog
from keepflow.runtime.payloads import RunInput, ScanCursor, ScanPage, ScanPageResult
from keepflow.runtime.starts import start_run
from keepflow.sending.channels import CHANNELS
from keepflow.store import Customer, Database, Run, utc

# Starts in flight at once: enough to hide round trips, few enough not to swamp the server.
PARALLEL_STARTS = 16


class InactivityScanner:
    def __init__(self, client: Client, db: Database, catalog: Catalog | LiveCatalog):
        self.client = client
        self.db = db
        # A LiveCatalog is switched in place when a new version is deployed: each page reads the newest.
        self.live = catalog if isinstance(catalog, LiveCatalog) else LiveCatalog(catalog)

    @property
    def catalog(self) -> Catalog:
        return self.live.catalog

    @activity.defn(name="scan_inactive_page")
    async def scan_inactive_page(self, page: ScanPage) -> ScanPageResult:
        sequences = self.catalog.inactivity_sequences()
        if not sequences:
            return ScanPageResult(scanned=0, started=0, skipped={}, next=None)
        customers, candidates, skipped = await asyncio.to_thread(self._candidates, page, sequences)
        started = 0
        gate = asyncio.Semaphore(PARALLEL_STARTS)

        async def start(sequence: Sequence, customer: dict[str, Any]) -> bool:
            async with gate:
                return await self._start(sequence, customer, page.as_of)

        results = await asyncio.gather(*(start(s, c) for s, c in candidates))
        started = sum(results)
        skipped["already in a run"] += len(results) - started
        last = customers[-1] if customers else None
        next_cursor = (ScanCursor(last_seen_at=utc(last.last_seen_at), customer_id=last.id)
                       if last is not None and len(customers) == page.limit else None)
        metrics.scan_page(len(customers), started, skipped, last=next_cursor is None)
        return ScanPageResult(scanned=len(customers), started=started,
                              skipped={k: v for k, v in skipped.items() if v}, next=next_cursor)

    def _candidates(self, page: ScanPage, sequences: list[Sequence]):
        # All of them have one (Catalog.inactivity_sequences); the pairs keep it typed as such.
        triggered = [(s, s.inactivity) for s in sequences if s.inactivity is not None]
        oldest_needed = page.as_of - min(trigger.inactive_for for _, trigger in triggered)
        query = select(Customer).where(Customer.last_seen_at < oldest_needed)
        if page.after is not None:
            query = query.where(or_(
                Customer.last_seen_at > page.after.last_seen_at,
                and_(Customer.last_seen_at == page.after.last_seen_at, Customer.id > page.after.customer_id),
            ))
        query = query.order_by(Customer.last_seen_at, Customer.id).limit(page.limit)
        skipped: Counter[str] = Counter()
        candidates: list[tuple[Sequence, dict[str, Any]]] = []
        with self.db.session() as session:
            customers = list(session.scalars(query))
            ids = [c.id for c in customers]
            scores = _scores(session, ids)
            for sequence, trigger in triggered:
                # A row this page wrote (the same trigger) is no cool-down: its start was cut short
                # after the row was claimed, and is tried again.
                cooling = {customer_id for customer_id, trigger in session.execute(
                    select(Run.customer_id, Run.trigger_event_id).where(
                        Run.sequence_id == sequence.id, Run.customer_id.in_(ids),
                        Run.started_at > page.as_of - sequence.cool_down))
                    if trigger != _trigger_id(customer_id or "", page.as_of)}
                for customer in customers:
                    seen = customer.last_seen_at  # never None: the query compared it
                    if seen is None or utc(seen) >= page.as_of - trigger.inactive_for:
                        continue  # inactive long enough for another sequence, not this one
                    reason = _skip_reason(sequence, trigger, customer, customer.id in cooling,
                                          scores.get(customer.id))
                    if reason:
                        skipped[reason] += 1
                    else:
                        candidates.append((sequence, _context(customer, scores.get(customer.id))))
        return customers, candidates, skipped

    async def _start(self, sequence: Sequence, customer: dict[str, Any], as_of: datetime) -> bool:
        context = {
            "customer": customer, "brand": self.catalog.file.brand,
            "event": {"id": _trigger_id(customer["id"], as_of), "type": "customer.inactive",
                      "occurred_at": as_of.isoformat(), "data": {}},
        }
        run = RunInput(snapshot=self.catalog.snapshot(sequence.id), key=customer["id"], context=context)
        # The same customer may come back and drift away again: a new run after the cool-down.
        started = await start_run(self.client, run, activity.info().task_queue, db=self.db, started_at=as_of,
                                  allow_rerun=True)
        return started is not None


def _trigger_id(customer_id: str, as_of: datetime) -> str:
    return f"inactive:{customer_id}:{as_of:%Y%m%d%H%M}"


def _skip_reason(sequence: Sequence, trigger: InactivityTrigger, customer: Customer, cooling: bool,
                 score: dict | None) -> str | None:
    if cooling:
        return "cool-down"
    if sequence.category == "marketing":
        consents = customer.consents or {}
        if not any(consents.get(CHANNELS[ch].consent_key) and getattr(customer, CHANNELS[ch].address_field)
                   for ch in sequence.channels()):
            return "no marketing consent"
    if trigger.segment is not None and (score or {}).get("segment") not in trigger.segment:
        return "segment"
    if trigger.level is not None and (score or {}).get("level") not in trigger.level:
        return "level"
    return None


def _context(customer: Customer, score: dict | None) -> dict[str, Any]:
    context = {"id": customer.id, "email": customer.email, "phone": customer.phone, "first_name": customer.first_name,
               "locale": customer.locale, "timezone": customer.timezone, "consents": customer.consents or {}}
    if score is not None:
        context["rfm"] = score
    return context


def _scores(session, ids: list[str]) -> dict[str, dict]:
    """RFM scores by customer, when the scores table exists (`keepflow segments --refresh` fills it)."""
    if not ids or not inspect(session.get_bind()).has_table("customer_scores"):
        return {}
    from keepflow.insights.rfm import profile

    return {cid: found for cid in ids if (found := profile(session, cid)) is not None}
