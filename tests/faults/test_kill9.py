"""kill -9 of the worker mid-send, at random and right after the provider accepted: no message
goes out twice, and every run still completes."""

from __future__ import annotations

import pytest

from tests.faults.kills import Plan, campaign
from tests.faults.stack import Stack

# Runs keep starting for about as long as the eight kills take, so an accept-kill always finds a send.
PLAN = Plan(runs=30, random_kills=4, email_accept_kills=2, sms_accept_kills=2, start_over=40.0, seed=7,
            timeout=150.0)


@pytest.mark.timeout(280)
async def test_kill_9_mid_send_never_sends_a_message_twice(stack: Stack):
    out = await campaign(stack, PLAN)
    print("\n" + out.report())

    # Every kill the plan asked for happened, those after an accept on the channel asked for.
    assert len(out.kills) == len(PLAN.kinds())
    assert sorted(out.accept_killed.values()) == ["email"] * PLAN.email_accept_kills + ["sms"] * PLAN.sms_accept_kills
    assert out.unexpected_exits == []
    # Every run completed, and sent or accounted for every message.
    assert out.failed == {}
    assert all(r.exit_reason == "completed" for r in out.completed.values())
    assert set(out.rows) == set(out.expected) and out.strays() == []
    # No message twice.
    assert out.doubled() == []
    for key, row in out.rows.items():
        requests = out.requests.get(key, 0)
        if row.channel == "sms":
            # Twilio can be asked: a text whose accept was lost is found there, not sent again.
            assert (row.status, requests) == ("sent", 1), (key, row)
        elif row.status == "sent":
            assert requests == 1, (key, row)
        else:
            # Email is at-most-once: an attempt that died after `sending` leaves the row `unknown`,
            # with the one request that may have gone out (none if it died before the request
            # reached the provider).
            assert row.status == "unknown" and requests <= 1, (key, row, requests)
    # A kill right after the provider's accept: the email is `unknown` with exactly one request;
    # the text is found at Twilio, `sent`, with one request.
    for key, channel in out.accept_killed.items():
        expected = ("unknown", 1) if channel == "email" else ("sent", 1)
        assert (out.rows[key].status, out.requests[key]) == expected, (key, out.rows[key])
