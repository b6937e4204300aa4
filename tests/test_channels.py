"""The channel registry: each channel says what differs about it, and the callers ask it."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from keepflow.language.channels import CHANNEL_FACTS, ChannelName
from keepflow.language.dsl import SendStep
from keepflow.sending.channels import CHANNELS, channel, normalize_address
from keepflow.sending.contacts import InvalidContact
from keepflow.store import Customer
from keepflow.store.erasure import erase
from keepflow.tools.forget import whom

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
TEST_TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"
# One address each channel takes, as typed and as it is stored.
ADDRESSES = {"email": ("  Nok@Example.COM ", "nok@example.com"), "sms": ("+66 81 234 5678", "+66812345678"),
             "line": (" U8189cf6745fc0d808977bdb0b9f22995 ", "U8189cf6745fc0d808977bdb0b9f22995")}


def test_the_registry_holds_every_channel_the_language_names_and_no_other():
    assert set(CHANNELS) == set(CHANNEL_FACTS) == set(get_args(ChannelName)) == set(ADDRESSES)
    assert all(channel(name).name == name for name in CHANNELS)
    with pytest.raises(KeyError):
        channel("carrier_pigeon")


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_each_channel_has_a_normaliser_a_consent_key_and_its_templates(name):
    sending_on = channel(name)
    typed, stored = ADDRESSES[name]
    assert sending_on.normalize(typed) == stored
    with pytest.raises(InvalidContact):
        sending_on.normalize("not an address")
    assert normalize_address(name, " Not An Address ") == "not an address"
    assert sending_on.consent_key and sending_on.address_field in Customer.__table__.c
    assert f"{sending_on.address_field}_problem" in Customer.__table__.c
    # The shop's own templates, or (for a channel the shipped sequences do not use yet) the tests'.
    assert list((TEMPLATES / name).glob(f"*.en.{sending_on.template_extension}")) \
        or list((TEST_TEMPLATES / name).glob(f"*.en.{sending_on.template_extension}"))


def test_send_accepts_exactly_the_registered_channels():
    for name in CHANNELS:
        assert SendStep.model_validate({"send": name, "template": "order_confirmed"}).send == name
    with pytest.raises(ValidationError):
        SendStep.model_validate({"send": "fax", "template": "order_confirmed"})


def test_erasure_and_forget_find_every_channels_address(db):
    with db.session() as session:
        session.add(Customer(id="cus_1", email="nok@example.com", phone="+66812345678",
                             line_user_id="U8189cf6745fc0d808977bdb0b9f22995", consents={}))
    for name, (typed, stored) in ADDRESSES.items():
        assert whom(db, typed) == (["cus_1"], [(name, stored)])
    with db.session() as session:
        erased = erase(session, ["cus_1"], [])
    assert erased.addresses == sorted((name, stored) for name, (_, stored) in ADDRESSES.items())
