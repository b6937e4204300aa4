"""Local phone numbers (`081 234 5678`) read with the shop's `rules.default_region` when the
customer's locale names no country, and plain words for a number that cannot be read."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from keepflow.language.dsl import Rules
from keepflow.runtime import routing
from keepflow.runtime.events import EventIn
from keepflow.sending.contacts import InvalidContact, normalize_phone
from keepflow.store import Customer


def test_default_region_is_an_iso_country_code_phonenumbers_knows() -> None:
    assert Rules().default_region is None
    assert Rules(default_region="th").default_region == "TH"
    with pytest.raises(ValidationError, match="ISO 3166"):
        Rules(default_region="XX")
    with pytest.raises(ValidationError, match="ISO 3166"):
        Rules(default_region="Thailand")


def test_a_local_thai_number_is_read_in_the_default_region() -> None:
    assert normalize_phone("081 234 5678", "TH") == "+66812345678"
    assert normalize_phone("+66 81 234 5678", None) == "+66812345678"


@pytest.mark.parametrize(("value", "words"), [
    ("081 234 5678", "no country code"),
    ("call me", "not a phone number"),
    ("+66 12", "not a valid phone number"),
])
def test_a_number_that_cannot_be_read_is_refused_in_plain_words(value: str, words: str) -> None:
    with pytest.raises(InvalidContact) as refused:
        normalize_phone(value)
    assert words in str(refused.value) and value in str(refused.value)
    assert "(0)" not in str(refused.value) and "(1)" not in str(refused.value)  # libphonenumber's error codes


def test_no_country_code_says_where_to_give_one() -> None:
    with pytest.raises(InvalidContact, match="default_region"):
        normalize_phone("081 234 5678")


def customer_event(event_id: str, customer_id: str, locale: str) -> EventIn:
    return EventIn.model_validate({
        "id": event_id, "type": "customer.created", "occurred_at": datetime.now(timezone.utc).isoformat(),
        "customer": {"id": customer_id, "phone": "081 234 5678", "locale": locale}})


def test_storing_a_customer_reads_the_number_with_the_shop_default_region(db) -> None:
    routing.store(db, customer_event("e-th", "c-th", "th"), default_region="TH")
    routing.store(db, customer_event("e-none", "c-none", "th"))
    with db.session() as session:
        read = session.get(Customer, "c-th")
        unread = session.get(Customer, "c-none")
        assert (read.phone, read.phone_problem) == ("+66812345678", None)
        assert unread.phone == "081 234 5678" and "no country code" in unread.phone_problem


def test_the_customer_locale_region_comes_before_the_default_region(db) -> None:
    # 081 234 5678 is no valid number in Singapore: read with SG it is flagged, not made Thai.
    routing.store(db, customer_event("e-sg", "c-sg", "en-SG"), default_region="TH")
    with db.session() as session:
        assert session.get(Customer, "c-sg").phone_problem is not None


async def test_an_event_posted_to_the_app_reads_the_number_with_the_shop_default_region(settings, db) -> None:
    """The path a store's webhooks take (POST /events), not only routing.ingest."""
    import dataclasses
    import json

    from keepflow.http.signing import sign
    from keepflow.settings import new_secret
    from keepflow.tools.temporal_dev_server import free_port
    from tests.engine import CATALOG
    from tests.helpers import serving

    secret = new_secret()
    thai = dataclasses.replace(CATALOG, file=CATALOG.file.model_copy(update={
        "rules": CATALOG.file.rules.model_copy(update={"default_region": "TH"})}))
    # No Temporal behind this app: the event is stored, its routing fails (503), and no run starts
    # on a server whose clock the other tests share.
    nowhere = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    body = json.dumps(customer_event("e-posted", "c-posted", "th").model_dump(mode="json")).encode()
    async with serving(nowhere, db, secrets=(secret,), catalog=thai) as http:
        answer = await http.post("/events", content=body, headers={"content-type": "application/json", **sign(body, secret)})
    assert answer.status_code == 503, answer.text
    with db.session() as session:
        assert session.get(Customer, "c-posted").phone == "+66812345678"
