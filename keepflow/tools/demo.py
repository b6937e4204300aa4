"""`keepflow demo`: one order through the whole post-purchase journey, a day per second.

It runs the real stack — Temporal's dev server on free ports, the worker, a SQLite store and
the outbox provider — in a throwaway folder, plays the store's events at compressed times,
prints each message as it is sent, and cleans up.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from keepflow.language.catalog import Catalog
from keepflow.language.dsl import StartStep
from keepflow.runtime.events import EventIn
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from keepflow.settings import Settings
from keepflow.store import Database, Message, upgrade
from keepflow.tools.temporal_dev_server import DevServer, free_port

SECONDS_PER_DAY = 1.0
FINAL = ("sent", "failed", "skipped", "unknown")
# When the store reports each event, in days after the order.
STORE_EVENTS = [(0.0, "order.created", {}),
                (1.0, "order.shipped", {"carrier": "Kerry Express", "tracking_number": "KEX0012345",
                                        "tracking_url": "https://track.example.com/KEX0012345"}),
                (3.0, "order.delivered", {})]

CUSTOMERS = {
    "en": {"first_name": "Nok", "locale": "en"},
    "th": {"first_name": "นก", "locale": "th-TH"},
    "zh-Hant": {"first_name": "小美", "locale": "zh-TW"},
}


def chain(catalog: Catalog, root: str) -> list[str]:
    """The root sequence and every sequence it `start`s, in the order they run."""
    order, pending = [], [root]
    while pending:
        sequence_id = pending.pop(0)
        if sequence_id not in order:
            order.append(sequence_id)
            pending += [s.start for _, s in catalog.sequences[sequence_id].walk() if isinstance(s, StartStep)]
    return order


def event(event_type: str, order_id: str, locale: str, data: dict) -> EventIn:
    person = CUSTOMERS[locale]
    return EventIn.model_validate({
        "id": f"{event_type}:{order_id}", "type": event_type, "occurred_at": datetime.now(timezone.utc).isoformat(),
        "customer": {"id": f"cust-{order_id}", "email": "customer@example.com", "phone": "+66812345678",
                     "timezone": "Asia/Bangkok", "consents": {"email": True, "sms": True}, **person},
        "order": {"id": order_id, "number": f"#{order_id}", "currency": "THB", "total": "25900.00", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR camera", "quantity": 1, "price": "24900.00"},
            {"sku": "SD-64", "title": "64 GB SD card", "quantity": 1, "price": "1000.00"}]},
        "data": data,
    })


async def print_messages(db: Database, started: float, console: Console, stop: asyncio.Event) -> int:
    printed: set[int] = set()
    while True:
        finished = stop.is_set()
        with db.session() as session:
            rows = session.scalars(select(Message).where(Message.status.in_(FINAL)).order_by(Message.id)).all()
        for m in rows:
            if m.id in printed:
                continue
            printed.add(m.id)
            day = (time.monotonic() - started) / SECONDS_PER_DAY
            # A skipped message was never rendered: show which template it was.
            headline = (m.subject if m.channel == "email" else (m.body or "").partition("\n")[0]) or m.template
            note = "" if m.status == "sent" else f"  [red]({m.status}: {m.error})[/red]"
            console.print(f"day {day:5.1f}  {m.sequence_id:<15} {m.step:<16} {m.channel:<5} {m.recipient or '-':<22} "
                          f"{headline}{note}", markup=True, highlight=False)
        if finished:
            return len(printed)
        await asyncio.sleep(0.1)


async def run_demo(sequences: Path, templates: Path | None, locale: str = "en") -> int:
    from worker import build_worker

    console = Console(highlight=False, soft_wrap=True)
    catalog = load_catalog(sequences, templates)
    data_dir = Path(tempfile.mkdtemp(prefix="keepflow-demo-"))
    settings = Settings(data_dir=data_dir, sequences_path=sequences, templates_dir=catalog.templates_dir,
                        email_provider="outbox", sms_provider="outbox", database_url=None)
    server = DevServer(data_dir, port=free_port(), ui_port=None)
    order_id = f"D{uuid.uuid4().hex[:6].upper()}"
    console.print(f"[bold]Keepflow demo[/bold]: order {order_id}, customer locale {locale}, "
                  f"1 day = {SECONDS_PER_DAY:g} s. Starting Temporal on {server.address} ...")
    server.start()
    try:
        client = await server.wait_ready()
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        task_queue = f"demo-{order_id}"
        async with build_worker(client, settings, db, task_queue=task_queue):
            started = time.monotonic()
            stop = asyncio.Event()
            printer = asyncio.create_task(print_messages(db, started, console, stop))
            roots: list[str] = []
            for at_day, event_type, data in STORE_EVENTS:
                await asyncio.sleep(max(0.0, started + at_day * SECONDS_PER_DAY - time.monotonic()))
                console.print(f"day {at_day:5.1f}  [cyan]store event {event_type}[/cyan]")
                routed = await ingest(db, client, catalog, event(event_type, order_id, locale, data), task_queue,
                                      time_scale=SECONDS_PER_DAY / 86400)
                roots += routed.started
            for root in roots:
                for sequence_id in chain(catalog, root.split("/", 1)[0]):
                    await client.get_workflow_handle(f"{sequence_id}/{order_id}").result()
            stop.set()
            count = await printer
        db.dispose()
        console.print(f"[bold green]done[/bold green]: {count} messages in "
                      f"{time.monotonic() - started:.1f} s; every run completed.")
        return 0
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
