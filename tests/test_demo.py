"""`keepflow demo`: the real journey on Temporal's time-skipping server, with every rule on."""

from __future__ import annotations

import re

from keepflow.tools.demo import run_demo
from tests.engine import SHOP_SEQUENCES

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
