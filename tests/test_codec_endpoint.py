"""The codec endpoint: Temporal's /encode and /decode contract, refused without the token, and
read by the real `temporal` CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from temporalio.api.common.v1 import Payload

from keepflow.http.codec import bearer_token, codec_app
from keepflow.runtime.codec import EncryptionCodec
from keepflow.runtime.payload_keys import parse_payload_keys
from tests.engine import PAYLOAD_KEYS

TOKEN = "codec-test-token"
UI = "http://127.0.0.1:8233"


def client() -> httpx.AsyncClient:
    app = codec_app(EncryptionCodec(parse_payload_keys(PAYLOAD_KEYS)), bearer_token([TOKEN]), ui_origins=[UI],
                    namespace="default")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


def body(*texts: str) -> dict:
    return {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                          "data": base64.b64encode(t.encode()).decode()} for t in texts]}


AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"}


async def test_encode_then_decode_round_trips():
    async with client() as http:
        sealed = await http.post("/encode", json=body('"nok@example.com"'), headers=AUTH)
        assert sealed.status_code == 200, sealed.text
        [payload] = sealed.json()["payloads"]
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"binary/encrypted"
        assert b"nok@example.com" not in base64.b64decode(payload["data"])
        opened = await http.post("/decode", json=sealed.json(), headers=AUTH)
    assert opened.json() == body('"nok@example.com"')


async def test_refused_without_the_token_or_with_a_wrong_one():
    async with client() as http:
        sealed = (await http.post("/encode", json=body('"x"'), headers=AUTH)).json()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            answer = await http.post("/decode", json=sealed, headers=headers)
            assert answer.status_code == 401 and "nok" not in answer.text
        other = await http.post("/decode", json=sealed, headers={**AUTH, "X-Namespace": "other"})
        assert other.status_code == 404


async def test_an_open_token_list_lets_nobody_in():
    app = codec_app(EncryptionCodec([]), bearer_token([]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec") as http:
        assert (await http.post("/decode", json=body(), headers={"Authorization": "Bearer "})).status_code == 401


async def test_the_temporal_ui_origin_may_call_it_from_a_browser():
    async with client() as http:
        preflight = await http.options("/decode", headers={
            "Origin": UI, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace"})
        elsewhere = await http.options("/decode", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == UI
    assert "access-control-allow-origin" not in elsewhere.headers


async def test_the_temporal_cli_decodes_a_sealed_run_through_it(env, settings, db, fake, tmp_path: Path):
    """`temporal workflow show --codec-endpoint` against a served codec shows the customer's address."""
    import asyncio

    from keepflow.http.serving import serve_http
    from keepflow.tools.temporal_dev_server import free_port
    from keepflow.runtime.codec import Chain
    from tests.engine import PARTS, TEST_TEMPLATES, make_settings, running_worker
    from tests.helpers import snapshot, start

    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
    port, stop = free_port(), asyncio.Event()
    # As the admin app mounts it: sealed payloads opened, and the context they reference put back.
    app = codec_app(Chain(PARTS, EncryptionCodec(parse_payload_keys(PAYLOAD_KEYS))), bearer_token([TOKEN]))
    server = asyncio.create_task(serve_http(app, "127.0.0.1", port, stop))
    try:
        async with running_worker(env, settings, db) as tq:
            handle = await start(env.client, tq, snapshot(
                "sequences:\n  - id: note\n    category: transactional\n    steps:\n"
                "      - send: email\n        template: note\n"))
            await handle.result()
        temporal = Path(sys.executable).parent / "temporal"
        command = [str(temporal), "workflow", "show", "-w", handle.id, "-o", "json",
                   "--address", env.client.service_client.config.target_host]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        sealed = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=environment,
                                         timeout=60)
        opened = await asyncio.to_thread(
            subprocess.run, command + ["--codec-endpoint", f"http://127.0.0.1:{port}", "--codec-auth", f"Bearer {TOKEN}"],
            capture_output=True, text=True, env=environment, timeout=60)
    finally:
        stop.set()
        await server
    assert sealed.returncode == 0 and opened.returncode == 0, (sealed.stderr, opened.stderr)
    started = json.loads(opened.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]
    [payload] = started["input"]["payloads"]
    assert b"nok@example.com" in base64.b64decode(payload["data"])
    [raw] = json.loads(sealed.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
    assert b"nok@example.com" not in base64.b64decode(raw["data"])


async def test_the_admin_app_serves_it_to_signed_in_admins_and_the_token_not_to_marketers(settings, db):
    from pydantic import SecretStr

    from tests.helpers import serving_admin

    settings = settings.model_copy(update={"payload_keys": SecretStr(PAYLOAD_KEYS), "codec_token": SecretStr(TOKEN)})
    sealed = body('"nok@example.com"')
    async with serving_admin(settings, db, role="admin", name="ada") as admin:
        sealed = (await admin.post("/codec/encode", json=sealed)).json()
        opened = await admin.post("/codec/decode", json=sealed)
        assert opened.status_code == 200 and opened.json() == body('"nok@example.com"')
    async with serving_admin(settings, db, role="marketer", name="mia") as marketer:
        refused = await marketer.post("/codec/decode", json=sealed)
        assert refused.status_code == 401 and "nok" not in refused.text
        by_token = await marketer.post("/codec/decode", json=sealed, headers={"Authorization": f"Bearer {TOKEN}"})
        assert by_token.json() == body('"nok@example.com"')
