"""`keepflow demo`: the real journey on Temporal's time-skipping server, with every rule on."""

from __future__ import annotations

import re

from keepflow.tools.demo import run_demo
from tests.engine import DATA, SHOP_SEQUENCES, SHOP_TEMPLATES

# One sequence of each key kind.
KEYS_SEQUENCES = DATA / "keys" / "sequences.yaml"

# day, local time, sequence, step, channel, the rest (recipient and headline, or the hold).
LINE = re.compile(r"^day\s+(?P<day>\d+\.\d\d)\s+\w{3} (?P<time>\d\d:\d\d)\s+(?P<sequence>[a-z_]+)\s+"
                  r"(?P<step>\S+)\s+(?P<channel>email|sms)\s+(?P<rest>.*)$")


async def test_demo_plays_the_journey_as_production_would(capsys):
    assert await run_demo(SHOP_SEQUENCES, None, "th") == 0
    out = capsys.readouterr().out
    messages = [m.groupdict() for m in map(LINE.match, out.splitlines()) if m]
    got = [(float(m["day"]), m["sequence"], m["step"].split(".")[0], m["channel"]) for m in messages]
    # The store ships at 22:00 in Bangkok: the shipping email goes at once, the text is held by the
    # quiet hours until 08:00, as it would be in production.
    assert got == [
        (0.0, "fulfilment", "0", "email"),
        (1.5, "fulfilment", "2", "email"),
        (1.5, "fulfilment", "3", "sms"),
        (1.92, "fulfilment", "3", "sms"),
        (3.0, "fulfilment", "5", "email"),
        (4.0, "education", "1", "email"),
        (7.0, "education", "3", "email"),
        (10.0, "education", "5", "email"),
        (10.0, "cross_sell", "1", "email"),
        (13.0, "review_request", "0", "email"),
        (17.0, "review_request", "1", "email"),
    ], out
    held, sent = messages[2], messages[3]
    assert held["time"] == "22:00" and "held: quiet hours until" in held["rest"]
    assert sent["time"] == "08:00" and sent["rest"].startswith("+66812345678")
    assert "store event order.shipped" in out and "every run completed" in out


async def test_demo_plays_sequences_keyed_by_order_by_customer_and_by_inactivity(capsys):
    assert await run_demo(KEYS_SEQUENCES, SHOP_TEMPLATES, "en") == 0
    out = capsys.readouterr().out
    got = [(float(m["day"]), m["sequence"], m["channel"]) for m in map(LINE.match, out.splitlines()) if m]
    assert got == [(0.0, "receipt", "email"), (5.0, "thanks", "email"), (5.0, "winback", "email")], out
    assert "every run completed" in out


def test_the_command_plays_the_sequences_file_it_is_given():
    from typer.testing import CliRunner

    from keepflow.cli import app

    result = CliRunner().invoke(app, ["demo", "--sequences", str(KEYS_SEQUENCES)],
                                env={"KEEPFLOW_TEMPLATES": str(SHOP_TEMPLATES), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert {m["sequence"] for m in map(LINE.match, result.output.splitlines()) if m} == {"receipt", "thanks", "winback"}
