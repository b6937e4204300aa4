"""The Keepflow worker: the sequence workflow and every activity, on one task queue.

Run it with `keepflow worker` (or `python worker.py`) beside a Temporal server; `keepflow dev`
starts both. Scale out by running more workers on the same task queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.builtin.inactivity import InactivityScanner
from activities.builtin.scores import ScoresRefresher
from activities.builtin.send import MessageSender, SendDeps
from activities.builtin.start import SequenceStarter
from keepflow import logs, metrics, tracing
from keepflow.language.catalog import Catalog
from keepflow.language.rendering import Renderer
from keepflow.production import providers_line, refuse_if_half_configured
from keepflow.runtime import deployments
from keepflow.runtime.client import connect
from keepflow.runtime.deployments import LiveCatalog
from keepflow.runtime.compiled_workflows import compile_once
from keepflow.runtime.registry import discover, load_catalog, sample_activity, to_temporal
from keepflow.runtime.schedules import sync_schedules
from keepflow.runtime.search_attributes import ensure_registered
from keepflow.runtime.shutdown import stop_on_signals
from keepflow.runtime.telemetry import export_sdk_metrics
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.settings import Settings, get_settings
from keepflow.store import Database, upgrade
from workflows.inactivity import InactivityScan
from workflows.scores import ScoresRefresh
from workflows.sequence import SEND_TIMEOUT, SequenceWorkflow

log = logging.getLogger("keepflow.worker")

# Provider SDKs and the database are synchronous: activities run on threads.
ACTIVITY_THREADS = 32
HEARTBEAT_THROTTLE = timedelta(seconds=2)

# Pure, deterministic modules the interpreter uses: load them once, not per workflow run (Jinja
# also imports modules lazily, which the sandbox refuses mid-run). Of Keepflow's own, only what
# workflows/*.py import under `imports_passed_through` and what those import: any other module
# (the store, the providers) a workflow imported by mistake would be loaded inside the sandbox,
# whose restrictions catch its I/O, instead of being handed over unchecked.
# tests/test_determinism.py keeps this list equal to those imports.
PASSTHROUGH = (
    "keepflow.runtime.payloads", "keepflow.language.dsl", "keepflow.language.channels", "keepflow.language.durations",
    "keepflow.language.expressions", "keepflow.language.syntax_messages", "keepflow.runtime.search_attributes",
    "jinja2", "markupsafe", "pydantic",
)
SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


def build_worker(client: Client, settings: Settings, db: Database, send_deps: SendDeps | None = None,
                 task_queue: str | None = None, catalog: Catalog | LiveCatalog | None = None,
                 results: Mapping[str, dict[str, Any]] | None = None) -> Worker:
    """`results`: activities that answer a sample result instead of running (`keepflow simulate --do`)."""
    send_deps = send_deps or SendDeps(
        settings=settings, db=db,
        renderer=Renderer(settings.resolved_templates_dir, settings.default_locale),
        email=email_provider(settings), sms=sms_provider(settings),
    )
    catalog = catalog or load_catalog(settings.sequences_path, settings.templates_dir)
    results = results or {}
    registered = [sample_activity(r, results[r.name]) if r.name in results else to_temporal(r, settings, db)
                  for r in discover().values()]
    workflows = [SequenceWorkflow, InactivityScan, ScoresRefresh]
    compile_once(workflows)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=workflows,
        workflow_runner=SANDBOX if settings.workflow_sandbox else UnsandboxedWorkflowRunner(),
        # Unless the client brings it (`connect` does): a test's or an embedded server's client.
        interceptors=tracing.worker_interceptors(client.config()["interceptors"]),
        activities=[
            MessageSender(send_deps).send_message,
            SequenceStarter(client, db).start_sequence,
            InactivityScanner(client, db, catalog).scan_inactive_page,
            ScoresRefresher(db).refresh_scores,
            *registered,
        ],
        activity_executor=ThreadPoolExecutor(ACTIVITY_THREADS, thread_name_prefix="keepflow-activity"),
        max_concurrent_activities=ACTIVITY_THREADS,
        # The SDK passes on at most one heartbeat per 80% of an activity's heartbeat timeout: 8 of
        # the send's 10 s, so an event loop busy for 2 s (a long replay) would get a live send timed
        # out. A send beats every second; let one through every 2 s.
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        # Longer than a send may take, so a rolling restart lets in-flight sends finish.
        graceful_shutdown_timeout=SEND_TIMEOUT + timedelta(seconds=5),
    )


async def run_worker(settings: Settings, address: str | None = None, stop: asyncio.Event | None = None,
                     metrics_at: tuple[str, int] | None = None) -> None:
    """Load the live sequences, migrate the database, and serve until `stop` is set (or SIGINT/SIGTERM).
    `metrics_at`: (host, port) to serve Keepflow's and the Temporal SDK's metrics on."""
    stop_metrics = None
    if metrics_at is not None:
        export_sdk_metrics()  # before the client connects: the SDK's runtime is chosen then
        stop_metrics = metrics.serve(*metrics_at)
        log.info("metrics on http://%s:%d/metrics", *metrics_at)
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    # Refuses to run on an invalid file (when it is the one to deploy) or a version it cannot load.
    live = deployments.load_live(db, settings.sequences_path, settings.templates_dir, "first start of keepflow worker")
    client = await connect(settings, address=address)
    await ensure_registered(client, client.namespace)
    stop = stop or stop_on_signals()
    for line in await sync_schedules(client, settings, live.catalog):
        log.info(line)

    scanning = bool(live.catalog.inactivity_sequences())

    async def switched(catalog: Catalog) -> None:
        # A version that adds the first inactivity sequence or drops the last adds or drops the
        # scan's schedule; any other leaves the schedules as they are.
        nonlocal scanning
        if bool(catalog.inactivity_sequences()) != scanning:
            scanning = not scanning
            for line in await sync_schedules(client, settings, catalog):
                log.info(line)

    worker = build_worker(client, settings, db, catalog=live)
    log.info(providers_line(settings))
    log.info("worker listening on task queue %r, running sequences v%s", worker.task_queue, live.version)
    follower = asyncio.create_task(deployments.follow(db, live, settings.sequences_path, settings.templates_dir, switched))
    try:
        async with worker:
            await stop.wait()
            log.info("worker stopping: in-flight activities get %s to finish", SEND_TIMEOUT + timedelta(seconds=5))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        db.dispose()
        if stop_metrics is not None:
            stop_metrics()


def main() -> None:
    settings = get_settings()
    refuse_if_half_configured(settings, "worker", load_catalog(settings.sequences_path, settings.templates_dir))
    logs.configure(settings.log_style())
    tracing.setup("keepflow-worker")
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
