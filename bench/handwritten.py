"""The baseline for bench/ingest.py: the intake a developer would write by hand, without Keepflow.

Not production code, and not part of Keepflow: a small, idiomatic integration built from the same
parts Keepflow uses, so that bench/ingest.py can say what Keepflow's own work costs on top of them.

- A FastAPI app with one endpoint, `POST /events`, that checks the Standard Webhooks signature with
  the `standardwebhooks` library (401 if it does not hold), records the delivery id
  (`webhook-id`) under a primary key in a SQLAlchemy table, so a redelivery answers 200 and starts
  nothing, and starts one workflow per order (its id from the order id).
- That workflow runs one activity, which sends the order confirmation through the SendGrid SDK.
- The worker runs in its own process: `python bench/handwritten.py worker`, configured from
  the environment (HANDWRITTEN_* below).

What it leaves out, on purpose, is what Keepflow adds: no customer or order store, no consent or
suppression check, no templates or locales, no record of what was sent (a retried activity can
send twice), no signals to other runs, no encrypted payloads. It does what a first version
written against the same requirements would do, done properly: the same durability settings for
SQLite as Keepflow's store, as many activity threads as Keepflow's worker, a timeout on the
SDK's calls, and a delivery forgotten again when its workflow could not be started, so the
sender's retry is not taken for a duplicate.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `Request` annotation, imported
# inside create_app, from the function itself.
import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

# The sandbox imports this module afresh for every workflow run: the SDK the activity uses is
# handed over from the worker's own import instead of being imported again each time.
with workflow.unsafe.imports_passed_through():
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Mail

WORKFLOW = "handwritten-order-confirmation"
READY_LINE = "handwritten worker polling"
ACTIVITY_THREADS = 32  # as Keepflow's worker (worker.py), so neither side waits for threads the other has


@dataclass
class Order:
    order_id: str
    number: str
    email: str
    first_name: str
    total: str
    currency: str


# -- the workflow and its activity -------------------------------------------------------------

@activity.defn
def send_confirmation(order: Order) -> None:
    """One email through the SendGrid SDK; an error answer raises, and Temporal retries it."""
    message = Mail(
        from_email=os.environ.get("HANDWRITTEN_EMAIL_FROM", "hello@shop.example"),
        to_emails=order.email,
        subject=f"Your order {order.number} is confirmed",
        html_content=(f"<p>Hi {order.first_name},</p><p>Thank you for your order {order.number} "
                      f"({order.total} {order.currency}). We will tell you when it ships.</p>"),
    )
    _sendgrid().send(message)


_client: SendGridAPIClient | None = None


def _sendgrid() -> SendGridAPIClient:
    # One SDK client per worker process; its HTTP client opens a connection per request anyway.
    global _client
    if _client is None:
        _client = SendGridAPIClient(api_key=os.environ["HANDWRITTEN_SENDGRID_API_KEY"],
                                    host=os.environ.get("HANDWRITTEN_SENDGRID_HOST", "https://api.sendgrid.com"))
        _client.client.timeout = 10  # the SDK waits forever by default
    return _client


@workflow.defn(name=WORKFLOW)
class OrderConfirmation:
    @workflow.run
    async def run(self, order: Order) -> None:
        await workflow.execute_activity(send_confirmation, order, start_to_close_timeout=timedelta(seconds=30))


# -- the HTTP app -------------------------------------------------------------------------------

def create_app(secret: str, database_url: str, temporal_address: str, task_queue: str):
    """The FastAPI app; it connects to Temporal when it starts."""
    import contextlib

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, delete, event, func, insert
    from sqlalchemy.exc import IntegrityError
    from standardwebhooks import Webhook, WebhookVerificationError
    from temporalio.client import Client
    from temporalio.exceptions import WorkflowAlreadyStartedError

    metadata = MetaData()
    deliveries = Table("handwritten_deliveries", metadata,
                       Column("webhook_id", String(255), primary_key=True),
                       Column("received_at", DateTime(timezone=True), server_default=func.now(), nullable=False))
    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            # What any app with concurrent writers on SQLite sets; the same durability as Keepflow's store.
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()
    metadata.create_all(engine)
    webhook = Webhook(secret)

    def record(delivery_id: str) -> bool:
        """True the first time this delivery id is seen."""
        try:
            with engine.begin() as db:
                db.execute(insert(deliveries).values(webhook_id=delivery_id))
            return True
        except IntegrityError:
            return False

    def forget(delivery_id: str) -> None:
        with engine.begin() as db:
            db.execute(delete(deliveries).where(deliveries.c.webhook_id == delivery_id))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.temporal = await Client.connect(temporal_address)
        yield
        engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/events", status_code=202)
    async def post_event(request: Request):
        body = await request.body()
        try:
            payload = webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            raise HTTPException(401, "bad signature") from None
        delivery_id = request.headers["webhook-id"]
        # SQLAlchemy here is synchronous: on a thread, so the event loop keeps serving.
        if not await asyncio.to_thread(record, delivery_id):
            return JSONResponse({"status": "duplicate"}, status_code=200)
        customer, order = payload["customer"], payload["order"]
        try:
            await app.state.temporal.start_workflow(
                OrderConfirmation.run,
                Order(order_id=order["id"], number=order["number"], email=customer["email"],
                      first_name=customer.get("first_name") or "", total=order["total"], currency=order["currency"]),
                id=f"order-confirmation/{order['id']}", task_queue=task_queue)
        except WorkflowAlreadyStartedError:
            pass  # the same order under another delivery id: its email is on its way already
        except Exception:
            # Not started: forget the delivery, so the sender's retry is not taken for a duplicate.
            await asyncio.to_thread(forget, delivery_id)
            raise
        return {"status": "accepted"}

    return app


# -- the worker process -------------------------------------------------------------------------

async def run_worker() -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(os.environ["HANDWRITTEN_TEMPORAL_ADDRESS"])
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    with ThreadPoolExecutor(ACTIVITY_THREADS) as threads:
        async with Worker(client, task_queue=os.environ["HANDWRITTEN_TASK_QUEUE"], workflows=[OrderConfirmation],
                          activities=[send_confirmation], activity_executor=threads,
                          max_concurrent_activities=ACTIVITY_THREADS):
            print(READY_LINE, flush=True)
            await stop.wait()


def worker_env(temporal_address: str, task_queue: str, sendgrid_api_key: str, sendgrid_host: str) -> dict[str, str]:
    return {**os.environ, "HANDWRITTEN_TEMPORAL_ADDRESS": temporal_address, "HANDWRITTEN_TASK_QUEUE": task_queue,
            "HANDWRITTEN_SENDGRID_API_KEY": sendgrid_api_key, "HANDWRITTEN_SENDGRID_HOST": sendgrid_host,
            "PYTHONUNBUFFERED": "1"}


def main() -> int:
    if sys.argv[1:] != ["worker"]:
        print("usage: python bench/handwritten.py worker   (configured by HANDWRITTEN_* in the environment)",
              file=sys.stderr)
        return 2
    asyncio.run(run_worker())
    return 0


if __name__ == "__main__":
    # Run as a script this file is `__main__`; the sandbox re-imports a workflow's module by name on
    # every run, so the workflow must come from the module `handwritten`, imported here once.
    import handwritten

    sys.exit(handwritten.main())
