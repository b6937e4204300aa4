"""`keepflow deploy` and `keepflow versions`: an edit goes live on a running app without a restart,
an invalid one changes nothing, and every version is kept with its diff."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from keepflow.runtime import deployments
from keepflow.runtime.deployments import LiveCatalog
from keepflow.runtime.registry import load_catalog
from keepflow.store import Customer, Run
from keepflow.tools.deploy import deploy, deploy_on_save, run_deploy, run_versions
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES, running_worker
from tests.helpers import serving, serving_admin
from tests.test_webhooks import SECRET, signed

WELCOME = """
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: education_basics
"""


@pytest.fixture
def shop(tmp_path, settings, db, env):
    """The frozen shop's sequences file, copied where a test may edit it, with settings that reach
    the test's database and the time-skipping server (which has no run list: impact reads `runs`)."""
    path = tmp_path / "sequences.yaml"
    path.write_text(SHOP_SEQUENCES.read_text(encoding="utf-8"), encoding="utf-8")
    return path, settings.model_copy(update={
        "sequences_path": path, "templates_dir": SHOP_TEMPLATES, "database_url": db.url,
        "temporal_address": env.client.service_client.config.target_host})


def edit(path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_deploy_keeps_every_version_and_refuses_an_invalid_edit(shop, db, capsys):
    path, settings = shop
    assert run_deploy(settings, None, check_only=False) == 0
    assert "as v1" in capsys.readouterr().out
    assert run_deploy(settings, None, check_only=False) == 0
    assert "already live as v1: nothing to deploy" in capsys.readouterr().out

    edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 45d}")
    assert run_deploy(settings, None, check_only=False) == 0
    out = capsys.readouterr().out
    assert "changed: winback" in out and "as v2 (+1 -1 lines against v1)" in out

    edit(path, "trigger: order.created\n", "trigger: order.creatd\n")
    assert run_deploy(settings, None, check_only=False) == 1
    err = capsys.readouterr().err
    assert f"{path}:39:" in err and "order.created" in err  # where, and the did-you-mean
    assert "not deployed" in err and "v2 stays live" in err
    assert [v.label for v in deployments.versions(db)] == ["v2", "v1"]

    assert run_versions(settings, None) == 0
    listing = capsys.readouterr().out
    assert "v2" in listing and "v1" in listing and "keepflow deploy" in listing
    assert run_versions(settings, 2) == 0
    diff = capsys.readouterr().out
    assert "-    trigger: {inactive_for: 60d}" in diff and "+    trigger: {inactive_for: 45d}" in diff
    assert run_versions(settings, 7) == 1


def test_check_deploys_nothing(shop, db, capsys):
    path, settings = shop
    assert run_deploy(settings, None, check_only=False) == 0
    edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 30d}")
    assert run_deploy(settings, None, check_only=True) == 0
    assert "checked, not deployed (--check): v1 stays live" in capsys.readouterr().out
    assert [v.label for v in deployments.versions(db)] == ["v1"]


async def test_a_running_app_starts_new_runs_on_a_deployed_version_without_a_restart(shop, env, db, fake):
    path, settings = shop
    async with running_worker(env, settings, db) as task_queue:
        routed = settings.model_copy(update={"task_queue": task_queue})
        async with serving(routed, db, client=env.client, secrets=(SECRET,), live=True) as http:
            async def sign_up() -> dict:
                customer = f"cust-{uuid.uuid4().hex[:8]}"
                body = {"id": f"evt_{uuid.uuid4().hex}", "type": "customer.created",
                        "occurred_at": datetime.now(timezone.utc).isoformat(),
                        "customer": {"id": customer, "email": f"{customer}@example.com",
                                     "consents": {"email": True}}}
                raw, headers = signed(body)
                answer = await http.post("/events", content=raw, headers=headers)
                assert answer.status_code == 202, answer.text
                return answer.json()

            assert (await sign_up())["started"] == []  # the shop has no sign-up sequence yet
            edit(path, "\nsequences:\n", "\nsequences:\n" + WELCOME.lstrip("\n"))
            outcome = await deploy(settings, db, path.read_text(encoding="utf-8"), "test")
            assert outcome.deployed is not None and outcome.added == ["welcome"]
            for _ in range(60):  # the app reads the newest version every second
                if started := (await sign_up())["started"]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the app never switched to the deployed version")
    [run_id] = started
    assert run_id.startswith("welcome/")
    with db.session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        versions = deployments.versions_of(db, [(run.sequence_id, run.definition_hash)])
    assert versions == {("welcome", run.definition_hash): outcome.deployed.number}


async def test_a_version_this_process_cannot_load_is_skipped(shop, db):
    path, settings = shop
    first = load_catalog(path, SHOP_TEMPLATES)
    v1, _ = deployments.record(db, first, path.read_text(encoding="utf-8"), "test")
    live = LiveCatalog(first, v1.number)
    follower = asyncio.create_task(deployments.follow(db, live, path, SHOP_TEMPLATES, every=0.05))
    try:
        # Deployed by a process that has an activity this one does not (a newer release).
        needs_more = path.read_text(encoding="utf-8").replace(
            "    steps:\n      - send: email\n        template: order_confirmed",
            "    steps:\n      - do: not_in_this_release\n      - send: email\n        template: order_confirmed", 1)
        assert "not_in_this_release" in needs_more
        deployments.record(db, first, needs_more, "a newer release")
        edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 20d}")
        v3, _ = deployments.record(db, load_catalog(path, SHOP_TEMPLATES), path.read_text(encoding="utf-8"), "test")
        for _ in range(100):
            if live.version == v3.number:
                break
            assert live.version == v1.number  # never v2
            await asyncio.sleep(0.02)
        assert live.version == v3.number
        assert live.catalog.sequences["winback"].inactivity.inactive_for.days == 20
    finally:
        follower.cancel()


def test_a_process_starts_on_the_live_version_not_its_own_file(shop, db, caplog):
    path, settings = shop
    first = deployments.load_live(db, path, SHOP_TEMPLATES, "first start")
    assert first.version == 1  # nothing was deployed: the file was
    edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 10d}")
    again = deployments.load_live(db, path, SHOP_TEMPLATES, "restart")
    assert again.version == 1 and again.catalog.sequences["winback"].inactivity.inactive_for.days == 60
    assert "differs from the live version v1" in caplog.text and "keepflow deploy" in caplog.text
    with db.session() as session:
        assert list(session.scalars(select(Run))) == []


async def test_the_dashboard_shows_the_version_each_run_started_on(shop, db):
    path, settings = shop
    first = load_catalog(path, SHOP_TEMPLATES)
    deployments.record(db, first, path.read_text(encoding="utf-8"), "test")
    edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 50d}")
    second = load_catalog(path, SHOP_TEMPLATES)
    deployments.record(db, second, path.read_text(encoding="utf-8"), "keepflow deploy")
    now = datetime.now(timezone.utc)
    with db.session() as session:
        session.add_all(Customer(id=c, email=f"{c}@example.com", consents={}, attributes={}) for c in ("c1", "c2", "c3"))
        session.flush()
        session.add_all([
            Run(id="winback/c1", sequence_id="winback", customer_id="c1", started_at=now - timedelta(days=3),
                definition_hash=first.snapshot("winback").hash),
            Run(id="winback/c2", sequence_id="winback", customer_id="c2", started_at=now - timedelta(days=1),
                definition_hash=second.snapshot("winback").hash),
            Run(id="winback/c3", sequence_id="winback", customer_id="c3", started_at=now - timedelta(days=2)),
        ])
    async with serving_admin(settings, db, catalog=second) as http:
        page = (await http.get("/sequences/winback")).text
        card = (await http.get("/customers", params={"q": "c1"})).text
    assert re.search(r'id="live-version">v2</b>', page) and "by keepflow deploy" in page
    rows = re.findall(r'<tr data-version="([^"]+)"><td>[^<]*</td><td class="n">(\d+)</td>', page)
    assert rows == [("v2", "1"), ("v1", "1"), ("a definition from before versions were kept", "1")]
    assert "winback/c1, on v1" in card


async def test_keepflow_dev_deploys_each_valid_save(shop, db, caplog):
    path, settings = shop
    caplog.set_level(logging.INFO, logger="keepflow.tools.deploy")
    deployments.record(db, load_catalog(path, SHOP_TEMPLATES), path.read_text(encoding="utf-8"), "keepflow dev")
    stop = asyncio.Event()
    watcher = asyncio.create_task(deploy_on_save(settings, db, stop, every=0.05))

    try:
        await asyncio.sleep(0.2)
        edit(path, "trigger: order.created\n", "trigger: order.creatd\n")
        for _ in range(100):
            if "not deployed" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert f"{path}:39:" in caplog.text and "v1 keeps running" in caplog.text
        assert deployments.live(db).label == "v1"
        edit(path, "trigger: order.creatd\n", "trigger: order.created\n")  # back as it was: already live
        edit(path, "    trigger: {inactive_for: 60d}", "    trigger: {inactive_for: 40d}")
        for _ in range(200):
            if deployments.live(db).label == "v2":
                break
            await asyncio.sleep(0.05)
        assert deployments.live(db).origin == "keepflow dev (file saved)"
        for _ in range(100):
            if "deployed" in caplog.text and "as v2" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "changed: winback" in caplog.text
    finally:
        stop.set()
        await watcher
