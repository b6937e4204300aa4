"""`keepflow`: validate sequences, run the engine, play the demo."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from keepflow.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
schedules_app = typer.Typer(no_args_is_help=True, help="Temporal Schedules: the inactivity scan and the RFM refresh.")
app.add_typer(schedules_app, name="schedules")

SequencesArg = Annotated[Optional[Path], typer.Argument(help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")]
TemplatesOpt = Annotated[Optional[Path], typer.Option("--templates", help="templates folder (default: templates/ beside the sequences file)")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _run(coroutine) -> None:
    """Run an engine command; an invalid sequences file ends it with its problems, not a traceback."""
    from keepflow.loader import InvalidSequences

    try:
        asyncio.run(coroutine)
    except InvalidSequences as invalid:
        print(invalid, file=sys.stderr)
        print("refusing to start: fix the problems above (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def validate(path: SequencesArg = None, templates: TemplatesOpt = None) -> None:
    """Check sequences.yaml and its templates; print every problem as PATH:LINE:COL: message."""
    from keepflow.loader import run_validate

    settings = get_settings()
    raise typer.Exit(run_validate(path or settings.sequences_path, templates or settings.templates_dir))


@app.command()
def dev(
    http_port: Annotated[int, typer.Option(help="port of the webhook endpoints")] = 8000,
    temporal_port: Annotated[int, typer.Option(help="gRPC port of the embedded Temporal dev server")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal web UI port (0: no UI)")] = 8233,
    data_dir: Annotated[Optional[Path], typer.Option(help="where the databases live (default: var/)")] = None,
) -> None:
    """Run everything locally: Temporal's dev server (unless TEMPORAL_ADDRESS is set), the worker and the webhooks."""
    from keepflow.dev import run_dev

    _logging()
    settings = get_settings()
    if data_dir:
        settings = settings.model_copy(update={"data_dir": data_dir})
    _run(run_dev(settings, temporal_port, ui_port or None, http_port))


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default: $KEEPFLOW_HTTP_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default: $KEEPFLOW_HTTP_PORT or 8000)")] = None,
) -> None:
    """Serve the webhook endpoints against TEMPORAL_ADDRESS (run as many as you like behind a load balancer)."""
    from keepflow.lifecycle import serve_http, stop_on_signals
    from keepflow.webhooks.app import create_app

    _logging()
    settings = get_settings()

    async def main() -> None:
        await serve_http(create_app(settings), host or settings.http_host, port or settings.http_port, stop_on_signals())

    _run(main())


@app.command("send-event")
def send_event(
    file: Annotated[Path, typer.Argument(help="an event as JSON (see `keepflow/events.py` or /docs)")],
    url: Annotated[Optional[str], typer.Option(help="where to post (default: this machine's `keepflow dev`)")] = None,
) -> None:
    """Sign an event with the webhook secret and post it, as a store would."""
    import httpx

    from keepflow.webhooks.signing import dev_secret, sign

    settings = get_settings()
    body = file.read_bytes()
    secret = (settings.webhook_secrets or [dev_secret(settings.data_dir)])[0]
    target = url or f"http://{settings.http_host}:{settings.http_port}/events"
    try:
        response = httpx.post(target, content=body, headers={"content-type": "application/json", **sign(body, secret)})
    except httpx.HTTPError as err:
        print(f"could not reach {target}: {err} (is `make run` running?)", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"{response.status_code} {response.reason_phrase}\n{response.text}")
    raise typer.Exit(0 if response.is_success else 1)


@app.command()
def events(
    unrouted: Annotated[bool, typer.Option("--unrouted", help="only events that reached no sequence, or are not yet routed")] = False,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 50,
) -> None:
    """List received events: type, customer, when, and how many runs each started or steered."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import or_, select

    from keepflow.store import Database, Event, upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    query = select(Event).order_by(Event.received_at.desc()).limit(limit)
    if unrouted:
        query = query.where(or_(Event.routed_at.is_(None), Event.runs == 0))
    table = Table("received", "id", "type", "customer", "order", "runs")
    with db.session() as session:
        for e in session.scalars(query):
            runs = "not yet routed" if e.routed_at is None else str(e.runs)
            table.add_row(f"{e.received_at:%Y-%m-%d %H:%M:%S}", e.id, e.type, e.customer_id or "-", e.order_id or "-", runs)
    Console().print(table)


@app.command()
def worker() -> None:
    """Run a worker against TEMPORAL_ADDRESS (run more of them to scale out)."""
    from worker import run_worker

    _logging()
    _run(run_worker(get_settings()))


@app.command()
def demo(
    locale: Annotated[str, typer.Option(help="the demo customer's language: en, th or zh-Hant")] = "en",
) -> None:
    """Play one order through the whole post-purchase journey, a day per second, and exit."""
    from keepflow.demo import CUSTOMERS, run_demo

    if locale not in CUSTOMERS:
        raise typer.BadParameter(f"choose one of {', '.join(CUSTOMERS)}", param_hint="--locale")
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    code = 1
    try:
        code = asyncio.run(run_demo(settings.sequences_path, settings.templates_dir, locale))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(code)


@schedules_app.command("sync")
def schedules_sync() -> None:
    """Create or update the schedules against TEMPORAL_ADDRESS (workers also do this when they start)."""
    from keepflow.loader import load
    from keepflow.schedules import sync_schedules
    from keepflow.temporal import connect

    settings = get_settings()

    async def main() -> None:
        catalog = load(settings.sequences_path, settings.templates_dir)
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        for line in await sync_schedules(client, settings, catalog):
            print(line)

    _run(main())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of DATABASE_URL (the engine also does this when it starts)."""
    from keepflow.store import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"schema up to date: {settings.resolved_database_url}")


@app.command()
def report(
    since: Annotated[str, typer.Option(help="how far back: a duration (30d, 12h) or an ISO date")] = "30d",
    sequence: Annotated[Optional[str], typer.Option("--sequence", help="only this sequence")] = None,
    window: Annotated[str, typer.Option(help="an order counts for the last message sent this long before it")] = "5d",
    format: Annotated[str, typer.Option("--format", help="text (tables) or json")] = "text",
) -> None:
    """Per sequence and step: entered, sent, skipped (why), delivered, opened, clicked, converted, revenue; KPIs."""
    from keepflow.durations import parse_duration
    from keepflow.report import build_report, parse_since, print_report
    from keepflow.store import Database, upgrade

    if format not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    try:
        start = parse_since(since)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--since") from None
    try:
        attribution_window = parse_duration(window)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--window") from None
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        result = build_report(db, start, sequence_id=sequence, window=attribution_window)
    finally:
        db.dispose()
    if format == "json":
        print(result.model_dump_json(indent=2))
    else:
        print_report(result)


@app.command()
def segments(
    refresh: Annotated[bool, typer.Option("--refresh", help="recompute every customer's scores first (as of now, UTC)")] = False,
) -> None:
    """Print the RFM segments of the whole base: customers and revenue per segment, with their shares."""
    from datetime import datetime, timezone

    from rich.console import Console
    from rich.table import Column, Table

    from keepflow import rfm
    from keepflow.store import Database, upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        if refresh:
            rfm.refresh_all(db, datetime.now(timezone.utc))
        rows = rfm.segment_table(db)
        refreshed = rfm.last_refresh(db)
    finally:
        db.dispose()
    caption = (f"scored {refreshed:%Y-%m-%d %H:%M} UTC; --refresh recomputes" if refreshed
               else "no scores yet: run `keepflow segments --refresh`")
    right = {"justify": "right"}
    table = Table("segment", Column("customers", **right), Column("% customers", **right), Column("revenue", **right),
                  Column("% revenue", **right), caption=caption)
    for row in rows:
        table.add_row(row.segment, f"{row.customers:,}", f"{row.share_of_customers:.1%}",
                      f"{row.revenue:,.2f}", f"{row.share_of_revenue:.1%}")
    table.add_section()
    table.add_row("total", f"{sum(r.customers for r in rows):,}", "", f"{sum(r.revenue for r in rows):,.2f}", "")
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
