"""Every step kind, run for real on the time-skipping server with the real provider SDKs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError

from keepflow.language.expressions import bucket
from keepflow.runtime.payloads import EventSignal, RunStatus
from tests.engine import TEST_TEMPLATES, make_settings, running_worker
from tests.helpers import days, messages, result_of, sends, snapshot, start


@pytest.fixture
def settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES)


def seq(steps: str, **fields: str) -> str:
    header = "\n".join(f"    {k}: {v}" for k, v in {"id": "t", "category": "marketing", **fields}.items())
    body = "\n".join("      " + line for line in steps.strip("\n").splitlines())
    return f"sequences:\n  - {header.lstrip()}\n    steps:\n{body}\n"


def signal(event_type: str) -> EventSignal:
    return EventSignal(id=str(uuid.uuid4()), type=event_type, occurred_at="2026-11-23T00:00:00+00:00")


async def test_send_email_and_sms_through_the_real_sdks(env, settings, db, fake):
    snap = snapshot(seq("""
- send: email
  template: note
- send: sms
  template: ping
"""))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, snap)).result()
    assert result.exit_reason == "completed"
    [email] = fake.accepted("sendgrid")
    [sms] = fake.accepted("twilio")
    assert email["to"] == "nok@example.com" and email["subject"] == "Note for Nok"
    # A marketing sequence, and the number's first marketing text: it says how to opt out.
    assert sms["to"] == "+66812345678" and sms["body"] == "Ping for Nok\nReply STOP to opt out"
    rows = messages(db)
    assert [(m.channel, m.status, m.provider) for m in rows] == [("email", "sent", "sendgrid"), ("sms", "sent", "twilio")]
    assert rows[1].provider_message_id.startswith("SM")


async def test_wait_spaces_messages_by_definition_time(env, settings, db):
    snap = snapshot(seq("""
- send: email
  template: note
- wait: 3d
- send: email
  template: note
  id: second
- wait: 12h
- send: sms
  template: ping
"""))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        await handle.result()
    scheduled = await sends(env.client, handle.id)
    assert [(days(scheduled[0].at, s.at), s.step) for s in scheduled] == [(0, "0"), (3, "second"), (3.5, "4")]


async def test_wait_for_takes_an_event_that_arrived_early(env, settings, db):
    snap = snapshot(seq("""
- wait: 2d
- wait_for: order.shipped
  timeout: 5d
  as: shipment
- send: email
  template: note
"""))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        await handle.signal("event", signal("order.shipped"))  # before the run reaches wait_for
        result: RunStatus = await handle.result()
    assert [(s.kind, s.outcome) for s in result.steps_done] == [
        ("wait", "waited"), ("wait_for", "received order.shipped"), ("send", "sent")]
    scheduled = await sends(env.client, handle.id)
    assert len(scheduled) == 1


async def test_wait_for_satisfied_mid_wait(env, settings, db):
    snap = snapshot(seq("""
- wait_for: order.delivered
  timeout: 14d
- send: email
  template: note
"""))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        await env.sleep(timedelta(days=2))
        await handle.signal("event", signal("order.delivered"))
        result = await handle.result()
    assert result.steps_done[0].outcome == "received order.delivered"
    first = await sends(env.client, handle.id)
    started = (await handle.describe()).start_time
    assert 1.9 < days(started, first[0].at) < 3


@pytest.mark.parametrize("on_timeout,expected", [
    ("continue", ["0:timed out", "1:sent"]),
    ("exit", []),
    ("[{send: sms, template: ping}]", ["0.on_timeout.0:sent", "0:timed out", "1:sent"]),
])
async def test_wait_for_timeout(env, settings, db, on_timeout, expected):
    snap = snapshot(seq(f"""
- wait_for: order.shipped
  timeout: 7d
  on_timeout: {on_timeout}
- send: email
  template: note
"""))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        result = await handle.result()
    assert [f"{s.path}:{s.outcome}" for s in result.steps_done] == expected
    if on_timeout == "exit":
        assert result.exit_reason == "no order.shipped within 7d"
        assert messages(db) == []
    scheduled = await sends(env.client, handle.id)
    started = (await handle.describe()).start_time
    assert all(6.9 < days(started, s.at) < 7.1 for s in scheduled)


@pytest.mark.parametrize("orders,branch,channel", [(3, "then", "sms"), (1, "else", "email")])
async def test_if_takes_one_branch(env, settings, db, orders, branch, channel):
    snap = snapshot(seq("""
- if: customer.orders_count > 1 and 'tripod' not in customer.skus
  then:
    - send: sms
      template: ping
  else:
    - send: email
      template: note
"""))
    customer = {"id": "c-9", "email": "a@example.com", "phone": "+66811111111", "orders_count": orders, "skus": ["lens"]}
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, snap, {"customer": customer})).result()
    assert result.steps_done[-1].outcome == branch
    assert [m.channel for m in messages(db)] == [channel]
    assert messages(db)[0].step == f"0.{branch}.0"


def _customer_in(arm_below: bool, path: str = "0") -> str:
    # Find ids whose stable bucket lands in the first (or second) half of a 50/50 split.
    for n in range(1000):
        cid = f"cust-{n}"
        if (bucket("t", path, cid) < 0.5) == arm_below:
            return cid
    raise AssertionError("no customer found")


@pytest.mark.parametrize("first_arm", [True, False])
async def test_split_is_stable_per_customer(env, settings, db, first_arm):
    snap = snapshot(seq("""
- split:
    - variant: a
      weight: 1
      steps:
        - send: email
          template: note
    - variant: b
      weight: 1
      steps:
        - send: sms
          template: ping
"""))
    cid = _customer_in(first_arm)
    customer = {"id": cid, "email": "a@example.com", "phone": "+66811111111"}
    async with running_worker(env, settings, db) as tq:
        outcomes = [
            (await (await start(env.client, tq, snap, {"customer": customer})).result()).steps_done[-1].outcome
            for _ in range(2)
        ]
    assert outcomes == (["a", "a"] if first_arm else ["b", "b"])


async def test_do_binds_its_result_for_templates(env, settings, db, fake):
    snap = snapshot(seq("""
- do: create_coupon
  with: {percent: 20, valid_for: 7d, prefix: BACK}
  as: coupon
- send: email
  template: coupon
"""))
    async with running_worker(env, settings, db) as tq:
        await (await start(env.client, tq, snap)).result()
    [email] = fake.accepted("sendgrid")
    assert email["subject"] == "20% off"
    code = email["html"].split("Your code: ")[1].split("<")[0]
    assert code.startswith("BACK-") and len(code) == 13
    from keepflow.store import Coupon
    with db.session() as session:
        coupon = session.get(Coupon, code)
        assert coupon.percent == 20 and coupon.customer_id == "c-1"
        assert (coupon.expires_at - coupon.created_at) == timedelta(days=7)


async def test_do_with_bad_arguments_fails_the_run_visibly(env, settings, db):
    snap = snapshot(seq("""
- do: create_coupon
  with: {percent: 500, valid_for: 7d}
"""))
    async with running_worker(env, settings, db) as tq:
        with pytest.raises(WorkflowFailureError) as failure:
            await (await start(env.client, tq, snap)).result()
    assert "percent" in str(failure.value.cause)


async def test_start_runs_a_child_sequence_that_outlives_its_parent(env, settings, db):
    snap = snapshot("""
sequences:
  - id: parent
    category: transactional
    key: order.id
    steps:
      - send: email
        template: note
      - start: child
  - id: child
    category: marketing
    key: order.id
    steps:
      - wait: 1d
      - send: sms
        template: ping
""")
    key = uuid.uuid4().hex[:6]
    async with running_worker(env, settings, db) as tq:
        parent = await start(env.client, tq, snap, {"order": {"id": key}}, key=key)
        parent_result = await parent.result()
        child_result = await result_of(env, f"child/{key}")
    assert parent_result.steps_done[-1].outcome == f"started child/{key}"
    assert child_result.sequence_id == "child" and child_result.exit_reason == "completed"
    assert [(m.sequence_id, m.channel) for m in messages(db)] == [("parent", "email"), ("child", "sms")]


async def test_exit_step_ends_the_run(env, settings, db):
    snap = snapshot(seq("""
- send: email
  template: note
- exit: nothing more to say
- send: sms
  template: ping
"""))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, snap)).result()
    assert result.exit_reason == "nothing more to say"
    assert [m.channel for m in messages(db)] == ["email"]


async def test_exit_on_event_stops_a_run_mid_wait(env, settings, db):
    snap = snapshot(seq("""
- send: email
  template: note
- wait: 4d
- send: email
  template: note
""", exit_on="[order.created]"))
    async with running_worker(env, settings, db) as tq:
        handle = await start(env.client, tq, snap)
        await env.sleep(timedelta(days=1))
        status = await handle.query("status", result_type=RunStatus)
        assert status.current_step == "1"
        await handle.signal("event", signal("order.created"))
        result = await handle.result()
    assert result.exit_reason == "exit_on order.created"
    assert len(messages(db)) == 1


async def test_bad_template_is_recorded_and_the_run_goes_on(env, settings, db, fake):
    snap = snapshot(seq("""
- send: email
  template: broken
- send: sms
  template: ping
"""))
    async with running_worker(env, settings, db) as tq:
        result = await (await start(env.client, tq, snap)).result()
    broken, sms = messages(db)
    assert broken.status == "failed" and "no_such_variable" in broken.error
    assert sms.status == "sent"
    assert result.steps_done[0].outcome.startswith("failed: template")
    assert fake.accepted("sendgrid") == []
