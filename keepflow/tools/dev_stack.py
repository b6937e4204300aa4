"""`keepflow dev` (and `make run`): the whole engine on its embedded defaults, until Ctrl-C: the
worker, the public endpoints on one port and the dashboard on another."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from pydantic import SecretStr

from keepflow.http.admin import create_admin_app
from keepflow.http.app import create_app
from keepflow.http.codec import bearer_token, codec_app
from keepflow.http.serving import refuse_ports_in_use, serve_http
from keepflow.runtime.client import payload_keys
from keepflow.runtime.codec import Chain, EncryptionCodec
from keepflow.runtime.payload_parts import PartsCodec
from keepflow.runtime.payload_keys import dev_payload_keys
from keepflow.runtime import deployments
from keepflow.runtime.registry import load_catalog
from keepflow.runtime.shutdown import stop_on_signals
from keepflow.settings import Settings, dev_secret
from keepflow.store import Database, access, upgrade
from keepflow.tools.deploy import deploy_on_save as watch_file
from keepflow.tools.dev_state import remove_state, write_state
from keepflow.tools.temporal_dev_server import DevServer

log = logging.getLogger("keepflow.tools.dev_stack")


def dev_codec(settings: Settings, ui_port: int) -> FastAPI:
    """The codec endpoint on a loopback listener of its own, until the admin app serves it. The dev
    server's UI cannot send a token, and is itself open to anyone on this machine, so requests from
    its origin pass; anything else needs KEEPFLOW_CODEC_TOKEN."""
    origins = [f"http://127.0.0.1:{ui_port}", f"http://localhost:{ui_port}"]
    by_token = bearer_token([settings.codec_token.get_secret_value()] if settings.codec_token else [])

    def authorize(request: Request) -> None:
        if request.headers.get("origin") not in origins:
            by_token(request)

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/codec", codec_app(Chain(PartsCodec(settings.resolved_database_url), EncryptionCodec(payload_keys(settings))), authorize, ui_origins=origins))
    return app


async def run_dev(settings: Settings, temporal_port: int, ui_port: int | None, http_port: int,
                  admin_port: int | None = None) -> None:
    from worker import run_worker

    catalog = load_catalog(settings.sequences_path, settings.templates_dir)  # refuse an invalid file up front
    stop = stop_on_signals()
    server: DevServer | None = None
    codec_port: int | None = None
    address = settings.temporal_address
    admin_port = admin_port or settings.admin_port
    listeners = [(settings.http_host, http_port, "--http-port (make run HTTP_PORT=…)"),
                 (settings.admin_host, admin_port, "--admin-port (make run ADMIN_PORT=…)")]
    if not address:
        listeners += [("127.0.0.1", temporal_port, "--temporal-port (make run TEMPORAL_PORT=…)")]
        if ui_port:
            listeners += [("127.0.0.1", port, "--ui-port (make run UI_PORT=…)") for port in (ui_port, ui_port + 1)]
    refuse_ports_in_use(listeners)
    if not address:
        codec_port = ui_port + 1 if ui_port else None
        server = DevServer(settings.data_dir, temporal_port, ui_port,
                           codec_endpoint=f"http://127.0.0.1:{codec_port}/codec" if codec_port else None)
        server.start()
        await server.wait_ready()
        address = server.address
        log.info("Temporal dev server on %s%s (log: %s)", address,
                 f", web UI on http://127.0.0.1:{ui_port}" if ui_port else "", server.log_path)
    # Links the worker makes (unsubscribe, Twilio callbacks) use the port the app really listens on.
    update: dict = {"temporal_address": address, "http_port": http_port}
    if not settings.payload_keys:  # invented once and kept, so a restart still reads the runs it started
        update["payload_keys"] = SecretStr(dev_payload_keys(settings.data_dir))
        log.info("payloads sealed with the development key in %s", settings.data_dir / "payload-keys")
    settings = settings.model_copy(update=update)
    upgrade(settings.resolved_database_url)  # once, before the worker and the HTTP app share it
    db = Database(settings.resolved_database_url)
    # In development the file is the truth: what is saved is what runs, from the start on.
    deployed, new = deployments.record(db, catalog, settings.sequences_path.read_text(encoding="utf-8"), "keepflow dev")
    log.info("%s %s as %s; saving it again deploys each valid edit", "deployed" if new else "running",
             settings.sequences_path, deployed.label)
    secrets = settings.webhook_secrets or [dev_secret(settings.data_dir)]
    log.info("%d sequences from %s; database %s", len(catalog.sequences), settings.sequences_path,
             settings.resolved_database_url)
    # The dashboard's listener: its port (for OpenID Connect's callback) unless KEEPFLOW_ADMIN_URL says otherwise.
    settings = settings.model_copy(update={"admin_port": admin_port})
    admin = create_admin_app(settings, db=db, session_secret=(
        None if settings.session_secret else dev_secret(settings.data_dir, "session-secret")))
    log.info("events: POST http://%s:%d/events; `keepflow send-event FILE.json` signs and sends one",
             settings.http_host, http_port)
    log.info("dashboard and API docs: %s/", settings.resolved_admin_url)
    if not access.list_users(db) and admin.state.oidc is None:
        log.info("nobody can sign in to the dashboard yet: `keepflow users add NAME --role admin` adds someone")
    state = write_state(
        settings.data_dir, http_host=settings.http_host, http_port=http_port, admin_port=admin_port,
        admin_url=settings.resolved_admin_url, temporal_address=address, ui_port=ui_port,
        data_dir=str(settings.data_dir.resolve()),
        # A URL from the environment may carry a password: the other commands take it from theirs.
        database_url=None if settings.database_url else f"sqlite:///{(settings.data_dir / 'keepflow.db').resolve()}",
        database_url_from="DATABASE_URL" if settings.database_url else None,
        webhook_secret_file=None if settings.webhook_secrets else str((settings.data_dir / "webhook-secret").resolve()),
        webhook_secret_from="KEEPFLOW_WEBHOOK_SECRET" if settings.webhook_secrets else None)
    log.info("where this stack runs is in %s, for `keepflow send-event`, `events` and `report`", state)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run_worker(settings, address, stop))
            tasks.create_task(serve_http(create_app(settings, db=db, webhook_secrets=secrets),
                                         settings.http_host, http_port, stop, "--http-port"))
            tasks.create_task(watch_file(settings, db, stop))
            if codec_port and ui_port:
                log.info("codec endpoint for the web UI and CLI on http://127.0.0.1:%d/codec", codec_port)
                tasks.create_task(serve_http(dev_codec(settings, ui_port), "127.0.0.1", codec_port, stop))
            tasks.create_task(serve_http(admin, settings.admin_host, admin_port, stop, "--admin-port"))
    finally:
        if remove_state(settings.data_dir):
            log.info("removed %s: this stack no longer runs", state)
        db.dispose()
        if server:
            log.info("stopping the Temporal dev server")
            server.stop()
