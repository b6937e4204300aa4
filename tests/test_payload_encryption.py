"""What the Temporal server holds after real runs: ciphertext only, and still readable by Keepflow
after the key is rotated."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.message import Message as Proto
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, SearchAttributes
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from keepflow.runtime.codec import ENCODING, KEY_ID, data_converter
from keepflow.runtime.payload_keys import new_payload_key, parse_payload_keys
from keepflow.runtime.payloads import EventSignal, RunInput, RunStatus
from tests.engine import CATALOG, TEST_TEMPLATES, make_settings
from tests.helpers import CUSTOMER, snapshot, start
from tests.test_journey import CHAIN, customer_in_offer_arm, order_event, play_journey
from worker import build_worker

# What the journey's events tell Keepflow about the customer (tests/test_journey.py).
PERSONAL = [b"nok@example.com", b"+66812345678", "นก".encode(), b"Lumen D200"]


def payloads_in(message: Proto) -> list[Payload]:
    """Every Payload anywhere in a history event, however deep (inputs, results, failures, memos),
    except search attributes: the server indexes those, so they cannot be sealed (Keepflow's one,
    KeepflowStep, holds a step path)."""
    found: list[Payload] = []
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = list(value.values())
        for item in values:
            if isinstance(item, Payload):
                found.append(item)
            elif isinstance(item, Proto) and not isinstance(item, SearchAttributes):
                found += payloads_in(item)
    return found


def client_with(env, converter: DataConverter) -> Client:
    """Another client on the session's server (its time-skipping interceptor kept), with its own converter."""
    return Client(**{**env.client.config(), "data_converter": converter})


def plain_client(env) -> Client:
    """A client without the codec: what the Temporal CLI or UI reads."""
    return client_with(env, pydantic_data_converter)


async def test_after_a_journey_the_server_holds_no_customer_data_in_the_clear(env, settings, db, fake):
    order_id = f"E{uuid.uuid4().hex[:6]}"
    await play_journey(env, settings, db, order_id, customer_in_offer_arm())
    raw = plain_client(env)
    for sequence in CHAIN:
        history = await raw.get_workflow_handle(f"{sequence}/{order_id}").fetch_history()
        # The SDK core writes `workflow.patched()` markers itself, unsealed: they hold a patch name.
        payloads = [p for event in history.events if event.marker_recorded_event_attributes.marker_name != "core_patch"
                    for p in payloads_in(event)]
        assert len(payloads) > 5, sequence
        assert all(p.metadata["encoding"] == ENCODING for p in payloads), sequence
        # The bytes the server stores, whole: no field of any event carries them readably.
        stored = b"".join(event.SerializeToString() for event in history.events)
        for value in PERSONAL:
            assert value not in stored, (sequence, value)
    # Keepflow's own client opens the same run's input: the customer is in there, sealed.
    history = await env.client.get_workflow_handle(f"fulfilment/{order_id}").fetch_history()
    [run] = await env.client.data_converter.decode(
        history.events[0].workflow_execution_started_event_attributes.input.payloads, [RunInput])
    assert run.context["customer"]["email"] == "nok@example.com"


WAITS = """
sequences:
  - id: waits
    category: transactional
    steps:
      - send: email
        template: note
      - wait_for: order.delivered
        timeout: 30d
      - send: email
        template: note
        id: after
"""


async def test_a_rotated_key_set_carries_on_runs_the_old_key_sealed(env, tmp_path, fake, db):
    """A run started, and an event sent to it, before the rotation; the workers that carry it on
    have the new key first and the old one after it."""
    old, new = new_payload_key(), new_payload_key()
    settings = make_settings(tmp_path, fake, templates=TEST_TEMPLATES)

    def keyed(keys: str) -> Client:
        return client_with(env, data_converter(parse_payload_keys(keys)))

    before, rotated = keyed(old), keyed(f"{new} {old}")
    task_queue = f"test-{uuid.uuid4()}"
    handle = await start(before, task_queue, snapshot(WAITS), key=f"rot-{uuid.uuid4().hex[:6]}")
    await handle.signal("event", EventSignal(id="delivered-1", type="order.delivered", occurred_at="2026-11-24T02:00:00Z"))
    async with build_worker(rotated, settings.model_copy(update={"payload_keys": SecretStr(f"{new} {old}")}), db,
                            task_queue=task_queue, catalog=CATALOG):
        result = await rotated.get_workflow_handle(handle.id, result_type=RunStatus).result()
    assert [s.outcome for s in result.steps_done] == ["sent", "received order.delivered", "sent"]
    assert len(fake.accepted("sendgrid")) == 2 and fake.accepted("sendgrid")[0]["to"] == CUSTOMER["email"]
    history = await handle.fetch_history()
    key_ids = {p.metadata[KEY_ID].decode() for e in history.events for p in payloads_in(e)
               if p.metadata["encoding"] == ENCODING}
    assert key_ids == {old.split(":")[0], new.split(":")[0]}
    # Dropping the old key too early is refused with its name, not read as garbage.
    [started] = history.events[0].workflow_execution_started_event_attributes.input.payloads
    with pytest.raises(ValueError, match=f"sealed with key '{old.split(':')[0]}'"):
        await keyed(new).data_converter.decode([started], [RunInput])

