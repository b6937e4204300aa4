"""`keepflow simulate --do` and `do:` entries of a timeline: sample results stand in for an activity."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.runtime.events import CustomerIn, OrderIn
from keepflow.runtime.registry import ActivityContext, activity, discover, load_catalog, reset
from keepflow.tools import simulate as sim
from tests.engine import ROOT, SHOP_SEQUENCES, SHOP_TEMPLATES

CATALOG = load_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)
NOK = CustomerIn(id="cust-7", email="nok@example.com", first_name="Nok", locale="en",
                 timezone="Asia/Bangkok", consents={"email": True})
ORDER = OrderIn.model_validate(json.loads((ROOT / "examples" / "order-created.json").read_text())["order"])
OWNS_A_TRIPOD = {"id": "cust-7", "orders_count": 3, "total_spent": "420.00", "purchased_skus": ["TRIPOD-01"]}
START = datetime(2027, 1, 5, 3, 0, tzinfo=timezone.utc)
TIMELINE = """\
- day 1: review.submitted
- do: load_customer
  result: {id: cust-7, orders_count: 3, total_spent: "420.00", purchased_skus: [TRIPOD-01]}
"""


def texts(lines: list[sim.Line]) -> list[str]:
    return sim.format_lines(lines, "Asia/Bangkok")


def test_a_timeline_gives_do_results_beside_its_events(tmp_path: Path):
    timeline = tmp_path / "timeline.yaml"
    timeline.write_text(TIMELINE)
    assert [e.type for e in sim.read_timeline(timeline)] == ["review.submitted"]
    assert sim.read_results(timeline) == {"load_customer": OWNS_A_TRIPOD}
    timeline.write_text("- do: load_customer\n")
    with pytest.raises(sim.SimulationError, match=r"entry 1.*- do: load_customer.*result:"):
        sim.read_results(timeline)


async def test_a_sample_result_stands_in_for_the_activity_and_is_named():
    lines = await sim.simulate(CATALOG, "cross_sell", NOK, ORDER, [], start_at=START,
                               results={"load_customer": OWNS_A_TRIPOD})
    out = texts(lines)
    assert any("branches taken: 1 → else)" in t for t in out), out
    [do] = [t for t in out if "do load_customer" in t]
    assert '"purchased_skus": ["TRIPOD-01"]' in do and "the sample given for load_customer" in do


async def test_without_a_sample_the_activity_runs_and_the_output_says_so():
    lines = await sim.simulate(CATALOG, "cross_sell", NOK, ORDER, [], start_at=START)
    out = texts(lines)
    assert any("branches taken: " in t and "1 → then)" in t for t in out), out
    [do] = [t for t in out if "do load_customer" in t]
    assert "ran on the simulated store" in do


class NoteArgs(BaseModel):
    text: str


class Noted(BaseModel):
    note_id: str


@pytest.fixture
def unreachable_crm():
    discover()

    @activity("note_crm", max_attempts=1)
    def note_crm(args: NoteArgs, ctx: ActivityContext) -> Noted:
        raise ConnectionError("crm.example.com is not reachable from here")

    yield
    reset()


CRM = """\
sequences:
  - id: noted
    category: transactional
    trigger: customer.created
    steps:
      - do: note_crm
        with: {text: hello}
        as: crm
      - if: "crm.note_id == 'N-1'"
        then: [exit: noted]
"""


def test_a_failing_activity_is_a_line_with_the_way_out_not_a_crash(tmp_path: Path, unreachable_crm):
    sequences = tmp_path / "sequences.yaml"
    sequences.write_text(CRM)
    customer = tmp_path / "customer.json"
    customer.write_text(NOK.model_dump_json())
    base = ["simulate", "noted", "--customer", str(customer), "--sequences", str(sequences)]
    env = {"KEEPFLOW_TEMPLATES": str(SHOP_TEMPLATES)}
    failed = CliRunner().invoke(app, base, env=env)
    assert failed.exit_code == 0, failed.output
    assert "crm.example.com is not reachable" in failed.output
    assert "--do note_crm=" in failed.output  # how to go on without it
    sampled = CliRunner().invoke(app, [*base, "--do", 'note_crm={"note_id": "N-1"}'], env=env)
    assert sampled.exit_code == 0, sampled.output
    assert "end: noted" in sampled.output and "the sample given for note_crm" in sampled.output
    wrong = CliRunner().invoke(app, [*base, "--do", 'note_crm={"id": "N-1"}'], env=env)
    assert wrong.exit_code == 2
    [line] = wrong.output.strip().splitlines()
    assert line == "error: --do note_crm: not what note_crm returns: note_id: Field required (it returns note_id)"


async def test_a_sample_coupon_is_in_the_store_so_the_messages_offering_it_go_out():
    coupon = {"code": "WELCOME10", "percent": 15, "expires_at": "2027-02-01T00:00:00Z"}
    lines = await sim.simulate(CATALOG, "winback", NOK, None, [], start_at=START,
                               results={"create_coupon": coupon})
    offers = [line for line in lines if line.request is not None and line.request.template == "winback_offer"]
    assert offers and all(line.result.status == "sent" for line in offers), texts(lines)
    assert offers[0].request.context["coupon"]["code"] == "WELCOME10"
