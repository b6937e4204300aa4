"""Temporal behind TLS and mTLS, configured as the `temporal` CLI is (TEMPORAL_* and temporal.toml):
a real dev server behind a TLS-terminating proxy, a CA made here, a run that goes through."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trustme
from pydantic import SecretStr

from keepflow.runtime.client import TemporalUnreachable, connect
from keepflow.runtime.payloads import RunStatus
from keepflow.settings import Settings
from keepflow.tools.temporal_dev_server import DevServer, free_port
from tests.engine import CATALOG, PAYLOAD_KEYS, TEST_TEMPLATES, make_settings
from tests.helpers import serving, snapshot, start
from tests.tls_proxy import tls_proxy
from worker import build_worker

NOTE = "sequences:\n  - id: note\n    category: transactional\n    steps:\n      - send: email\n        template: note\n"


@pytest.fixture(scope="module")
async def dev_server(tmp_path_factory) -> AsyncIterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("temporal"), port=free_port(), ui_port=None)
    server.start()
    try:
        await server.wait_ready(Settings(payload_keys=SecretStr(PAYLOAD_KEYS)))
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_env(monkeypatch):
    """No TEMPORAL_* from the machine running the tests, and no temporal.toml of its user."""
    import os

    for name in [n for n in os.environ if n.startswith("TEMPORAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    return monkeypatch


async def one_run(client, settings, db) -> RunStatus:
    task_queue = f"tls-{uuid.uuid4()}"
    async with build_worker(client, settings, db, task_queue=task_queue, catalog=CATALOG):
        return await (await start(client, task_queue, snapshot(NOTE))).result()


async def test_tls_with_the_servers_ca_runs_a_workflow(dev_server, clean_env, tmp_path, fake, db):
    ca = trustme.CA()
    with tls_proxy(dev_server.address, ca) as address:
        clean_env.setenv("TEMPORAL_ADDRESS", address)
        clean_env.setenv("TEMPORAL_TLS_SERVER_CA_CERT_DATA", ca.cert_pem.bytes().decode())
        settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
        assert settings.temporal_address == address
        result = await one_run(await connect(settings), settings, db)
        assert [s.outcome for s in result.steps_done] == ["sent"]
        # Another CA's certificate is refused, and the error says it is the certificate.
        clean_env.setenv("TEMPORAL_TLS_SERVER_CA_CERT_DATA", trustme.CA().cert_pem.bytes().decode())
        with pytest.raises(TemporalUnreachable, match="TLS handshake failed: the server's certificate was rejected"):
            await connect(settings)
        clean_env.delenv("TEMPORAL_TLS_SERVER_CA_CERT_DATA")
        with pytest.raises(TemporalUnreachable, match="closed the connection"):
            await connect(settings)


async def test_mtls_from_a_temporal_toml_profile(dev_server, clean_env, tmp_path, fake, db):
    ca, client_ca = trustme.CA(), trustme.CA()
    leaf = client_ca.issue_cert("worker.keepflow.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with tls_proxy(dev_server.address, ca, client_ca=client_ca) as address:
        (tmp_path / "temporal.toml").write_text(
            f'[profile.shop]\naddress = "{address}"\nnamespace = "default"\n[profile.shop.tls]\n'
            f'server_ca_cert_path = "{tmp_path / "ca.pem"}"\nclient_cert_path = "{tmp_path / "client.pem"}"\n'
            f'client_key_path = "{tmp_path / "client.key"}"\n')
        clean_env.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "temporal.toml"))
        clean_env.setenv("TEMPORAL_PROFILE", "shop")
        settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)
        result = await one_run(await connect(settings), settings, db)
        assert [s.outcome for s in result.steps_done] == ["sent"]
        # Without the client certificate the proxy ends the handshake; /healthz says so.
        (tmp_path / "temporal.toml").write_text(
            f'[profile.shop]\naddress = "{address}"\n[profile.shop.tls]\nserver_ca_cert_path = "{tmp_path / "ca.pem"}"\n')
        with pytest.raises(TemporalUnreachable, match="client certificate"):
            await connect(settings)
        async with serving(settings, db) as http:
            health = await http.get("/healthz")
    assert health.status_code == 503
    assert health.json()["temporal"].startswith("unreachable: TLS handshake failed: ")
    assert "client certificate" in health.json()["temporal"]


@pytest.mark.parametrize("said", [
    "Failed client connect: Transport(tonic::transport::Error(Transport, hyper::Error(Io, Kind(BrokenPipe))))",
    # The same refusal, seen when the server hangs up after the client's first request was sent.
    '`get_system_info` call error after connection: Status { code: Cancelled, message: "operation was canceled", '
    'source: Some(tonic::transport::Error(Transport, hyper::Error(Canceled, "connection closed"))) }',
])
def test_a_plain_client_hung_up_on_is_told_to_try_tls(said):
    from keepflow.runtime.client import why_unreachable

    assert why_unreachable(RuntimeError(said)).startswith("the server closed the connection; if it expects TLS")
