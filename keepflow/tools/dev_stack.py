"""`keepflow dev` (and `make run`): the whole engine on its embedded defaults, until Ctrl-C: the
worker, the public endpoints on one port and the dashboard on another."""

from __future__ import annotations

import asyncio
import logging

from keepflow.http.admin import create_admin_app
from keepflow.http.app import create_app
from keepflow.http.serving import serve_http
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.shutdown import stop_on_signals
from keepflow.settings import Settings, dev_secret
from keepflow.store import Database, access, upgrade
from keepflow.tools.temporal_dev_server import DevServer

log = logging.getLogger("keepflow.tools.dev_stack")


async def run_dev(settings: Settings, temporal_port: int, ui_port: int | None, http_port: int,
                  admin_port: int | None = None) -> None:
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
    settings = settings.model_copy(update={"temporal_address": address})
    upgrade(settings.resolved_database_url)  # once, before the worker and the HTTP app share it
    db = Database(settings.resolved_database_url)
    secrets = settings.webhook_secrets or [dev_secret(settings.data_dir)]
    log.info("%d sequences from %s; database %s; email via %s, SMS via %s",
             len(catalog.sequences), settings.sequences_path, settings.resolved_database_url,
             "SendGrid" if settings.use_sendgrid else "the outbox", "Twilio" if settings.use_twilio else "the outbox")
    admin_port = admin_port or settings.admin_port
    # The dashboard's listener: its port (for OpenID Connect's callback) unless KEEPFLOW_ADMIN_URL says otherwise.
    settings = settings.model_copy(update={"admin_port": admin_port})
    admin = create_admin_app(settings, catalog=catalog, db=db, session_secret=(
        None if settings.session_secret else dev_secret(settings.data_dir, "session-secret")))
    log.info("events: POST http://%s:%d/events; `keepflow send-event FILE.json` signs and sends one",
             settings.http_host, http_port)
    log.info("dashboard and API docs: %s/", settings.resolved_admin_url)
    if not access.list_users(db) and admin.state.oidc is None:
        log.info("nobody can sign in to the dashboard yet: `keepflow users add NAME --role admin` adds someone")
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run_worker(settings, address, stop))
            tasks.create_task(serve_http(create_app(settings, catalog=catalog, db=db, webhook_secrets=secrets),
                                         settings.http_host, http_port, stop))
            tasks.create_task(serve_http(admin, settings.admin_host, admin_port, stop))
    finally:
        db.dispose()
        if server:
            log.info("stopping the Temporal dev server")
            server.stop()
