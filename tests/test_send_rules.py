"""The sending rules as one pure function: each rule, and the order they are asked in.

No database and no Temporal: a send is decided from the request the run made, the facts the
activity read, and the run's clock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta, timezone

import pytest

from keepflow.language.dsl import Cap, QuietHours, Rules
from keepflow.runtime import send_rules
from keepflow.runtime.payloads import SendPolicy, SendRequest, SendTerms
from keepflow.runtime.send_rules import Defer, Facts, OfferedCoupon, Send, Skip, decide

# 15:00 in Bangkok; 22:00 in Bangkok (inside the default quiet hours, 21:00-08:00).
AFTERNOON = datetime(2027, 1, 5, 8, 0, tzinfo=timezone.utc)
NIGHT = datetime(2027, 1, 5, 15, 0, tzinfo=timezone.utc)
MORNING = datetime(2027, 1, 6, 1, 0, tzinfo=timezone.utc)  # 08:00 in Bangkok
RULES = Rules(fallback_timezones=["Asia/Bangkok", "America/New_York"])
GOOD = Facts(recipient="+66812345678", recipient_checked=True, consents={"email": True, "sms": True},
             timezone="Asia/Bangkok")


def request(channel: str = "sms", category: str = "marketing", *, quiet_hours: QuietHours | None = None,
            on_cap: str = "defer", rules: Rules = RULES, **fields) -> SendRequest:
    terms = SendTerms(group="news", quiet_hours=quiet_hours, on_cap=on_cap, rules=rules)
    return SendRequest(workflow_id="news/1", sequence_id="news", step="0", channel=channel, template="ping",
                       category=category, context={"customer": {"id": "c-1"}}, terms=terms, **fields)


def facts(**changes) -> Facts:
    return replace(GOOD, **changes)


# -- each rule ---------------------------------------------------------------------------------------

def test_a_message_that_may_go_is_sent_under_the_cap_of_its_channel():
    assert decide(request(), GOOD, AFTERNOON) == Send(cap=RULES.frequency_cap["sms"], on_cap="defer")


def test_a_superseded_message_is_dropped():
    assert decide(request(drop="superseded by order.delivered"), GOOD, AFTERNOON) == \
        Skip("superseded by order.delivered")


def test_a_message_past_its_expiry_is_dropped_and_one_at_it_is_not():
    due = AFTERNOON - timedelta(hours=1)
    assert decide(request(expires_at=due), GOOD, AFTERNOON) == Skip("expired: not sent by 2027-01-05 07:00 UTC")
    assert isinstance(decide(request(expires_at=AFTERNOON), GOOD, AFTERNOON), Send)


def test_no_address_means_nothing_to_send_to():
    assert decide(request(), facts(recipient=None), AFTERNOON) == Skip("customer has no sms address")


def test_an_address_flagged_when_stored_is_never_sent_to():
    flagged = facts(address_problem="'12345' is not a valid phone number")
    assert decide(request(), flagged, AFTERNOON) == Skip("invalid sms address: '12345' is not a valid phone number")


def test_an_address_from_the_run_alone_is_checked_and_a_stored_one_is_not():
    unchecked = facts(recipient="nok@", recipient_checked=False)
    decision = decide(request("email"), unchecked, AFTERNOON)
    assert isinstance(decision, Skip) and decision.reason.startswith("invalid email address: ")
    # Stored addresses were checked (and normalised) when the profile was stored.
    assert isinstance(decide(request("email"), facts(recipient="nok@", recipient_checked=True), AFTERNOON), Send)
    assert isinstance(decide(request("email"), facts(recipient="nok@example.com", recipient_checked=False),
                             AFTERNOON), Send)


def test_a_suppressed_address_is_not_sent_to():
    stopped = facts(suppression=("sms_stop", "twilio"))
    assert decide(request(), stopped, AFTERNOON) == Skip("suppressed: sms_stop (twilio)")


def test_marketing_needs_the_channels_consent_and_transactional_does_not():
    no_sms = facts(consents={"email": True})
    assert decide(request(), no_sms, AFTERNOON) == Skip("no sms marketing consent")
    assert decide(request(category="transactional"), no_sms, AFTERNOON) == Send()


@pytest.mark.parametrize(("coupon", "now", "reason"), [
    (None, AFTERNOON, "coupon 'coupon' not found"),
    (OfferedCoupon("BACK-1", redeemed=True, expires_at=MORNING), AFTERNOON, "coupon BACK-1 already redeemed"),
    (OfferedCoupon("BACK-1", redeemed=False, expires_at=AFTERNOON), AFTERNOON, "coupon BACK-1 expired"),
    (OfferedCoupon("BACK-1", redeemed=False, expires_at=MORNING), AFTERNOON, None),
    # Not offered yet: its days start when this message goes out, so it cannot have expired.
    (OfferedCoupon("BACK-1", redeemed=False, expires_at=None), MORNING + timedelta(days=30), None),
])
def test_a_message_offering_a_used_or_expired_coupon_is_dropped(coupon, now, reason):
    decision = decide(request("email", coupon="coupon"), facts(coupon=coupon), now)
    assert decision == (Skip(reason) if reason else Send(cap=RULES.frequency_cap["email"], unsubscribe=True))


def test_quiet_hours_hold_a_marketing_text_until_the_window_ends_in_the_customers_zone():
    assert decide(request(), GOOD, NIGHT) == Defer(MORNING, "quiet hours until 2027-01-06 01:00 UTC")
    # Email is not in the quiet channels.
    assert isinstance(decide(request("email"), facts(recipient="nok@example.com"), NIGHT), Send)


def test_without_a_time_zone_every_fallback_zone_must_be_outside_its_quiet_hours():
    # 01:00 UTC is 08:00 in Bangkok but 20:00 in New York: free in both. At 00:30 UTC Bangkok is quiet.
    assert decide(request(), facts(timezone=None), MORNING - timedelta(minutes=30)) == \
        Defer(MORNING, "quiet hours until 2027-01-06 01:00 UTC")
    # 13:30 UTC: 20:30 in Bangkok, 08:30 in New York; 14:00 UTC is 21:00 in Bangkok, quiet until 01:00.
    assert isinstance(decide(request(), facts(timezone=None), NIGHT - timedelta(hours=1, minutes=30)), Send)


def test_a_sequences_own_quiet_hours_replace_the_shops():
    late = QuietHours(start=time(23, 0), end=time(7, 0), channels=["sms"])
    assert isinstance(decide(request(quiet_hours=late), GOOD, NIGHT), Send)  # 22:00 is not quiet for it
    assert decide(request(quiet_hours=late), GOOD, NIGHT + timedelta(hours=2)) == \
        Defer(MORNING - timedelta(hours=1), "quiet hours until 2027-01-06 00:00 UTC")


def test_transactional_messages_keep_quiet_hours_only_where_their_sequence_asks_and_are_never_capped():
    assert decide(request(category="transactional"), GOOD, NIGHT) == Send()
    held = decide(request(category="transactional", quiet_hours=QuietHours(channels=["sms"])), GOOD, NIGHT)
    assert held == Defer(MORNING, "quiet hours until 2027-01-06 01:00 UTC")
    assert decide(request(category="transactional", quiet_hours=QuietHours(channels=["sms"])), GOOD, AFTERNOON) \
        == Send()


def test_an_attempt_that_may_have_reached_the_provider_is_finished_not_held_nor_counted_again():
    # Its cap slot was taken by the attempt that got that far.
    assert decide(request(), facts(resumed=True), NIGHT) == Send()


def test_a_customer_without_an_id_cannot_be_counted_under_the_cap():
    no_id = request().model_copy(update={"context": {"customer": {"phone": "+66812345678"}}})
    assert decide(no_id, GOOD, AFTERNOON) == Send()


def test_marketing_email_carries_one_click_unsubscribe():
    mail = facts(recipient="nok@example.com")
    assert decide(request("email"), mail, AFTERNOON).unsubscribe
    assert not decide(request("email", category="transactional"), mail, AFTERNOON).unsubscribe


def test_over_the_cap_a_message_waits_for_the_next_slot_or_is_skipped():
    cap = Cap(max=1, per=timedelta(hours=24))
    assert send_rules.over_cap(Send(cap=cap, on_cap="defer"), "sms", MORNING) == \
        Defer(MORNING, "frequency cap (1 sms per 1d) until 2027-01-06 01:00 UTC")
    assert send_rules.over_cap(Send(cap=cap, on_cap="skip"), "sms", MORNING) == Skip("frequency cap (1 sms per 1d)")


# -- the order they are asked in ---------------------------------------------------------------------

def test_the_rules_are_asked_in_order_and_the_first_that_refuses_says_why():
    """Everything wrong at once; put right one thing at a time, and the next rule speaks."""
    ask = request(drop="superseded by order.delivered", expires_at=NIGHT - timedelta(hours=1), coupon="coupon")
    world = Facts(recipient=None, address_problem="not a phone number", suppression=("unsubscribe", "unsubscribe_link"),
                  consents={}, timezone="Asia/Bangkok", coupon=OfferedCoupon("BACK-1", redeemed=True, expires_at=None))
    fixes = [("ask", {"drop": None}), ("ask", {"expires_at": None}), ("world", {"recipient": "+66812345678"}),
             ("world", {"address_problem": None}), ("world", {"suppression": None}),
             ("world", {"consents": {"sms": True}}),
             ("world", {"coupon": OfferedCoupon("BACK-1", redeemed=False, expires_at=None)}),
             ("world", {"timezone": "America/New_York"})]  # 10:00 there
    said = []
    for what, fix in [*fixes, (None, {})]:
        decision = decide(ask, world, NIGHT)
        said.append("send" if isinstance(decision, Send) else decision.reason)
        if what == "ask":
            ask = ask.model_copy(update=fix)
        else:
            world = replace(world, **fix)
    assert said == [
        "superseded by order.delivered",
        "expired: not sent by 2027-01-05 14:00 UTC",
        "customer has no sms address",
        "invalid sms address: not a phone number",
        "suppressed: unsubscribe (unsubscribe_link)",
        "no sms marketing consent",
        "coupon BACK-1 already redeemed",
        "quiet hours until 2027-01-06 01:00 UTC",
        "send",
    ]


# -- what the run said -------------------------------------------------------------------------------

def test_a_request_from_a_run_before_the_rules_moved_here_keeps_the_policy_it_carried():
    legacy = SendRequest(workflow_id="news/1", sequence_id="news", step="0", channel="sms", template="ping",
                         category="marketing", context={"customer": {"id": "c-1"}},
                         policy=SendPolicy(group="old", quiet_hours=None, cap=None))
    assert send_rules.policy(legacy) == legacy.policy and send_rules.unsubscribe_group(legacy) == "old"
    assert decide(legacy, GOOD, NIGHT) == Send()


def test_the_policy_is_resolved_from_the_runs_definition():
    marketing = send_rules.policy(request(on_cap="skip"))
    assert marketing == SendPolicy(group="news", quiet_hours=RULES.quiet_hours, fallback_timezones=RULES.fallback_timezones,
                                   cap=RULES.frequency_cap["sms"], on_cap="skip")
    assert send_rules.policy(request(category="transactional")) is None
    assert send_rules.unsubscribe_group(request()) == "news"


# -- `fallback:` a channel the customer cannot be reached on gives way to the step's fallback ------

LINE_ID = "U" + "0123456789abcdef" * 2
ON_LINE = Facts(recipient=LINE_ID, recipient_checked=True, consents={"line": True, "sms": True},
                timezone="Asia/Bangkok")
NO_LINE = {"line": facts(recipient=None), "sms": GOOD}


def test_a_customer_reachable_on_the_steps_channel_gets_it_there():
    chosen = send_rules.choose(request("line", fallback="sms"), {"line": ON_LINE, "sms": GOOD}, AFTERNOON)
    assert (chosen.channel, chosen.fallback_because) == ("line", None)
    assert isinstance(chosen.decision, Send)


@pytest.mark.parametrize(("line", "because"), [
    (facts(recipient=None), "no LINE account"),
    (replace(ON_LINE, address_problem="not a LINE user id"), "invalid LINE account"),
    (replace(ON_LINE, suppression=("unfollowed", "line")), "LINE account suppressed"),
    (replace(ON_LINE, consents={"sms": True}), "no LINE marketing consent"),
])
def test_no_way_to_reach_the_customer_on_the_steps_channel_sends_on_the_fallback(line, because):
    chosen = send_rules.choose(request("line", fallback="sms"), {"line": line, "sms": GOOD}, AFTERNOON)
    assert (chosen.channel, chosen.fallback_because) == ("sms", because)
    # The fallback's own cap: the message is counted on the channel it goes out on.
    assert chosen.decision == Send(cap=RULES.frequency_cap["sms"], on_cap="defer")


def test_quiet_hours_hold_the_fallback_when_it_is_a_channel_they_cover():
    chosen = send_rules.choose(request("line", fallback="sms"), NO_LINE, NIGHT)
    assert chosen.channel == "sms" and chosen.decision == Defer(MORNING, "quiet hours until 2027-01-06 01:00 UTC")


@pytest.mark.parametrize("changes", [
    {"drop": "superseded by order.delivered"}, {"expires_at": AFTERNOON - timedelta(hours=1)}, {"coupon": "coupon"}])
def test_a_message_dropped_for_any_other_reason_does_not_fall_back(changes):
    chosen = send_rules.choose(request("line", fallback="sms", **changes), NO_LINE, AFTERNOON)
    assert chosen.channel == "line" and isinstance(chosen.decision, Skip)


def test_a_customer_reachable_on_neither_channel_is_skipped_with_both_reasons():
    chosen = send_rules.choose(request("line", fallback="sms"), {"line": facts(recipient=None),
                                                                 "sms": facts(consents={})}, AFTERNOON)
    assert chosen.channel == "line"
    assert chosen.decision == Skip("customer has no line address; fallback sms: no sms marketing consent")


def test_a_step_without_a_fallback_is_decided_as_before():
    chosen = send_rules.choose(request("line"), {"line": facts(recipient=None)}, AFTERNOON)
    assert (chosen.channel, chosen.decision) == ("line", Skip("customer has no line address"))
