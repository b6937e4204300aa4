"""`keepflow preview`: every message of a sequence, on every branch, rendered from the real templates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.runtime.events import CustomerIn, OrderIn
from keepflow.tools.preview import Note, PreviewError, build_preview, open_sequence, read_json_part
from tests.engine import SHOP_SEQUENCES, SHOP_TEMPLATES
from tests.helpers import LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES, write_project

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = SHOP_SEQUENCES
CUSTOMER_FILE = ROOT / "examples" / "customer.json"
ORDER_FILE = ROOT / "examples" / "order.json"
THAI = re.compile(r"[\u0E00-\u0E7F]")


def preview(sequence_id: str, locale: str | None = "en", order: bool = True):
    catalog, sequence = open_sequence(SEQUENCES, None, sequence_id)
    customer = read_json_part(CUSTOMER_FILE, "customer", CustomerIn)
    bought = read_json_part(ORDER_FILE, "order", OrderIn) if order else None
    return build_preview(catalog, sequence, customer, bought, locale=locale)


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_winback_lists_every_message_with_its_day_and_both_arms_of_the_if():
    result = preview("winback")
    messages = result.messages
    assert [(m.channel, m.template) for m in messages] == [
        ("email", "winback_offer"), ("sms", "winback_offer"), ("email", "winback_reminder"),
        ("email", "winback_last_chance")]
    assert [m.when.day for m in messages] == [0, 0, 4, 6]
    assert [m.error for m in messages] == [None] * 4
    sms = messages[1]
    assert sms.branch == ["if customer.consents.sms | default(false) → then (this customer)"]
    assert "BACK-PREVIEW1" in sms.text and "20%" in sms.text  # the simulated coupon renders
    notes = [n for n in result.entries if isinstance(n, Note)]
    assert any(n.branch == ["if customer.consents.sms | default(false) → else"] for n in notes)
    assert messages[0].subject == "We've missed you: 20% off your next purchase"


def test_cross_sell_shows_both_split_variants():
    messages = preview("cross_sell").messages
    by_template = {m.template: m for m in messages}
    plain, offer = by_template["cross_sell_tripod"], by_template["cross_sell_tripod_offer"]
    assert plain.branch[-1] == "split: variant plain (50%)"
    assert offer.branch[-1] == "split: variant offer (50%)"
    assert "TRIPOD-PREVIEW1" in offer.text and offer.error is None
    # The `if` needs load_customer's result, which a preview does not have: neither arm is claimed.
    assert plain.branch[0] == "if 'TRIPOD-01' not in profile.purchased_skus → then"
    # It goes on into review_request, three days later, reminder included.
    assert [(m.template, m.when.describe()) for m in messages[2:]] == [
        ("review_request", "day 3"), ("review_reminder", "day 7")]
    assert messages[3].branch[-1] == "wait_for review.submitted → on timeout (none within 4d)"


def test_thai_locale_renders_the_thai_templates():
    messages = preview("winback", locale="th").messages
    assert {m.locale for m in messages} == {"th"}
    assert THAI.search(messages[0].subject) and THAI.search(messages[1].text)
    assert not THAI.search(preview("winback", locale="en").messages[0].subject)


def test_fulfilment_follows_start_and_shows_waits_for_events():
    messages = preview("fulfilment").messages
    assert messages[0].when.describe() == "day 0"
    assert messages[1].when.describe() == "after order.shipped (up to 7d)"
    basics = next(m for m in messages if m.template == "education_basics")
    assert basics.when.describe() == "1d after order.delivered (up to 14d)"
    assert basics.branch == ["start → education"]
    # Marketing email gets the sample unsubscribe link; transactional does not.
    assert "unsubscribe/preview-sample-link" in basics.html
    assert "unsubscribe" not in messages[0].html
    sequences = [m.sequence_id for m in messages]
    assert sequences.index("review_request") > sequences.index("cross_sell") > sequences.index("education")


def test_cli_writes_each_html_email(tmp_path: Path):
    result = cli("preview", "winback", "--customer", str(CUSTOMER_FILE), "--html", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["01-winback-1-winback_offer.html", "03-winback-4-winback_reminder.html",
                     "04-winback-6-winback_last_chance.html"]
    assert "BACK-PREVIEW1" in (tmp_path / "out" / names[0]).read_text(encoding="utf-8")
    assert "wrote 3 emails" in result.output
    assert "split" not in result.output and "winback_last_chance" in result.output


def test_a_missing_variable_is_an_error_line_not_a_crash():
    # Without --order, fulfilment's templates lack `order`: each says so, the rest still shows.
    result = cli("preview", "fulfilment", "--customer", str(CUSTOMER_FILE), "--locale", "en")
    assert result.exit_code == 0, result.output
    assert "could not render: email/order_confirmed.en.html: 'order' is undefined" in result.output
    assert "could not be rendered" in result.output
    assert "Sharper night shots" in result.output  # cross_sell's plain email needs no order


def test_unknown_sequence_lists_the_known_ones():
    result = cli("preview", "wnback", "--customer", str(CUSTOMER_FILE))
    assert result.exit_code == 2
    assert "no sequence 'wnback'" in result.output
    assert "fulfilment, education, cross_sell, review_request, winback" in result.output


def test_a_bad_customer_file_is_explained(tmp_path: Path):
    bad = tmp_path / "customer.json"
    bad.write_text('{"email": "nok@example.com"}', encoding="utf-8")
    result = cli("preview", "winback", "--customer", str(bad))
    assert result.exit_code == 2
    assert "customer.json is not a valid customer: id: Field required" in result.output
    with pytest.raises(PreviewError, match="not valid JSON"):
        bad.write_text("{", encoding="utf-8")
        read_json_part(bad, "customer", CustomerIn)


def test_customer_can_come_from_an_event_file():
    customer = read_json_part(ROOT / "examples" / "order-created.json", "customer", CustomerIn)
    assert customer["id"] == "cust-42" and customer["locale"] == "th-TH"


def test_start_loops_are_followed_once(tmp_path: Path):
    # `validate` refuses such a file; the preview still must not recurse forever on one.
    from ruamel.yaml import YAML

    from keepflow.language.catalog import Catalog
    from keepflow.language.dsl import SequencesFile

    file = SequencesFile.model_validate(YAML(typ="safe").load("""
sequences:
  - {id: ping, category: marketing, steps: [{wait: 1d}, {start: pong}]}
  - {id: pong, category: marketing, steps: [{wait: 2d}, {start: ping}]}
"""))
    catalog = Catalog(path=tmp_path / "sequences.yaml", templates_dir=SHOP_TEMPLATES, file=file)
    result = build_preview(catalog, catalog.sequences["ping"], {"id": "c-1"})
    assert [n.text for n in result.entries] == [
        "start → pong: its messages follow",
        "start → ping: already shown above, not followed again (it would loop)"]
    assert result.entries[1].branch == ["start → pong"]


def test_an_email_previews_as_the_plain_text_part_that_goes_out():
    from keepflow.language.rendering import text_of_html

    offer = preview("winback").messages[0]
    assert offer.html is not None and offer.text == text_of_html(offer.html)
    assert "https://keepflow.example.com/unsubscribe/preview-sample-link" in offer.text


def test_templates_read_rfm_scores_given_on_the_command_line(tmp_path: Path):
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(SHOP_TEMPLATES, templates)
    (templates / "sms" / "vip_note.en.txt").write_text("{{ brand.name }}: you are one of our {{ customer.rfm.segment }}\n")
    shop = SEQUENCES.read_text()
    sequences = tmp_path / "sequences.yaml"
    sequences.write_text(shop[:shop.index("\nsequences:\n") + 1] + """sequences:
  - id: vip
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: sms
        template: vip_note
""")
    args = ["preview", "vip", "--customer", str(CUSTOMER_FILE), "--sequences", str(sequences),
            "--templates", str(templates), "--locale", "en"]
    plain, champion = cli(*args), cli(*args, "--rfm", '{"segment": "champions"}')
    assert plain.exit_code == 0 and "one of our prospect" in plain.output, plain.output
    assert champion.exit_code == 0 and "one of our champions" in champion.output, champion.output
    assert cli(*args, "--rfm", "[1]").exit_code == 2


# --- a step with `fallback:` shows the channel this customer would get it on ------------------------

NOK_ON_LINE = {"id": "c-1", "first_name": "Nok", "phone": "+66812345678", "line_user_id": "U" + "0123456789abcdef" * 2,
               "consents": {"line": True, "sms": True}}


def tip_preview(tmp_path: Path, customer: dict):
    catalog, sequence = open_sequence(write_project(tmp_path, LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES), None, "tips")
    [message] = build_preview(catalog, sequence, customer, locale="en").messages
    return message


def test_a_customer_on_line_previews_the_line_message(tmp_path: Path):
    message = tip_preview(tmp_path, NOK_ON_LINE)
    assert (message.channel, message.fallback_because, message.text) == ("line", None, "LINE tip for Nok")


@pytest.mark.parametrize(("changes", "because"), [
    ({"line_user_id": None}, "no LINE account"),
    ({"consents": {"sms": True}}, "no LINE marketing consent"),
])
def test_a_customer_who_cannot_get_line_previews_the_fallback(tmp_path: Path, changes, because):
    message = tip_preview(tmp_path, {**NOK_ON_LINE, **changes})
    assert (message.channel, message.fallback_because, message.text) == ("sms", because, "SMS tip")


def test_the_preview_says_which_channel_and_why(tmp_path: Path):
    path = write_project(tmp_path, LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES)
    (tmp_path / "customer.json").write_text('{"id": "c-1", "phone": "+66812345678", "consents": {"sms": true}}')
    result = cli("preview", "tips", "--sequences", str(path), "--templates", str(tmp_path / "templates"),
                 "--customer", str(tmp_path / "customer.json"))
    assert result.exit_code == 0, result.output
    assert "· sms (fallback: no LINE account) ·" in result.output
