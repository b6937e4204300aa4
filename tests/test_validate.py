"""`keepflow validate`: every mistake is reported at the line and column a person must edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keepflow.language.catalog import Catalog
from keepflow.language.problems import InvalidSequences, Problem
from keepflow.runtime.registry import check_catalog, load_catalog
from keepflow.tools.validate import run_validate
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES



# Lines 1-5; the first step is on line 6, its key at column 9 and a `send:` value at column 15.
HEAD = """\
sequences:
  - id: welcome
    category: marketing
    trigger: customer.created
    steps:
"""


def project(directory: Path, text: str) -> Path:
    """A sequences file plus a minimal templates folder beside it."""
    (directory / "templates" / "email").mkdir(parents=True, exist_ok=True)
    (directory / "templates" / "sms").mkdir(parents=True, exist_ok=True)
    (directory / "templates" / "email" / "x.en.html").write_text(
        "{% block subject %}s{% endblock %}body {{ brand.postal_address }} {{ unsubscribe_url }}")
    (directory / "templates" / "sms" / "y.en.txt").write_text("hello {{ customer.first_name }}")
    path = directory / "sequences.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    _, problems = check_catalog(project(tmp_path, text))
    return problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(p.format() for p in problems)
    return problems[0]


def assert_problem(problem: Problem, line: int, column: int, fragment: str) -> None:
    assert (problem.line, problem.column) == (line, column), problem.format()
    assert fragment in problem.message, problem.format()


# --- YAML --------------------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path):
    text = HEAD + "      - send: email\n        template: x: y\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 7, 20, "put the value in quotes")


def test_duplicate_key(tmp_path):
    text = HEAD + "      - send: email\n        template: x\n        template: x\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 8, 9, "duplicate key 'template'")


def test_missing_empty_and_non_utf8_files(tmp_path):
    assert_problem(only(check_catalog(tmp_path / "nope.yaml")[1]), 1, 1, "file not found")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_problem(only(check_catalog(empty)[1]), 1, 1, "empty")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("brand:\n  name: Caf\xe9\n".encode("latin-1"))
    assert_problem(only(check_catalog(latin1)[1]), 1, 1, "not UTF-8")


# --- schema ------------------------------------------------------------------------------------


def test_unknown_step_kind(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: email\n        template: x\n      - pause: 3d\n"))
    assert_problem(problem, 8, 9, "this step has no kind; start it with one of: send, wait_for, wait, if, split, do, start, exit")


def test_unknown_step_kind_with_a_close_key(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - sned: email\n        template: x\n"))
    assert_problem(problem, 6, 9, "did you mean 'send' instead of 'sned'?")


def test_misspelt_field_with_did_you_mean(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: email\n        tempalte: x\n"))
    assert_problem(problem, 7, 9, "unknown field 'tempalte' in a send step; did you mean 'template'?")


def test_missing_field_points_at_the_step(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - wait: 1d\n      - send: email\n"))
    assert_problem(problem, 7, 9, "send step needs 'template'")


def test_wrong_channel(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: emial\n        template: x\n"))
    assert_problem(problem, 6, 15, "send: expected email, sms or line, got 'emial'")


def test_bad_duration_at_the_durations_column(tmp_path):
    text = HEAD + "      - wait_for: order.shipped\n        timeout:   3x\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 7, 20, "'3x' is not a duration; write a number and a unit")


def test_bad_event_type_and_id_explain_the_form(tmp_path):
    text = """\
sequences:
  - id: Welcome
    category: marketing
    trigger: signup
    steps: [exit]
"""
    first, second = problems_of(tmp_path, text)
    assert_problem(first, 2, 9, "use lowercase words joined by underscores")
    assert_problem(second, 4, 14, "e.g. order.shipped")


def test_bad_nested_step_in_on_timeout(tmp_path):
    text = HEAD + "      - wait_for: order.shipped\n        timeout: 1d\n        on_timeout: stop\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 8, 21, "on_timeout: expected continue or exit, or a list of steps, got 'stop'")


# --- semantics ---------------------------------------------------------------------------------


def test_missing_template(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: email\n        template: nope\n"))
    assert_problem(problem, 7, 19, "no template email/nope.en.html in ")
    assert "the English one is required" in problem.message


def test_missing_sms_template_needs_the_txt_file(tmp_path):
    # `x` exists only as an email.
    problem = only(problems_of(tmp_path, HEAD + "      - send: sms\n        template: x\n"))
    assert_problem(problem, 7, 19, "no template sms/x.en.txt")


def test_jinja_syntax_error_in_a_locale_variant(tmp_path):
    path = project(tmp_path, HEAD + "      - send: email\n        template: x\n")
    (tmp_path / "templates" / "email" / "x.th.html").write_text(
        "{% block subject %}s{% endblock %}\n{% if customer.first_name %}hi\n"
    )
    problem = only(check_catalog(path)[1])
    assert_problem(problem, 7, 19, "template email/x.th.html line")
    assert "endif" in problem.message or "end of template" in problem.message


@pytest.mark.parametrize("expression", ["customer.__class__", "customer['__class__']", "_secret"])
def test_templates_may_not_reach_python_internals(tmp_path, expression):
    path = project(tmp_path, HEAD + "      - send: email\n        template: x\n")
    (tmp_path / "templates" / "email" / "x.th.html").write_text(
        "{% block subject %}s{% endblock %}\n{{ brand.postal_address }} {{ unsubscribe_url }} {{ " + expression + " }}")
    problem = only(check_catalog(path)[1])
    assert_problem(problem, 7, 19, "template email/x.th.html line 2:")
    assert "is not allowed" in problem.message


def test_unknown_activity(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - do: make_coupon\n"))
    assert_problem(problem, 6, 13, "unknown activity 'make_coupon'; did you mean 'create_coupon'?")


def test_bad_activity_argument_at_the_arguments_value(tmp_path):
    text = HEAD + "      - do: create_coupon\n        with: {percent: 200, valid_for: 7d}\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 7, 25, "percent: must be at most 100, got 200")


def test_bad_activity_argument_in_block_style(tmp_path):
    text = HEAD + "      - do: create_coupon\n        with:\n          percent: 10\n          valid_for: 7x\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 9, 22, "valid_for: '7x' is not a duration")


def test_start_target_missing(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - start: welcom\n"))
    assert_problem(problem, 6, 16, "start: no sequence 'welcom'")


def test_start_cycle_reported_once_at_the_start_that_closes_it(tmp_path):
    text = HEAD + """\
      - start: followup
  - id: followup
    category: marketing
    steps:
      - wait: 1d
      - start: welcome
"""
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 11, 16, "welcome → followup → welcome")


def test_duplicate_sequence_id(tmp_path):
    text = HEAD + """\
      - exit
  - id: welcome
    category: marketing
    trigger: customer.created
    steps: [exit]
"""
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 7, 9, "duplicate sequence id 'welcome' (first defined at line 2)")


def test_duplicate_step_id(tmp_path):
    text = HEAD + "      - id: hello\n        wait: 1d\n      - id: hello\n        send: sms\n        template: y\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 8, 13, "duplicate step id 'hello'")


def test_bad_if_expression(tmp_path):
    text = HEAD + '      - if: "customer.consents.sms =="\n        then: [exit]\n'
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 6, 13, "if: 'customer.consents.sms ==' is not a valid expression")


def test_bad_key_expression(tmp_path):
    text = HEAD.replace("    steps:\n", "    key: order..id\n    steps:\n") + "      - exit\n"
    problem = only(problems_of(tmp_path, text))
    assert_problem(problem, 5, 10, "key: 'order..id' is not a valid expression")


def test_warnings_do_not_fail_the_file(tmp_path):
    text = HEAD + """\
      - wait_for: order.shipped
        timeout: 120d
  - id: orphan
    category: marketing
    steps: [exit]
"""
    path = project(tmp_path, text)
    catalog, (long_wait, orphan) = check_catalog(path)
    assert catalog is not None
    assert (long_wait.severity, orphan.severity) == ("warning", "warning")
    assert_problem(long_wait, 7, 18, "longer than 90 days")
    assert_problem(orphan, 8, 9, "never starts: give it a trigger or start it from another sequence")
    assert isinstance(load_catalog(path), Catalog)


def test_several_mistakes_all_reported_in_line_order(tmp_path):
    text = HEAD + """\
      - send: emial
        template: x
      - wait: 3x
      - do: create_coupon
        with: {percent: 200, valid_for: 7d}
      - send: email
        tempalte: x
      - start: nowhere
"""
    problems = problems_of(tmp_path, text)
    got = [(p.line, p.column) for p in problems]
    assert got == [(6, 15), (8, 15), (12, 9)], "\n".join(p.format() for p in problems)
    assert "emial" in problems[0].message and "3x" in problems[1].message and "tempalte" in problems[2].message

    # The schema is valid once those are fixed; the cross-reference mistakes then show, in order.
    text = text.replace("emial", "email").replace("3x", "3d").replace("tempalte", "template")
    problems = problems_of(tmp_path, text)
    got = [(p.line, p.column, p.message.split(":")[0].split(" ")[0]) for p in problems]
    assert got == [(10, 25, "create_coupon"), (13, 16, "start")], "\n".join(p.format() for p in problems)
    assert problems == sorted(problems)


# --- a whole file, load_catalog(), run_validate, relocation ------------------------------------------


def test_the_shops_file_is_valid_and_indexed_by_event():
    catalog, problems = check_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)
    assert [p for p in problems if p.severity == "error"] == [], "\n".join(p.format() for p in problems)
    assert catalog is not None
    assert {s.id for s in catalog.triggered_by("order.created")} == {"fulfilment"}
    assert "fulfilment" in {s.id for s in catalog.interested_in("order.shipped")}
    snapshot = catalog.snapshot("fulfilment")
    assert set(snapshot.sequences) == {"fulfilment", "education", "cross_sell", "review_request"}


def test_load_raises_with_positions(tmp_path):
    path = project(tmp_path, HEAD + "      - send: emial\n        template: x\n      - wait: 3x\n")
    with pytest.raises(InvalidSequences) as caught:
        load_catalog(path)
    assert len(caught.value.problems) == 2
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:6:15: send: expected email, sms or line")
    assert lines[1].startswith(f"{path}:8:15: wait: '3x' is not a duration")


def test_load_returns_a_catalog(tmp_path):
    path = project(tmp_path, HEAD + "      - send: email\n        template: x\n      - wait_for: order.shipped\n"
                                    "        timeout: 2d\n")
    catalog = load_catalog(path)
    assert catalog.templates_dir == tmp_path / "templates"
    assert [s.id for s in catalog.triggered_by("customer.created")] == ["welcome"]
    assert [s.id for s in catalog.interested_in("order.shipped")] == ["welcome"]
    assert catalog.interested_in("customer.created") == []
    assert catalog.snapshot("welcome").root == "welcome"


def test_run_validate_ok(tmp_path, capsys):
    path = project(tmp_path, HEAD + "      - send: email\n        template: x\n      - send: sms\n        template: y\n")
    assert run_validate(path, None) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: 1 sequence, 2 steps, 2 templates in 1 locale — OK\n"
    assert err == ""


def test_run_validate_errors_and_warnings(tmp_path, capsys):
    text = HEAD + """\
      - send: email
        template: nope
      - wait_for: order.shipped
        timeout: 100d
"""
    path = project(tmp_path, text)
    assert run_validate(path, None) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:7:19: no template email/nope.en.html")
    assert lines[1].startswith(f"{path}:9:18: warning: wait_for timeout 100d")


def test_run_validate_warnings_only_still_passes(tmp_path, capsys):
    path = project(tmp_path, HEAD + "      - wait_for: order.shipped\n        timeout: 100d\n")
    assert run_validate(path, tmp_path / "templates") == 0
    out, err = capsys.readouterr()
    assert out.endswith("— OK (1 warning)\n")
    assert err.startswith(f"{path}:7:18: warning: ")


def test_templates_are_found_beside_the_file(tmp_path):
    text = HEAD + "      - send: email\n        template: x\n      - send: sms\n        template: nope\n"
    (tmp_path / "a").mkdir()
    original = project(tmp_path / "a", text)
    elsewhere = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(tmp_path / "a", elsewhere)
    (here_catalog, here), (there_catalog, there) = check_catalog(original), check_catalog(elsewhere / "sequences.yaml")
    assert here_catalog is None and there_catalog is None
    assert [(p.line, p.column) for p in here] == [(p.line, p.column) for p in there] == [(9, 19)]
    assert str(elsewhere / "templates") in there[0].message

    (elsewhere / "templates" / "sms" / "nope.en.txt").write_text("hi")
    catalog, problems = check_catalog(elsewhere / "sequences.yaml")
    assert problems == [] and catalog is not None
    assert catalog.templates_dir == elsewhere / "templates"


# --- files that would hang or fool the reader ------------------------------------------------------

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)) + "sequences: *i\n"


def test_nested_aliases_are_refused_before_they_expand(tmp_path):
    assert len(BILLION_LAUGHS) < 1000  # nine to the ninth values once expanded
    found = problems_of(tmp_path, BILLION_LAUGHS)
    assert [p.message for p in found if "aliases" in p.message], [p.format() for p in found]


def test_a_python_tag_is_refused_where_it_stands(tmp_path):
    found = problems_of(tmp_path, "sequences:\n  - id: x\n    trigger: !!python/object:os.system ls\n")
    [problem] = [p for p in found if "tag" in p.message]
    assert (problem.line, problem.column) == (3, 14)
    assert "!!python/object:os.system" in problem.message


def test_a_huge_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "sequences.yaml"
    path.write_text("# padding\n" * 200_000)
    _, found = check_catalog(path)
    assert ["at most 1 MB" in p.message for p in found] == [True]


# --- fallback: ---------------------------------------------------------------------------------


def test_a_fallback_on_the_steps_own_channel_is_refused(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: sms\n        template: y\n        fallback: sms\n"))
    assert_problem(problem, 8, 19, "fallback: sms is this step's own channel")
    assert "name another channel" in problem.message


def test_a_fallback_needs_its_own_english_template(tmp_path):
    # `y` exists only as a text.
    problem = only(problems_of(tmp_path, HEAD + "      - send: sms\n        template: y\n        fallback: email\n"))
    assert_problem(problem, 8, 19, "no template email/y.en.html in ")
    assert "fallback: email sends templates/email/y.<locale>.html" in problem.message


def test_a_fallback_needs_every_locale_the_steps_own_template_has(tmp_path):
    path = project(tmp_path, HEAD + "      - send: sms\n        template: x\n        fallback: email\n")
    (tmp_path / "templates" / "sms" / "x.en.txt").write_text("hello")
    (tmp_path / "templates" / "sms" / "x.th.txt").write_text("สวัสดี")
    problem = only(check_catalog(path)[1])
    assert_problem(problem, 8, 19, "no template email/x.th.html")
    assert "add email/x.th.html" in problem.message


def test_a_fallback_template_is_checked_like_the_steps_own(tmp_path):
    path = project(tmp_path, HEAD + "      - send: email\n        template: x\n        fallback: sms\n")
    (tmp_path / "templates" / "sms" / "x.en.txt").write_text("hello {{ coupon.code }}")
    problem = only(check_catalog(path)[1])
    assert_problem(problem, 7, 19, "template sms/x.en.txt uses 'coupon'")


def test_a_marketing_email_fallback_must_show_the_unsubscribe_link_too(tmp_path):
    path = project(tmp_path, HEAD + "      - send: sms\n        template: y\n        fallback: email\n")
    (tmp_path / "templates" / "email" / "y.en.html").write_text("{% block subject %}s{% endblock %}hello")
    problem = only(check_catalog(path)[1])
    assert_problem(problem, 7, 19, "template email/y.en.html is sent as marketing but never shows")


def test_a_misspelt_fallback_is_named_with_the_fix(tmp_path):
    problem = only(problems_of(tmp_path, HEAD + "      - send: email\n        template: x\n        fallback: smss\n"))
    assert_problem(problem, 8, 19, "fallback: expected email, sms or line, got 'smss'; did you mean 'sms'?")
