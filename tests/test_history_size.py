"""What a journey's histories carry: each definition and context once, in the store, by hash.

A run's input used to carry its whole definition snapshot and context, and every send, `do` and
`start` request the context again (keepflow/runtime/payload_parts.py). These tests open the
histories the way the Temporal server holds them (sealed payloads, opened with the key only) and
check that no payload carries a definition or a context any more, and that Keepflow's own client
still reads whole values out of them.
"""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from keepflow.runtime.codec import EncryptionCodec
from keepflow.runtime import payload_parts
from keepflow.runtime.payload_keys import parse_payload_keys
from keepflow.runtime.payload_parts import HOLDS_REF, REF, PartMissing, PartsCodec
from keepflow.runtime.payloads import RunInput, SendRequest
from keepflow.store.erasure import erase
from keepflow.store.payload_parts import PayloadPart
from tests.engine import CONVERTER, PAYLOAD_KEYS
from tests.test_journey import CHAIN, customer_in_offer_arm, play_journey
from tests.test_payload_encryption import client_with, payloads_in
from workflows.sequence import SequenceWorkflow

# Sealed, but not expanded: the bytes the server's payloads hold, once the key opens them.
KEY_ONLY = DataConverter(payload_converter_class=pydantic_data_converter.payload_converter_class,
                         payload_codec=EncryptionCodec(parse_payload_keys(PAYLOAD_KEYS)))


async def test_a_journey_s_histories_carry_definitions_and_contexts_by_hash_only(env, settings, db, fake):
    order_id = f"H{uuid.uuid4().hex[:6]}"
    await play_journey(env, settings, db, order_id, customer_in_offer_arm())
    opened = client_with(env, KEY_ONLY)
    refs = 0
    for sequence in CHAIN:
        history = await opened.get_workflow_handle(f"{sequence}/{order_id}").fetch_history()
        sealed = [p for event in history.events for p in payloads_in(event) if p.metadata.get("encoding") != b"json/plain"]
        payloads = await KEY_ONLY.payload_codec.decode(sealed)  # type: ignore[union-attr]
        for payload in payloads:
            text = payload.data.decode()
            assert '"sequences"' not in text, (sequence, text[:200])  # a definition inline
            assert "nok@example.com" not in text and "Lumen D200" not in text, (sequence, text[:200])  # a context
            if HOLDS_REF in payload.data:
                value = json.loads(text)
                refs += sum(isinstance(value.get(f), dict) and REF in value[f] for f in ("snapshot", "context"))
    # Every run's input (snapshot and context), every send's and start's context: all by hash.
    assert refs >= 2 * len(CHAIN) + 10

    # Keepflow's client opens them whole: the run's definition and the customer's context.
    history = await env.client.get_workflow_handle(f"education/{order_id}").fetch_history()
    [run] = await env.client.data_converter.decode(
        history.events[0].workflow_execution_started_event_attributes.input.payloads, [RunInput])
    assert run.snapshot.root == "education" and "cross_sell" in run.snapshot.sequences
    assert run.context["customer"]["email"] == "nok@example.com"
    scheduled = next(e for e in history.events if e.activity_task_scheduled_event_attributes.activity_type.name == "send_message")
    [request] = await env.client.data_converter.decode(scheduled.activity_task_scheduled_event_attributes.input.payloads,
                                                       [SendRequest])
    assert request.context["customer"]["email"] == "nok@example.com"

    # And the histories replay with the parts read back from the store.
    for sequence in CHAIN:
        history = await env.client.get_workflow_handle(f"{sequence}/{order_id}").fetch_history()
        await Replayer(workflows=[SequenceWorkflow], data_converter=CONVERTER).replay_workflow(history)


async def test_a_part_is_written_once_read_back_by_another_process_and_forgotten_with_its_customer(db):
    context = {"customer": {"id": "c1", "email": "a@example.com", "first_name": "Ann"},
               "order": {"id": "o1", "items": [{"sku": f"LUMEN-{n}", "title": "Lumen D200", "quantity": 1} for n in range(3)]},
               "brand": {"name": "Lumen"}}
    values = [json.dumps({"workflow_id": f"w/{n}", "context": context}).encode() for n in range(3)]

    codec = PartsCodec(db)
    encoded = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=v) for v in values])
    assert all(len(p.data) < 100 for p in encoded)
    assert len({p.data for p in encoded}) == 3  # each keeps its own workflow id, one hash
    with db.transaction() as connection:
        rows = connection.execute(select(PayloadPart.customer_id, func.count()).group_by(PayloadPart.customer_id)).all()
    assert [tuple(r) for r in rows] == [("c1", 1)]
    # A process that never saw it reads it from the store.
    payload_parts._KNOWN.clear()
    [opened] = await PartsCodec(db).decode([encoded[1]])
    assert json.loads(opened.data) == {"workflow_id": "w/1", "context": context}
    assert HOLDS_REF not in opened.data and opened.metadata == encoded[1].metadata
    # Payloads from before (inline, or small) pass through as they are.
    small = Payload(metadata={"encoding": b"json/plain"}, data=b'{"context":{"a":1}}')
    assert await codec.encode([small]) == [small]
    assert await codec.decode([small]) == [small]

    with db.session() as session:
        assert erase(session, ["c1"], []).contexts == 1
    payload_parts._KNOWN.clear()
    with pytest.raises(PartMissing, match="not in the store: the customer was forgotten"):
        await PartsCodec(db).decode([encoded[0]])


async def test_a_run_input_opens_whole_whether_its_references_are_spliced_in_or_parsed(db):
    """References as `encode` writes them are put back as text; written any other way (with the
    spaces of Python's default separators here) the payload is parsed. Either way the run reads
    the same input."""
    from temporalio.contrib.pydantic import pydantic_data_converter as plain

    from tests.engine import CATALOG

    context = {"customer": {"id": "c9", "email": "b@example.com", "first_name": "Bé \"B\" \u0e01"},
               "order": {"id": "o9", "items": [{"sku": f"LUMEN-{n}", "title": "Lumen"} for n in range(4)]}}
    run = RunInput(snapshot=CATALOG.snapshot("fulfilment").child("education"), key="o9", context=context)
    [plain_payload] = plain.payload_converter.to_payloads([run])
    codec = PartsCodec(db)
    [encoded] = await codec.encode([plain_payload])
    assert json.loads(encoded.data)["snapshot"] == {REF: json.loads(encoded.data)["snapshot"][REF], "root": "education"}
    rewritten = Payload(metadata=encoded.metadata, data=json.dumps(json.loads(encoded.data)).encode())
    assert payload_parts._references(encoded.data) and payload_parts._references(rewritten.data) is None

    payload_parts._KNOWN.clear()
    opened = await PartsCodec(db).decode([encoded, rewritten, plain_payload])
    assert opened[2] is plain_payload
    for payload in opened:
        assert HOLDS_REF not in payload.data
        assert json.loads(payload.data) == json.loads(plain_payload.data)
        assert plain.payload_converter.from_payloads([payload], [RunInput]) == [run]


async def test_the_router_stores_a_new_run_s_context_in_the_transaction_that_claims_its_row(db):
    """So the run's start finds the part there and adds no write of its own."""
    from temporalio.contrib.pydantic import pydantic_data_converter as plain

    from keepflow.runtime import routing
    from tests.engine import CATALOG
    from tests.test_journey import order_event

    event = order_event("order.created", "P1", "c-router")
    stored = routing.accept(db, CATALOG, event)
    assert stored.rows == {"fulfilment/P1"}
    with db.transaction() as connection:
        rows = connection.execute(select(PayloadPart.hash, PayloadPart.customer_id)).all()
    assert [r.customer_id for r in rows] == ["c-router"]

    # The input `route` then starts the run with references exactly that row.
    context = routing._context(CATALOG, event)
    context["customer"] = {**context["customer"], "rfm": stored.scores}
    run = RunInput(snapshot=CATALOG.snapshot("fulfilment"), key="P1", context=context)
    [payload] = await PartsCodec(db).encode(plain.payload_converter.to_payloads([run]))
    assert json.loads(payload.data)["context"] == {REF: rows[0].hash}
    with db.transaction() as connection:
        assert connection.execute(select(func.count()).select_from(PayloadPart)
                                  .where(PayloadPart.customer_id.is_not(None))).scalar() == 1


def test_a_snapshot_is_validated_once_per_process_and_each_root_keeps_its_own():
    """Every new run decodes its snapshot: the same definitions (hash) and root give the object
    validated before; another root of the same definitions is its own."""
    from tests.engine import CATALOG

    fulfilment = CATALOG.snapshot("fulfilment")
    education = fulfilment.child("education")
    payloads = [RunInput(snapshot=s, key="k", context={}).model_dump_json() for s in (fulfilment, education)]
    first, again = (RunInput.model_validate_json(payloads[0]) for _ in range(2))
    child = RunInput.model_validate_json(payloads[1])
    assert first.snapshot == fulfilment and first.snapshot is again.snapshot
    assert child.snapshot == education and child.snapshot.root == "education" and child.snapshot.hash == fulfilment.hash
