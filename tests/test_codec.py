"""The payload codec on its own: AES-256-GCM per payload, the key id beside it, rotation, and the
plain payloads of runs recorded before encryption passed through untouched."""

from __future__ import annotations

import base64
import os

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure

from keepflow.runtime.codec import ENCODING, KEY_ID, EncryptionCodec, data_converter
from keepflow.runtime.payload_keys import PayloadKeyError, dev_payload_keys, new_payload_key, parse_payload_keys


def entry(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


OLD, NEW = entry("old"), entry("new")


async def test_encodes_with_the_first_key_and_hides_the_data():
    codec = EncryptionCodec(parse_payload_keys(f"{NEW}, {OLD}"))
    [sealed] = await codec.encode([plain('{"email": "nok@example.com"}')])
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"new"
    assert b"nok@example.com" not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == plain('{"email": "nok@example.com"}')


async def test_a_rotated_key_set_still_opens_what_the_old_key_sealed():
    [sealed] = await EncryptionCodec(parse_payload_keys(OLD)).encode([plain("hello")])
    rotated = EncryptionCodec(parse_payload_keys(f"{NEW} {OLD}"))
    assert await rotated.decode([sealed]) == [plain("hello")]
    [resealed] = await rotated.encode([plain("hello")])
    assert resealed.metadata[KEY_ID] == b"new"


async def test_a_key_dropped_too_early_is_named_in_the_error():
    [sealed] = await EncryptionCodec(parse_payload_keys(OLD)).encode([plain("hello")])
    with pytest.raises(ValueError, match=r"key 'old'.*KEEPFLOW_PAYLOAD_KEYS has new"):
        await EncryptionCodec(parse_payload_keys(NEW)).decode([sealed])


async def test_a_tampered_payload_or_key_id_is_refused():
    codec = EncryptionCodec(parse_payload_keys(f"{NEW} {OLD}"))
    [sealed] = await codec.encode([plain("hello")])
    flipped = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(ValueError, match="failed authentication"):
        await codec.decode([flipped])
    # The key id is authenticated too: the same bytes claimed by another key do not open.
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID: b"old"}, data=sealed.data)
    with pytest.raises(ValueError, match="failed authentication"):
        await codec.decode([relabelled])


async def test_payloads_recorded_before_encryption_pass_through():
    codec = EncryptionCodec(parse_payload_keys(NEW))
    assert await codec.decode([plain("recorded in the clear")]) == [plain("recorded in the clear")]


async def test_without_keys_nothing_is_sealed_and_sealed_payloads_say_why_they_cannot_open():
    [sealed] = await EncryptionCodec(parse_payload_keys(NEW)).encode([plain("hello")])
    keyless = EncryptionCodec([])
    assert await keyless.encode([plain("hello")]) == [plain("hello")]
    with pytest.raises(ValueError, match="no KEEPFLOW_PAYLOAD_KEYS"):
        await keyless.decode([sealed])


async def test_the_data_converter_seals_pydantic_values_and_failure_messages():
    converter = data_converter(parse_payload_keys(NEW))
    [payload] = await converter.encode([{"email": "nok@example.com"}])
    assert payload.metadata["encoding"] == ENCODING
    assert await converter.decode([payload], [dict]) == [{"email": "nok@example.com"}]
    # Error messages can quote an address ("invalid email nok@..."): they are sealed as well.
    failure = Failure()
    await converter.encode_failure(RuntimeError("cannot send to nok@example.com"), failure)
    assert b"nok@example.com" not in failure.SerializeToString()


@pytest.mark.parametrize("text, problem", [
    ("", "no key"),
    ("k1", "expected id:base64key"),
    ("k1:not-base64!", "not base64"),
    (f"k1:{base64.b64encode(b'short').decode()}", "32 bytes"),
    (f"{entry('k1')} {entry('k1')}", "k1 appears twice"),
])
def test_bad_key_entries_are_refused_without_printing_the_key(text, problem):
    with pytest.raises(PayloadKeyError, match=problem) as caught:
        parse_payload_keys(text)
    secret = text.partition(":")[2]
    assert not secret or secret[:8] not in str(caught.value)


def test_a_new_key_entry_parses_and_is_different_each_time():
    first, second = new_payload_key(), new_payload_key()
    [key] = parse_payload_keys(first)
    assert len(key.secret) == 32 and first != second


def test_the_dev_key_is_made_once_and_kept_private(tmp_path):
    keys = dev_payload_keys(tmp_path)
    assert dev_payload_keys(tmp_path) == keys
    assert parse_payload_keys(keys)
    assert (tmp_path / "payload-keys").stat().st_mode & 0o777 == 0o600


def test_the_payload_converter_writes_what_pydantic_s_writes_and_keeps_its_adapters_across_converters():
    """The SDK makes a payload converter per workflow activation: each must find the adapters built."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    from keepflow.runtime import converter
    from keepflow.runtime.payloads import EventSignal, SendResult

    values = [EventSignal(id="e1", type="order.created", occurred_at="2026-12-07T10:00:00+07:00", data={"ก": [1, None]}),
              SendResult(status="sent", channel="email"), {"plain": "dict"}, None, b"\x00bytes"]
    ours = converter.PayloadConverter().to_payloads(values)
    assert ours == pydantic_data_converter.payload_converter.to_payloads(values)
    hints = [EventSignal, SendResult, dict, type(None), bytes]
    assert converter.PayloadConverter().from_payloads(ours, hints) == values
    # Every converter the SDK makes decodes JSON with the one instance, whose TypeAdapter cache it keeps.
    one, other = (converter.PayloadConverter().converters[b"json/plain"] for _ in range(2))
    assert one is other
    assert other.from_payload(ours[0], EventSignal) == values[0]
