"""`rules.sendgrid_unsubscribe_groups`: each unsubscribe group's marketing email goes in its own
SendGrid group (asm.group_id), others in KEEPFLOW_SENDGRID_ASM_GROUP_ID's; validate refuses a
mapped name no marketing sequence uses."""

from __future__ import annotations

import uuid
from pathlib import Path

from activities.builtin.send import MessageSender, SendDeps
from keepflow.language.rendering import Renderer
from keepflow.runtime.payloads import SendTerms, SendRequest
from keepflow.runtime.registry import check_catalog
from keepflow.sending.providers import email_provider, sms_provider
from keepflow.store import Customer
from tests.helpers import CUSTOMER, write_project

FOOTER = "{{ brand.postal_address }} {{ unsubscribe_url }}"
TEMPLATES = {"email/offer.en.html": "{% block subject %}s{% endblock %}Hi " + FOOTER,
             "email/receipt.en.html": "{% block subject %}s{% endblock %}Thanks"}


def sequences(mapping: str) -> str:
    return f"""\
brand: {{name: Shop, postal_address: 99 Sukhumvit Road}}
rules:
  quiet_hours: {{channels: []}}
  frequency_cap: {{}}
  sendgrid_unsubscribe_groups: {mapping}
sequences:
  - id: winback
    category: marketing
    trigger: {{inactive_for: 60d}}
    steps:
      - send: email
        template: offer
  - id: welcome
    category: marketing
    group: newsletter
    trigger: customer.created
    steps:
      - send: email
        template: offer
  - id: receipts
    category: transactional
    trigger: order.created
    key: order.id
    steps:
      - send: email
        template: receipt
"""


def test_validate_refuses_a_mapped_group_no_marketing_sequence_uses(tmp_path: Path) -> None:
    _, problems = check_catalog(write_project(
        tmp_path, sequences("{winbak: 11, newsletter: 12, receipts: 13}"), TEMPLATES))
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 2, errors
    [winbak] = [p for p in errors if "'winbak'" in p.message]
    [receipts] = [p for p in errors if "'receipts'" in p.message]
    assert (winbak.line, winbak.column) == (5, 33)  # at the mapped name
    assert "did you mean 'winback'?" in winbak.message
    assert "transactional" in receipts.message


def test_each_groups_marketing_email_carries_its_sendgrid_group(tmp_path: Path, settings, db, fake) -> None:
    catalog, problems = check_catalog(write_project(tmp_path, sequences("{winback: 12345}"), TEMPLATES))
    assert catalog is not None and not [p for p in problems if p.severity == "error"], problems
    shop = settings.model_copy(update={"templates_dir": tmp_path / "templates", "sendgrid_asm_group_id": 777})
    sender = MessageSender(SendDeps(shop, db, Renderer(shop.templates_dir), email_provider(shop), sms_provider(shop)))
    customer = {**CUSTOMER, "id": f"c-{uuid.uuid4().hex[:6]}"}
    with db.session() as session:
        session.add(Customer(id=customer["id"], email=customer["email"], phone=customer["phone"],
                             first_name=customer["first_name"], locale=customer["locale"],
                             timezone=customer["timezone"], consents=customer["consents"], attributes={}))
    context = {"customer": customer, "order": {"id": "1"},
               "brand": {"name": "Shop", "postal_address": "99 Sukhumvit Road"}}
    for sequence_id in ("winback", "welcome", "receipts"):
        sequence = catalog.sequences[sequence_id]
        terms = SendTerms(group=sequence.unsubscribe_group, rules=catalog.file.rules)
        request = SendRequest(workflow_id=f"{sequence_id}/{customer['id']}", sequence_id=sequence_id, step="0",
                              channel="email", template=sequence.steps[0].template, category=sequence.category, context=context,
                              terms=terms)
        assert sender.send_message(request).status == "sent"
    winback, welcome, receipts = (mail["payload"] for mail in fake.accepted("sendgrid"))
    assert winback["asm"] == {"group_id": 12345}
    assert welcome["asm"] == {"group_id": 777}  # not mapped: the default group
    assert "asm" not in receipts  # transactional mail is in no unsubscribe group


def test_an_unsubscribe_from_a_groups_sendgrid_group_stops_that_group_only(db) -> None:
    from datetime import datetime, timezone

    from keepflow.http.sendgrid import SendGridEvent, apply_batch
    from keepflow.sending import suppressions

    address = "nok@example.com"
    now = int(datetime.now(timezone.utc).timestamp())

    def event(kind: str, group_id: int, at: int) -> SendGridEvent:
        return SendGridEvent.model_validate({"email": address, "timestamp": at, "event": kind,
                                             "sg_event_id": uuid.uuid4().hex, "asm_group_id": group_id})

    def blocked(group: str) -> bool:
        with db.engine.connect() as connection:
            return suppressions.blocking_reason(connection, channel="email", address=address,
                                                category="marketing", group=group) is not None

    groups = {12345: ["winback"]}  # rules.sendgrid_unsubscribe_groups, turned around
    apply_batch(db, [event("group_unsubscribe", 12345, now - 60)], groups)
    assert blocked("winback") and not blocked("newsletter")
    apply_batch(db, [event("group_resubscribe", 12345, now)], groups)
    assert not blocked("winback")
    # The default group (KEEPFLOW_SENDGRID_ASM_GROUP_ID) stands for all marketing, as before.
    apply_batch(db, [event("group_unsubscribe", 777, now)], groups)
    assert blocked("winback") and blocked("newsletter")
