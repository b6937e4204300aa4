"""`keepflow preview --do`: sample results for `do:` steps, checked against what the activity returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.runtime.events import CustomerIn, OrderIn
from keepflow.runtime.registry import discover
from keepflow.tools.preview import Note, build_preview, open_sequence, read_json_part
from keepflow.tools.sample_results import SampleResultError, checked_results, read_do_options
from tests.engine import SHOP_SEQUENCES

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER_FILE = ROOT / "examples" / "customer.json"
ORDER_FILE = ROOT / "examples" / "order.json"
OWNS_A_TRIPOD = {"id": "cust-42", "orders_count": 3, "total_spent": "420.00", "purchased_skus": ["TRIPOD-01"]}
CONDITION = "if 'TRIPOD-01' not in profile.purchased_skus"


def cross_sell(results=None):
    catalog, sequence = open_sequence(SHOP_SEQUENCES, None, "cross_sell")
    customer = read_json_part(CUSTOMER_FILE, "customer", CustomerIn)
    order = read_json_part(ORDER_FILE, "order", OrderIn)
    return build_preview(catalog, sequence, customer, order, locale="en", results=results)


def notes(preview) -> list[str]:
    return [e.text for e in preview.entries if isinstance(e, Note)]


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_a_sample_result_decides_the_branch_and_is_named():
    result = cross_sell({"load_customer": OWNS_A_TRIPOD})
    # Owning the tripod, the customer takes the arm without the split (every arm is still shown).
    assert any(f"{CONDITION} → else (this customer)" in n.branch for n in result.entries)
    assert "do: load_customer → `profile` is the sample result given with --do load_customer" in notes(result)


def test_without_a_sample_the_preview_says_what_it_assumed():
    result = cross_sell()
    [said] = [n for n in notes(result) if n.startswith("do: load_customer")]
    assert "no --do load_customer sample" in said
    assert "id, orders_count, total_spent, purchased_skus" in said  # what a sample must give
    assert any("a sample coupon TRIPOD-PREVIEW1" in n for n in notes(result))


def test_a_sample_replaces_the_coupon_placeholder():
    coupon = {"code": "WELCOME10", "percent": 15, "expires_at": "2027-01-12T00:00:00Z"}
    result = cross_sell({"create_coupon": coupon})
    offer = next(m for m in result.messages if m.template == "cross_sell_tripod_offer")
    assert "WELCOME10" in offer.text and "15%" in offer.text and "PREVIEW1" not in offer.text


def test_samples_are_checked_against_the_activity_s_return_model():
    activities = discover()
    [checked] = checked_results({"load_customer": OWNS_A_TRIPOD}, activities).values()
    assert checked["purchased_skus"] == ["TRIPOD-01"] and checked["total_spent"] == "420.00"
    with pytest.raises(SampleResultError, match=r"^--do load_customer: not what load_customer returns: "
                                                r"orders_count: .*integer.*\(it returns id, orders_count"):
        checked_results({"load_customer": {**OWNS_A_TRIPOD, "orders_count": "many"}}, activities)
    with pytest.raises(SampleResultError, match="purchased_skus: Field required"):
        checked_results({"load_customer": {"id": "c", "orders_count": 1, "total_spent": 1}}, activities)
    with pytest.raises(SampleResultError, match="no activity 'creat_coupon'; did you mean 'create_coupon'?"):
        checked_results({"creat_coupon": {}}, activities)
    with pytest.raises(SampleResultError, match="a result is a JSON object"):
        checked_results({"create_coupon": ["WELCOME10"]}, activities)


def test_do_options_read_json_or_a_file(tmp_path: Path):
    sample = tmp_path / "profile.json"
    sample.write_text(json.dumps(OWNS_A_TRIPOD))
    assert read_do_options([f"load_customer=@{sample}", 'create_coupon={"code": "A"}']) == {
        "load_customer": OWNS_A_TRIPOD, "create_coupon": {"code": "A"}}
    with pytest.raises(SampleResultError, match="write it as NAME=JSON or NAME=@FILE.json"):
        read_do_options(["load_customer"])
    with pytest.raises(SampleResultError, match="--do load_customer is not JSON: .* column"):
        read_do_options(["load_customer={'id': 1}"])
    with pytest.raises(SampleResultError, match="cannot read"):
        read_do_options([f"load_customer=@{tmp_path / 'missing.json'}"])


def test_the_command_takes_samples_and_refuses_a_wrong_one_in_one_line(tmp_path: Path):
    base = ["preview", "cross_sell", "--customer", str(CUSTOMER_FILE), "--order", str(ORDER_FILE), "--locale", "en"]
    sample = tmp_path / "profile.json"
    sample.write_text(json.dumps(OWNS_A_TRIPOD))
    for given in (json.dumps(OWNS_A_TRIPOD), f"@{sample}"):
        result = cli(*base, "--do", f"load_customer={given}")
        assert result.exit_code == 0, result.output
        assert "→ else (this customer)" in result.output, result.output
    wrong = cli(*base, "--do", 'load_customer={"id": "c"}')
    assert wrong.exit_code == 2
    [line] = wrong.output.strip().splitlines()
    assert line.startswith("error: --do load_customer: not what load_customer returns: orders_count: Field required")
