"""docs/sequences.md's walkthrough, followed to the letter: the two sequences and the template it
shows, added to the shipped shop, validate, preview with RFM data, simulate, deploy to a running
stack without a restart, and read on the dashboard in the shop's time zone. The text is taken
from the page itself, so the guide cannot drift from what works."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.runtime import deployments
from keepflow.runtime.registry import load_catalog
from keepflow.tools.deploy import deploy
from keepflow.tools.validate import run_validate
from tests.engine import running_worker
from tests.helpers import serving, serving_admin
from tests.test_webhooks import SECRET, signed

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "sequences.md"
SECTION = "## From idea to live: two sequences, start to finish"


def blocks(language: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


@pytest.fixture
def edited(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shipped shop with the guide's edits made, and the unedited copy's text kept."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    path = tmp_path / "sequences.yaml"
    shipped = (ROOT / "sequences.yaml").read_text(encoding="utf-8")
    (tmp_path / "shipped.yaml").write_text(shipped, encoding="utf-8")
    sequences, rules, timeline = blocks("yaml")
    assert rules.strip() == "timezone: Asia/Bangkok"
    text = shipped.rstrip("\n") + "\n\n" + sequences
    text = text.replace("\nrules:\n", "\nrules:\n" + rules, 1)
    path.write_text(text, encoding="utf-8")
    for template in blocks("html"):
        name = re.match(r"\{# (templates/\S+) #\}", template).group(1)
        (tmp_path / name).write_text(template, encoding="utf-8")
    (tmp_path / "lens_tips_timeline.yaml").write_text(timeline, encoding="utf-8")
    return path, tmp_path / "templates"


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_guide_validates_previews_and_simulates(edited, monkeypatch):
    path, templates = edited
    monkeypatch.setenv("KEEPFLOW_TEMPLATES", str(templates))
    assert run_validate(path, templates) == 0
    catalog = load_catalog(path, templates)
    assert catalog.file.rules.timezone == "Asia/Bangkok"
    customer = str(ROOT / "examples" / "customer.json")
    champion = cli("preview", "vip_referral", "--customer", customer, "--sequences", str(path),
                   "--rfm", '{"segment": "champions"}')
    newcomer = cli("preview", "vip_referral", "--customer", customer, "--sequences", str(path), "--rfm", '{"segment": "new"}')
    assert "referral_invite" in champion and "ของขวัญสำหรับคุณและเพื่อน" in champion  # the customer reads Thai
    assert "→ then (this customer)" in " ".join(champion.split())
    assert "→ else (this customer)" in " ".join(newcomer.split())

    order = str(ROOT / "examples" / "order.json")
    ordered_again = cli("simulate", "lens_tips", "--customer", customer, "--order", order, "--sequences", str(path),
                        "--events", str(path.parent / "lens_tips_timeline.yaml"))
    no_order = cli("simulate", "lens_tips", "--customer", customer, "--order", order, "--sequences", str(path))
    assert "education_basics" in ordered_again and "cross_sell_tripod" not in ordered_again
    assert "education_basics" in no_order and "cross_sell_tripod" in no_order


async def test_the_guide_deploys_to_a_running_stack_and_reads_in_bangkok_time(edited, env, db, fake, settings, monkeypatch):
    path, templates = edited
    edited_text = path.read_text(encoding="utf-8")
    path.write_text((path.parent / "shipped.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    settings = settings.model_copy(update={"sequences_path": path, "templates_dir": templates, "database_url": db.url})
    async with running_worker(env, settings, db) as task_queue:
        routed = settings.model_copy(update={"task_queue": task_queue})
        async with serving(routed, db, client=env.client, secrets=(SECRET,), live=True) as http:
            path.write_text(edited_text, encoding="utf-8")
            outcome = await deploy(settings, db, edited_text, "keepflow deploy")
            assert outcome.deployed is not None and outcome.added == ["lens_tips", "vip_referral"]
            customer = f"cust-{uuid.uuid4().hex[:8]}"
            for _ in range(60):
                body = {"id": f"evt_{uuid.uuid4().hex}", "type": "order.delivered",
                        "occurred_at": datetime.now(timezone.utc).isoformat(),
                        "customer": {"id": customer, "email": "nok@example.com", "locale": "th",
                                     "consents": {"email": True}},
                        "order": {"id": f"o-{uuid.uuid4().hex[:6]}", "total": "1290.00", "currency": "THB", "items": []}}
                raw, headers = signed(body)
                answer = await http.post("/events", content=raw, headers=headers)
                assert answer.status_code == 202, answer.text
                if answer.json()["started"]:
                    break
                await asyncio.sleep(0.1)
            assert sorted(answer.json()["started"]) == [f"lens_tips/{customer}", f"vip_referral/{customer}"]
    live = load_catalog(path, templates, edited_text)
    async with serving_admin(settings, db, catalog=live) as http:
        page = (await http.get("/sequences/lens_tips")).text
    assert "Asia/Bangkok" in page and "Care tips" in page and "Tripod offer" in page
    assert f'id="live-version">{deployments.live(db).label}</b>' in page
    assert re.search(r'<tr data-version="v2"><td>v2</td><td class="n">1</td>', page)
