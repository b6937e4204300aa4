"""`keepflow dev` (and `make run`): the whole engine on its embedded defaults, until Ctrl-C."""

from __future__ import annotations

import logging

from keepflow.devserver import DevServer
from keepflow.loader import load
from keepflow.settings import Settings

log = logging.getLogger("keepflow.dev")


async def run_dev(settings: Settings, temporal_port: int, ui_port: int | None) -> None:
    from worker import run_worker

    catalog = load(settings.sequences_path, settings.templates_dir)  # refuse an invalid file up front
    server: DevServer | None = None
    address = settings.temporal_address
    if not address:
        server = DevServer(settings.data_dir, temporal_port, ui_port)
        server.start()
        await server.wait_ready()
        address = server.address
        log.info("Temporal dev server on %s%s (log: %s)", address,
                 f", web UI on http://127.0.0.1:{ui_port}" if ui_port else "", server.log_path)
    log.info("%d sequences from %s; database %s; email via %s, SMS via %s",
             len(catalog.sequences), settings.sequences_path, settings.resolved_database_url,
             "SendGrid" if settings.use_sendgrid else "the outbox",
             "Twilio" if settings.use_twilio else "the outbox")
    try:
        await run_worker(settings, address)
    finally:
        if server:
            log.info("stopping the Temporal dev server")
            server.stop()
