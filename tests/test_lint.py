"""`keepflow lint`: the sequences looked at together."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from keepflow.language.dsl import SequencesFile
from keepflow.language.lint import lint, read_file, run_lint, worst_case
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES
from tests.helpers import write_project



GOOD_EMAIL = "{% block subject %}s{% endblock %}{{ brand.postal_address }} {{ unsubscribe_url }}"


def project(directory: Path, text: str, templates: dict[str, str] | None = None) -> Path:
    return write_project(directory, text, {"email/note.en.html": GOOD_EMAIL, "sms/ping.en.txt": "ping", **(templates or {})})


def lint_of(tmp_path: Path, text: str, templates: dict[str, str] | None = None):
    path = project(tmp_path, text, templates)
    file, problems = read_file(path)
    assert file is not None, problems
    return lint(file, tmp_path / "templates")


def volumes(result) -> dict[str, tuple[int, int]]:
    return {v.channel: (v.per_day, v.per_week) for v in result.volumes}


def flat(text: str) -> str:
    return " ".join(text.split())


TWO_A_DAY = """\
sequences:
  - id: first
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: note
      - wait: 12h
      - send: email
        template: note
  - id: second
    category: marketing
    trigger: order.created
    steps:
      - send: email
        template: note
      - wait: 23h
      - send: email
        template: note
      - send: email
        template: note
        category: transactional
"""


def test_worst_case_adds_up_sequences_and_compares_with_the_cap(tmp_path, capsys):
    result = lint_of(tmp_path, TWO_A_DAY)
    # a step's own `category: transactional` is not counted
    assert volumes(result)["email"] == (4, 4)
    [finding] = result.findings
    assert finding.severity == "warning"
    assert finding.message.startswith("up to 4 marketing emails in a day; the cap of 2 will hold back 2")
    assert run_lint(tmp_path / "sequences.yaml", tmp_path / "templates") == 0  # warnings only
    assert "the cap of 2 will hold back 2" in flat(capsys.readouterr().out)


def test_waits_spread_sends_over_days_and_weeks(tmp_path):
    text = """\
rules:
  frequency_cap:
    email: {max: 3, per: 7d}
sequences:
  - id: drip
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: note
      - wait: 1d
      - send: email
        template: note
      - wait: 1d
      - send: email
        template: note
      - wait: 6d
      - send: email
        template: note
"""
    result = lint_of(tmp_path, text)
    # the last one is 8 days after the first: not in its week, but in the second's
    assert volumes(result)["email"] == (1, 3)
    assert result.findings == []


def test_paths_follow_start_branches_and_wait_for(tmp_path):
    text = """\
sequences:
  - id: entry
    category: marketing
    trigger: order.created
    steps:
      - wait_for: order.shipped
        timeout: 3d
        on_timeout:
          - send: email
            template: note
          - send: email
            template: note
      - if: customer.vip
        then:
          - send: email
            template: note
        else: []
      - split:
          - variant: a
            weight: 1
            steps:
              - send: sms
                template: ping
          - variant: b
            weight: 1
            steps:
              - exit
      - start: helper
  - id: helper
    category: marketing
    steps:
      - send: email
        template: note
"""
    result = lint_of(tmp_path, text)
    # event at once: the `if` send and the started helper's send together (2 in a day); on
    # timeout three days later: 2 + 1 + 1 = 4 in a day, and only through variant a (b exits
    # before the start)
    email = next(v for v in result.volumes if v.channel == "email")
    assert (email.per_day, email.per_week) == (4, 4)
    assert email.by_sequence == {"entry": (4, 4)}  # helper is counted inside entry only
    assert volumes(result)["sms"] == (1, 1)


def test_marketing_email_without_unsubscribe_link_is_an_error(tmp_path, capsys):
    text = """\
sequences:
  - id: promo
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: bare
"""
    result = lint_of(tmp_path, text, {"email/bare.en.html": "{% block subject %}s{% endblock %}Buy now"})
    [finding] = [f for f in result.findings if f.severity == "error"]
    assert finding.where == "promo step 0" and "unsubscribe_url" in finding.message
    assert run_lint(tmp_path / "sequences.yaml", tmp_path / "templates") == 1
    assert "never shows" in flat(capsys.readouterr().out)


def test_marketing_sms_without_quiet_hours_warns(tmp_path):
    text = """\
sequences:
  - id: flash
    category: marketing
    trigger: customer.created
    quiet_hours: {channels: [email]}
    steps:
      - send: sms
        template: ping
  - id: shipping
    category: transactional
    trigger: order.shipped
    quiet_hours: {channels: [email]}
    steps:
      - send: sms
        template: ping
"""
    result = lint_of(tmp_path, text)
    quiet = [f for f in result.findings if "quiet hours" in f.message]
    assert [(f.severity, f.where) for f in quiet] == [("warning", "flash step 0")]


def test_sequence_nobody_can_enter(tmp_path):
    text = """\
sequences:
  - id: entry
    category: marketing
    trigger: customer.created
    steps:
      - start: started
  - id: started
    category: marketing
    steps:
      - exit
  - id: orphan
    category: marketing
    steps:
      - exit
"""
    result = lint_of(tmp_path, text)
    assert [(f.severity, f.where) for f in result.findings] == [("warning", "orphan")]
    assert "can ever enter" in result.findings[0].message


def test_unreadable_file_exits_one(tmp_path, capsys):
    path = project(tmp_path, "sequences: [{id: x}]\n")
    assert run_lint(path, tmp_path / "templates") == 1
    assert "keepflow validate" in flat(capsys.readouterr().out)


def test_the_shops_worst_case(capsys):
    file, _ = read_file(SHOP_SEQUENCES)
    # fulfilment starts education, cross_sell and review_request: on day 7 the last education
    # email and the cross-sell meet (2 a day), days 1-7 hold 4; win-back sends 1 a day, 3 a week.
    by_channel = {v.channel: v for v in worst_case(file)}
    assert (by_channel["email"].per_day, by_channel["email"].per_week) == (3, 7)
    assert by_channel["email"].by_sequence == {"fulfilment": (2, 4), "winback": (1, 3)}
    assert (by_channel["sms"].per_day, by_channel["sms"].per_week) == (1, 1)
    assert run_lint(SHOP_SEQUENCES, SHOP_TEMPLATES) == 0
    out = flat(capsys.readouterr().out)
    assert "up to 3 marketing emails in a day; the cap of 2 will hold back 1" in out
    assert "0 error(s), 1 warning(s)" in out


def test_a_step_with_a_fallback_counts_once_on_either_channel_never_on_both():
    text = """\
sequences:
  - id: tips
    category: marketing
    trigger: customer.created
    steps:
      - send: line
        template: ping
        fallback: sms
      - wait: 2d
      - send: sms
        template: ping
"""
    file = SequencesFile.model_validate(YAML(typ="safe").load(text))
    by_channel = {v.channel: (v.per_day, v.per_week) for v in worst_case(file)}
    # Each path sends the first message on one channel: LINE, or SMS (then two texts in a week).
    assert by_channel["line"] == (1, 1) and by_channel["sms"] == (1, 2)


def test_a_marketing_fallback_text_without_quiet_hours_for_it_is_warned_about(tmp_path):
    text = """\
rules:
  quiet_hours: {start: "21:00", end: "08:00", channels: [line]}
sequences:
  - id: tips
    category: marketing
    trigger: customer.created
    steps:
      - send: line
        template: ping
        fallback: sms
"""
    result = lint_of(tmp_path, text, {"line/ping.en.txt": "ping"})
    assert any("can go out at night" in f.message and "do not include sms" in f.message for f in result.findings)
