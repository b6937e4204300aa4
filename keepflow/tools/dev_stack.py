"""`keepflow dev` (and `make run`): the whole engine on its embedded defaults, until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging

from keepflow.http.app import create_app
from keepflow.http.serving import serve_http
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.shutdown import stop_on_signals
from keepflow.settings import Settings, dev_secret
from keepflow.store import Database, upgrade
from keepflow.tools.temporal_dev_server import DevServer

log = logging.getLogger("keepflow.tools.dev_stack")


async def run_dev(settings: Settings, temporal_port: int, ui_port: int | None, http_port: int) -> None:
    from worker import run_worker

    catalog = load_catalog(settings.sequences_path, settings.templates_dir)  # refuse an invalid file up front
    stop = stop_on_signals()
    server: DevServer | None = None
    address = settings.temporal_address
    if not address:
        server = DevServer(settings.data_dir, temporal_port, ui_port)
        server.start()
        await server.wait_ready()
        address = server.address
        log.info("Temporal dev server on %s%s (log: %s)", address,
                 f", web UI on http://127.0.0.1:{ui_port}" if ui_port else "", server.log_path)
    # Links the worker makes (unsubscribe, Twilio callbacks) use the port the app really listens on.
    settings = settings.model_copy(update={"temporal_address": address, "http_port": http_port})
    upgrade(settings.resolved_database_url)  # once, before the worker and the HTTP app share it
    db = Database(settings.resolved_database_url)
    secrets = settings.webhook_secrets or [dev_secret(settings.data_dir)]
    log.info("%d sequences from %s; database %s", len(catalog.sequences), settings.sequences_path,
             settings.resolved_database_url)
    log.info("events: POST http://%s:%d/events (docs at /docs); `keepflow send-event FILE.json` signs and sends one",
             settings.http_host, http_port)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run_worker(settings, address, stop))
            tasks.create_task(serve_http(create_app(settings, catalog=catalog, db=db, webhook_secrets=secrets),
                                         settings.http_host, http_port, stop))
    finally:
        db.dispose()
        if server:
            log.info("stopping the Temporal dev server")
            server.stop()
