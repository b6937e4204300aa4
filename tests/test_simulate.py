"""`keepflow simulate`: the real workflow on a time-skipping server, scripted by a timeline."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.runtime.events import CustomerIn, OrderIn
from keepflow.runtime.registry import load_catalog
from keepflow.tools import simulate as sim
from tests.engine import DATA, ROOT, SHOP_SEQUENCES, SHOP_TEMPLATES

CATALOG = load_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)
NOK = CustomerIn(id="cust-7", email="nok@example.com", phone="+66812345678", first_name="Nok", locale="en",
                 timezone="Asia/Bangkok", consents={"email": True, "sms": True})
ORDER = OrderIn.model_validate(json.loads((ROOT / "examples" / "order-created.json").read_text())["order"])


def texts(lines: list[sim.Line]) -> list[str]:
    return sim.format_lines(lines, "Asia/Bangkok")


async def test_simulate_shows_the_shipping_text_held_until_morning():
    timeline = sim.read_timeline(ROOT / "examples" / "timeline.yaml")
    # 21:30 in Bangkok: the shipping text a day later falls in the quiet hours.
    lines = await sim.simulate(CATALOG, "fulfilment", NOK, ORDER, timeline,
                               start_at=datetime(2027, 1, 5, 14, 30, tzinfo=timezone.utc))
    out = texts(lines)
    held = next(i for i, t in enumerate(out) if "sms order_shipped" in t and "held, quiet hours" in t)
    sent = next(i for i, t in enumerate(out) if "sms order_shipped" in t and t.endswith(": sent"))
    assert held < sent and "Thu 07 Jan 08:00" in out[sent]
    assert any("timeline        event order.delivered" in t for t in out)
    # The journey goes on into the sequences fulfilment starts, to the review reminder.
    assert [t.split()[6] for t in out if "end: completed" in t] == [
        "fulfilment", "education", "cross_sell", "review_request"]
    assert any("review_reminder" in t for t in out)


async def test_simulate_shows_skips_and_branches_with_their_reasons():
    no_sms = NOK.model_copy(update={"consents": {"email": True, "sms": False}})
    lines = await sim.simulate(CATALOG, "winback", no_sms, None, [],
                               start_at=datetime(2027, 1, 5, 3, 0, tzinfo=timezone.utc))
    out = texts(lines)
    assert any("email winback_offer" in t and t.endswith(": sent") for t in out)
    assert not any("sms winback_offer" in t for t in out)
    assert any("branches taken: 2 → else" in t for t in out)


def test_a_bad_timeline_is_refused_in_plain_words(tmp_path):
    bad = tmp_path / "timeline.yaml"
    bad.write_text("- someday: order.shipped\n")
    with pytest.raises(sim.SimulationError, match="entry 1.*use `day 2` or a duration"):
        sim.read_timeline(bad)


def test_the_command_says_which_sequences_exist(tmp_path):
    customer = tmp_path / "customer.json"
    customer.write_text(NOK.model_dump_json())
    result = CliRunner().invoke(app, ["simulate", "nosuch", "--customer", str(customer),
                                      "--sequences", str(SHOP_SEQUENCES)])
    assert result.exit_code == 2 and "no sequence 'nosuch'" in result.output and "winback" in result.output


VIP = """\
sequences:
  - id: vip
    category: marketing
    trigger: order.created
    key: order.id
    steps:
      - if: customer.rfm.segment == 'champions'
        then:
          - send: email
            template: order_confirmed
        else:
          - exit: done
"""


def test_simulate_reads_rfm_conditions_and_takes_scores_from_the_command_line(tmp_path):
    sequences = tmp_path / "sequences.yaml"
    shop = SHOP_SEQUENCES.read_text()
    sequences.write_text(shop[:shop.index("\nsequences:\n") + 1] + VIP)
    customer = tmp_path / "customer.json"
    customer.write_text(NOK.model_dump_json())
    order = tmp_path / "order.json"
    order.write_text(ORDER.model_dump_json())
    base = ["simulate", "vip", "--customer", str(customer), "--order", str(order), "--sequences", str(sequences)]
    env = {"KEEPFLOW_TEMPLATES": str(SHOP_TEMPLATES)}
    # A first order scores as a new customer, not a champion: the run takes the else branch.
    plain = CliRunner().invoke(app, base, env=env)
    assert plain.exit_code == 0, plain.output
    assert "end: done" in plain.output and "order_confirmed" not in plain.output
    champion = CliRunner().invoke(app, [*base, "--rfm", '{"segment": "champions"}'], env=env)
    assert champion.exit_code == 0, champion.output
    assert "email order_confirmed (marketing, step 0.then.0): sent" in champion.output, champion.output
    wrong = CliRunner().invoke(app, [*base, "--rfm", '{"segment": "champion"}'], env=env)
    assert wrong.exit_code == 2 and "not one RFM gives" in wrong.output


KEYS = load_catalog(DATA / "keys" / "sequences.yaml", SHOP_TEMPLATES)


@pytest.mark.parametrize(("sequence", "order", "templates"), [
    ("receipt", ORDER, ["order_confirmed"]),  # keyed by order.id
    ("thanks", ORDER, ["review_request", "winback_offer"]),  # by customer.id, started by an order event
    ("winback", None, ["winback_offer"]),  # by customer.id, started by inactivity
])
async def test_simulate_runs_a_sequence_of_every_key_kind(sequence, order, templates):
    lines = await sim.simulate(KEYS, sequence, NOK, order, [], start_at=datetime(2027, 1, 5, 3, 0, tzinfo=timezone.utc))
    out = texts(lines)
    assert [t.split("email ")[1].split()[0] for t in out if t.endswith(": sent")] == templates, out
    assert not any("failed" in t for t in out), out
    assert sum("end: completed" in t for t in out) == len(templates), out


async def test_an_inactivity_run_hears_of_the_scans_event_as_in_production():
    lines = await sim.simulate(KEYS, "winback", NOK, None, [], start_at=datetime(2027, 1, 5, 3, 0, tzinfo=timezone.utc))
    [request] = [line.request for line in lines if line.request is not None]
    assert request.context["event"]["type"] == "customer.inactive"


async def test_a_customer_keyed_sequence_started_by_an_order_event_needs_the_order():
    # Its runs always have the order its trigger is about, and its templates may use it.
    with pytest.raises(sim.SimulationError, match="starts on order.delivered.*pass --order"):
        await sim.simulate(KEYS, "thanks", NOK, None, [])


async def test_simulate_shows_the_channel_a_fallback_step_went_on(tmp_path):
    from tests.helpers import LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES, write_project

    path = write_project(tmp_path, LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES)
    catalog = load_catalog(path, tmp_path / "templates")
    lines = await sim.simulate(catalog, "tips", NOK, None, [], start_at=datetime(2027, 1, 5, 3, 0, tzinfo=timezone.utc))
    [sent] = [t for t in texts(lines) if "tip" in t and "sent" in t]
    assert sent.endswith("line tip (marketing, step 0): sent on sms (fallback: no LINE account)"), sent
