"""`keepflow demo`: one order through the whole post-purchase journey, weeks in seconds.

It plays the store's events through the router to the production workflow and send activity on
Temporal's time-skipping server (`keepflow simulate`'s Stage: a throwaway SQLite store, the outbox
provider), then prints every message with the day and the customer's local time it went out.
Quiet hours, the frequency cap and expiry apply as they do in production: the shipping text the
store reports at 22:00 is held until 08:00. The customer has linked the shop's LINE account, so
the lighting tip goes on LINE; without one (`--no-line`) it goes by SMS, the step's `fallback:`.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rich.console import Console
from sqlalchemy import select

from keepflow.language.channels import CHANNEL_FACTS
from keepflow.runtime.events import EventIn
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.routing import ingest
from keepflow.store import Message
from keepflow.tools.simulate import Line, stage

TIMEZONE = "Asia/Bangkok"
# The demo starts at this local hour, so the same journey plays whenever it is run.
START_HOUR = 10
# When the store reports each event, in days after the order: shipped at 22:00, inside the quiet hours.
STORE_EVENTS = [(0.0, "order.created", {}),
                (1.5, "order.shipped", {"carrier": "Kerry Express", "tracking_number": "KEX0012345",
                                        "tracking_url": "https://track.example.com/KEX0012345"}),
                (3.0, "order.delivered", {})]

# The customer's LINE user id, as the shop's LINE webhook links it (a demo value, never pushed to:
# the demo sends through the outbox).
LINE_USER_ID = "U" + "de30" * 8

CUSTOMERS = {
    "en": {"first_name": "Nok", "locale": "en"},
    "th": {"first_name": "นก", "locale": "th-TH"},
    "zh-Hant": {"first_name": "小美", "locale": "zh-TW"},
}


def event(event_type: str, order_id: str, locale: str, data: dict, at: datetime, on_line: bool = True) -> EventIn:
    person = CUSTOMERS[locale]
    linked = {"line_user_id": LINE_USER_ID} if on_line else {}
    return EventIn.model_validate({
        "id": f"{event_type}:{order_id}", "type": event_type, "occurred_at": at.isoformat(),
        "customer": {"id": f"cust-{order_id}", "email": "customer@example.com", "phone": "+66812345678",
                     "timezone": TIMEZONE, "consents": {"email": True, "sms": True, "line": True}, **linked,
                     **person},
        "order": {"id": order_id, "number": f"#{order_id}", "currency": "THB", "total": "25900.00", "items": [
            {"sku": "DSLR-200", "title": "Lumen D200 DSLR camera", "quantity": 1, "price": "24900.00"},
            {"sku": "SD-64", "title": "64 GB SD card", "quantity": 1, "price": "1000.00"}]},
        "data": data,
    })


def next_local_hour(now: datetime, hour: int, zone: str) -> datetime:
    local = now.astimezone(ZoneInfo(zone))
    at = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > local else at + timedelta(days=1)


def printed(line: Line, began: datetime, rows: dict[int, Message]) -> str:
    """A store event, or a message sent, held, skipped or failed: its day and local time first."""
    day = (line.at - began) / timedelta(days=1)
    when = f"day {day:5.2f}  {line.at.astimezone(ZoneInfo(TIMEZONE)):%a %H:%M}  "
    request, result = line.request, line.result
    if request is None or result is None:
        return when + line.text
    m = rows.get(result.message_id) if result.message_id is not None else None
    # The channel it went on: a step's `fallback:` when the customer could not get the step's own.
    channel = result.channel or request.channel
    what = f"{when}{request.sequence_id:<15} {request.step:<16} {channel:<5} {(m and m.recipient) or '-':<22} "
    if result.status == "deferred":
        return f"{what}[yellow]held: {result.reason}[/yellow]"
    # A skipped message was never rendered: show which template it was.
    headline = (m and (m.subject if CHANNEL_FACTS[channel].html else (m.body or "").partition("\n")[0])) or request.template
    if result.status != "sent":
        note = f"  [red]({result.status}: {result.reason})[/red]"
    elif result.channel is not None:
        # "on sms (fallback: no LINE account)": the channel is in its column already.
        note = f"  [yellow]{(result.reason or '').removeprefix(f'on {channel} ')}[/yellow]"
    else:
        note = ""
    return f"{what}{headline}{note}"


async def run_demo(sequences: Path, templates: Path | None, locale: str = "en", on_line: bool = True) -> int:
    console = Console(highlight=False, soft_wrap=True)
    catalog = load_catalog(sequences, templates)
    order_id = f"D{uuid.uuid4().hex[:6].upper()}"
    console.print(f"[bold]Keepflow demo[/bold]: order {order_id}, customer locale {locale}, in {TIMEZONE}, "
                  f"{'on LINE' if on_line else 'no LINE account'}; "
                  "Temporal's time-skipping server plays the weeks in seconds ...")
    started = time.monotonic()
    async with stage(catalog) as on:
        began = next_local_hour(on.began, START_HOUR, TIMEZONE)
        lines: list[Line] = []
        for at_day, event_type, data in STORE_EVENTS:
            at = began + timedelta(days=at_day)
            await on.sleep_until(at)
            lines.append(Line(at, "store", f"[cyan]store event {event_type}[/cyan]"))
            await ingest(on.db, on.client, catalog, event(event_type, order_id, locale, data, at, on_line), on.settings.task_queue)
        # Every run, those the journey's `start:` steps began too, to its end (a failed one raises here).
        lines += await on.finish()
        with on.db.session() as session:
            rows = {m.id: m for m in session.scalars(select(Message))}
    shown = [line for line in lines if line.run == "store" or line.result is not None]
    for line in sorted(shown, key=lambda line: line.at):
        console.print(printed(line, began, rows), markup=True, highlight=False)
    count = sum(1 for line in shown if line.result is not None and line.result.status != "deferred")
    console.print(f"[bold green]done[/bold green]: {count} messages in "
                  f"{time.monotonic() - started:.1f} s; every run completed.")
    return 0
