"""Events in over real HTTP: signatures, validation, dedupe, ordering, and Temporal outages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update
from temporalio import client as temporal

from keepflow.http.signing import sign
from keepflow.runtime.registry import load_catalog
from keepflow.runtime import starts
from keepflow.runtime.payloads import RunInput
from keepflow.runtime.routing import reconcile
from keepflow.settings import new_secret
from keepflow.store import Event
from keepflow.tools.temporal_dev_server import free_port
from tests import helpers
from tests.engine import CATALOG, ROOT, running_worker
from tests.helpers import to_local_hour

SECRET = new_secret()


def event(event_type: str = "order.created", order_id: str | None = None, **extra) -> dict:
    order_id = order_id or f"W{uuid.uuid4().hex[:6]}"
    return {
        "id": f"evt_{uuid.uuid4().hex}", "type": event_type,
        "occurred_at": extra.pop("occurred_at", datetime.now(timezone.utc).isoformat()),
        "customer": {"id": f"cust-{order_id}", "email": "ann@example.com", "phone": "+66812345678", "locale": "th"},
        "order": {"id": order_id, "total": "1290.00", "currency": "THB",
                  "items": [{"sku": "LENS-50", "title": "50mm f/1.8", "quantity": 1, "price": "1290.00"}]},
        **extra,
    }


def signed(body: dict | bytes, secret: str = SECRET, **kwargs) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, {"content-type": "application/json", **sign(raw, secret, **kwargs)}


@asynccontextmanager
async def serving(env, settings, db, *, client="env", secrets=(SECRET,)) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    app = helpers.serving(settings, db, client=env.client if client == "env" else client, secrets=secrets)
    async with app as http:
        yield http, app.app


@pytest.fixture
async def stack(env, settings, db):
    async with running_worker(env, settings, db) as tq:
        routed_settings = settings.model_copy(update={"task_queue": tq})
        async with serving(env, routed_settings, db) as (http, app):
            yield http


def stored(db) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(Event))


async def test_signed_event_starts_its_sequence(stack, env, db, fake):
    body = event()
    response = await stack.post("/events", content=(raw := signed(body))[0], headers=raw[1])
    assert response.status_code == 202, response.text
    run_id = f"fulfilment/{body['order']['id']}"
    assert response.json() == {"id": body["id"], "duplicate": False, "started": [run_id], "signalled": [], "routing": "done"}
    assert stored(db) == 1
    for _ in range(100):
        if fake.accepted("sendgrid"):
            break
        await asyncio.sleep(0.05)
    assert fake.accepted("sendgrid")[0]["to"] == "ann@example.com"


@pytest.mark.parametrize("tamper", ["body", "secret", "stale", "future", "missing"])
async def test_bad_signatures_get_401_and_change_nothing(stack, env, db, tamper):
    body = event()
    raw, headers = signed(body)
    if tamper == "body":
        raw = raw.replace(b"1290.00", b"1.00")
    elif tamper == "secret":
        raw, headers = signed(body, secret=new_secret())
    elif tamper == "stale":
        raw, headers = signed(body, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    elif tamper == "future":
        raw, headers = signed(body, at=datetime.now(timezone.utc) + timedelta(minutes=6))
    else:
        headers = {"content-type": "application/json"}
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 401
    assert stored(db) == 0
    with pytest.raises(Exception):
        await env.client.get_workflow_handle(f"fulfilment/{body['order']['id']}").describe()


async def test_any_matching_signature_passes_during_rotation(env, settings, db):
    old, new = new_secret(), new_secret()
    body = event()
    raw, headers = signed(body, secret=old)
    at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), timezone.utc)
    _, with_new = signed(raw, secret=new, message_id=headers["webhook-id"], at=at)
    headers["webhook-signature"] = f"v1,AAAA {with_new['webhook-signature']}"
    async with running_worker(env, settings, db) as tq:
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db, secrets=(new,)) as (http, _):
            assert (await http.post("/events", content=raw, headers=headers)).status_code == 202
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db, secrets=(new, old)) as (http, _):
            raw2, headers2 = signed(event(), secret=old)
            assert (await http.post("/events", content=raw2, headers=headers2)).status_code == 202


async def test_redelivery_and_a_hundred_copies_have_one_effect(stack, env, db):
    body = event()
    raw, headers = signed(body)
    responses = await asyncio.gather(*(stack.post("/events", content=raw, headers=headers) for _ in range(100)))
    assert all(r.status_code in (200, 202) for r in responses), {r.status_code for r in responses}
    started = [r.json()["started"] for r in responses if r.json()["started"]]
    assert started == [[f"fulfilment/{body['order']['id']}"]]
    # The one that stored it is no duplicate, whichever copy started its routing.
    assert [r.json()["duplicate"] for r in responses].count(False) == 1
    # The same event under a new delivery id (a sender re-sending it) is still one event.
    raw2, headers2 = signed(body)
    again = await stack.post("/events", content=raw2, headers=headers2)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert stored(db) == 1


async def test_invalid_body_is_422_naming_each_field(stack, db):
    body = event()
    body["occurred_at"] = "yesterday"
    body["customer"]["id"] = ""
    del body["type"]
    raw, headers = signed(body)
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 422
    locs = {tuple(d["loc"]) for d in response.json()["detail"]}
    assert {("body", "type"), ("body", "occurred_at"), ("body", "customer", "id")} <= locs
    assert stored(db) == 0


async def test_a_signed_body_that_is_not_utf8_is_422_and_stores_nothing(stack, db):
    raw = json.dumps(event()).encode().replace(b'"ann', b'"\xff\xfeann', 1)
    # A sender that signs raw bytes (the Standard Webhooks scheme over the body as sent), as a
    # careless integration would: the library's own `sign` takes text and could not make this.
    message_id, at = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{at}.".encode() + raw, hashlib.sha256).digest()
    headers = {"content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": at,
               "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 422, response.text
    assert stored(db) == 0


@pytest.mark.parametrize("where", ["customer.first_name", "data.note", "data.key"])
async def test_a_nul_character_anywhere_is_422_and_stores_nothing(stack, db, where):
    body = event()
    if where == "customer.first_name":
        body["customer"]["first_name"] = "Ann\u0000"
    elif where == "data.note":
        body["data"] = {"note": ["fine", {"deep": "x\u0000y"}]}
    else:
        body["data"] = {"k\u0000": 1}
    raw, headers = signed(body)
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 422, response.text
    assert "U+0000" in response.text
    assert stored(db) == 0


@pytest.mark.parametrize("total", ["1e999999", "NaN", "Infinity", "-1e999999"])
async def test_a_total_that_is_no_amount_is_422_and_stores_nothing(stack, db, total):
    body = event()
    body.setdefault("order", {"id": "o-inf"})["total"] = total
    raw, headers = signed(body)
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 422, response.text
    assert stored(db) == 0


async def test_oversized_body_is_413(stack, db):
    body = event(data={"padding": "x" * (1024 * 1024)})
    raw, headers = signed(body)
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 413
    assert stored(db) == 0


async def test_unknown_event_type_is_stored_and_starts_nothing(stack, db):
    raw, headers = signed(event("cart.abandoned"))
    response = await stack.post("/events", content=raw, headers=headers)
    assert response.status_code == 202 and response.json()["started"] == [] == response.json()["signalled"]
    with db.session() as session:
        [row] = session.scalars(select(Event)).all()
        assert row.type == "cart.abandoned" and row.routed_at is not None and row.runs == 0


async def test_shipped_before_created_still_reaches_the_run(stack, env, db):
    await to_local_hour(env, 10)  # the shipping text keeps quiet hours
    order_id = f"O{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    created = event("order.created", order_id, occurred_at=now.isoformat())
    shipped = event("order.shipped", order_id, occurred_at=(now + timedelta(hours=20)).isoformat(),
                    data={"tracking_number": "TH123"})
    for body in (shipped, created):  # the store's webhooks arrive in the wrong order
        raw, headers = signed(body)
        assert (await stack.post("/events", content=raw, headers=headers)).status_code == 202
    handle = env.client.get_workflow_handle(f"fulfilment/{order_id}")
    for _ in range(100):
        status = await handle.query("status")
        if len(status["steps_done"]) >= 4:
            break
        await asyncio.sleep(0.05)
    outcomes = [s["outcome"] for s in status["steps_done"]]
    assert outcomes[:4] == ["sent", "received order.shipped", "sent", "sent"]


class CountedSignals(temporal.Interceptor):
    """The workflow ids a client signals, counted at the client's last step before the server."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def intercept_client(self, next: temporal.OutboundInterceptor) -> temporal.OutboundInterceptor:
        counter = self

        class Counting(temporal.OutboundInterceptor):
            async def signal_workflow(self, input: temporal.SignalWorkflowInput) -> None:
                counter.sent.append(input.id)
                await super().signal_workflow(input)

        return Counting(next)


async def test_an_event_signals_only_runs_the_store_knows(env, settings, db, fake):
    """`order.created` is heard by win-back runs; a customer in none costs no call to Temporal.
    One in a win-back run gets the signal (and converts)."""
    counted = CountedSignals()
    client = temporal.Client(**{**env.client.config(), "interceptors": [counted]})
    async with running_worker(env, settings, db) as tq:
        async with serving(env, settings.model_copy(update={"task_queue": tq}), db, client=client) as (http, _app):
            first = event()
            raw, headers = signed(first)
            answer = await http.post("/events", content=raw, headers=headers)
            assert answer.status_code == 202 and answer.json()["signalled"] == []
            assert counted.sent == []

            customer = first["customer"]["id"]
            winback = await env.client.start_workflow(
                "sequence", RunInput(snapshot=CATALOG.snapshot("winback"), key=customer,
                                     context={"customer": first["customer"], "brand": dict(CATALOG.file.brand)}),
                id=f"winback/{customer}", task_queue=tq)
            starts.record_run(db, winback.id, {"customer": first["customer"]})
            again = event(customer=first["customer"])
            raw, headers = signed(again)
            answer = await http.post("/events", content=raw, headers=headers)
            assert answer.status_code == 202 and answer.json()["signalled"] == [f"winback/{customer}"]
            assert counted.sent == [f"winback/{customer}"]
            await winback.result()


async def test_temporal_unreachable_loses_nothing(env, settings, db, fake):
    dead = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    body = event()
    raw, headers = signed(body)
    async with running_worker(env, settings, db) as tq:
        dead = dead.model_copy(update={"task_queue": tq})
        async with serving(env, dead, db, client=None) as (http, app):
            response = await http.post("/events", content=raw, headers=headers)
            assert response.status_code == 503 and response.headers["retry-after"] == "30"
            assert (await http.get("/healthz")).status_code == 503
            with db.session() as session:
                assert session.get(Event, body["id"]).routed_at is None
            # Temporal is back: the reconciler routes what was stored, exactly once.
            app.state.services.client = env.client
            assert await reconcile(db, env.client, CATALOG, tq, older_than=timedelta(0)) == 1
            assert await reconcile(db, env.client, CATALOG, tq, older_than=timedelta(0)) == 0
            # The sender's own retry of the same delivery now changes nothing.
            again = await http.post("/events", content=raw, headers=headers)
            assert again.status_code == 200 and again.json()["duplicate"] is True
            assert (await http.get("/healthz")).json() == {"database": "ok", "temporal": "ok"}
            run = await env.client.get_workflow_handle(f"fulfilment/{body['order']['id']}").describe()
            assert run.id == f"fulfilment/{body['order']['id']}"


async def test_healthz(stack):
    response = await stack.get("/healthz")
    assert response.status_code == 200 and response.json() == {"database": "ok", "temporal": "ok"}


# -- Shopify -----------------------------------------------------------------------------------

SHOPIFY_SECRET = "shpss_test_secret"
FIXTURES = ROOT / "tests" / "fixtures" / "shopify"


def shopify_request(topic: str, fixture: str, secret: str = SHOPIFY_SECRET, triggered_at: datetime | None = None,
                    webhook_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    import base64
    import hashlib
    import hmac

    raw = (FIXTURES / f"{fixture}.json").read_bytes()
    digest = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    return raw, {
        "content-type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": digest,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()), "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": (triggered_at or datetime.now(timezone.utc)).isoformat(),
        "X-Shopify-Shop-Domain": "lumen-camera.myshopify.com", "X-Shopify-API-Version": "2026-07",
    }


@pytest.fixture
async def shop(env, settings, db):
    async with running_worker(env, settings, db) as tq:
        shop_settings = settings.model_copy(update={"task_queue": tq, "shopify_secret": SecretStr(SHOPIFY_SECRET)})
        async with serving(env, shop_settings, db) as (http, _):
            yield http


async def test_shopify_order_fulfilment_and_delivery_steer_one_run(shop, env, db):
    plays = [("orders/create", "orders_create"), ("fulfillments/create", "fulfillments_create"),
             ("fulfillment_events/create", "fulfillment_events_create")]
    answers = []
    for topic, fixture in plays:
        raw, headers = shopify_request(topic, fixture)
        response = await shop.post("/webhooks/shopify", content=raw, headers=headers)
        assert response.status_code == 202, response.text
        answers.append(response.json())
    run_id = "fulfilment/820982911946154508"
    assert answers[0]["started"] == [run_id]
    assert answers[1]["signalled"] == [run_id] and answers[2]["signalled"] == [run_id]
    handle = env.client.get_workflow_handle(run_id)
    for _ in range(100):
        status = await handle.query("status")
        if "received order.delivered" in [s["outcome"] for s in status["steps_done"]]:
            break
        await asyncio.sleep(0.05)
    assert status["events_received"] == ["order.shipped", "order.delivered"]


@pytest.mark.parametrize("problem", ["hmac", "stale"])
async def test_shopify_refuses_forged_or_stale_deliveries(shop, db, problem):
    if problem == "hmac":
        raw, headers = shopify_request("orders/create", "orders_create", secret="not-the-secret")
    else:
        raw, headers = shopify_request("orders/create", "orders_create",
                                       triggered_at=datetime.now(timezone.utc) - timedelta(days=3))
    response = await shop.post("/webhooks/shopify", content=raw, headers=headers)
    assert response.status_code == 401
    assert stored(db) == 0


async def test_shopify_redelivery_is_one_event(shop, db):
    raw, headers = shopify_request("orders/create", "orders_create")
    first = await shop.post("/webhooks/shopify", content=raw, headers=headers)
    again = await shop.post("/webhooks/shopify", content=raw, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["duplicate"] is True and stored(db) == 1


async def test_shopify_topic_keepflow_does_not_use_is_acknowledged(shop, db):
    raw, headers = shopify_request("fulfillment_events/create", "fulfillment_events_create_in_transit")
    response = await shop.post("/webhooks/shopify", content=raw, headers=headers)
    assert response.status_code == 200 and "ignored" in response.json()
    assert stored(db) == 0


def test_events_command_lists_what_reached_no_sequence(db, monkeypatch):
    from typer.testing import CliRunner

    from keepflow.cli import app
    from keepflow.runtime import routing
    from keepflow.runtime.events import EventIn
    from keepflow.settings import get_settings

    url = db.url
    for body, runs in ((event("cart.abandoned"), 0), (event("order.created"), 1)):
        parsed = EventIn.model_validate(body)
        routing.store(db, parsed)
        with db.session() as session:  # routed as the router records it
            session.execute(update(Event).where(Event.id == parsed.id).values(routed_at=datetime.now(timezone.utc), runs=runs))
    pending = EventIn.model_validate(event("order.delivered"))
    routing.store(db, pending)  # stored while Temporal was away
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["events", "--unrouted"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "cart.abandoned" in result.output and "not yet routed" in result.output
    assert "order.created" not in result.output
