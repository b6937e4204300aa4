"""`send: line` on the real worker, through the real LINE SDK to the fake Messaging API: a push
whose answer is lost is retried with the same retry key, and LINE delivers it once; LINE's own
webhook (follow, unfollow) decides whether a marketing message may go."""

from __future__ import annotations

from pydantic import SecretStr

from keepflow.sending.providers.line import retry_key
from keepflow.store import Customer
from tests.engine import TEST_TEMPLATES, make_settings, running_worker
from tests.fakes.provider_server import FAKE_LINE_CHANNEL_ACCESS_TOKEN
from tests.helpers import messages, serving, snapshot, start
from tests.test_line_webhook import SECRET, T0, line_event, send

LINE_TIP = snapshot("""
sequences:
  - id: t
    category: marketing
    steps:
      - send: line
        template: tip
""")
NOK = {"id": "c-line", "first_name": "Nok", "line_user_id": "U" + "0123456789abcdef" * 2,
       "consents": {"line": True}, "timezone": "Asia/Bangkok"}


def line_settings(tmp_path, fake):
    return make_settings(tmp_path, fake, templates=TEST_TEMPLATES).model_copy(update={
        "line_channel_access_token": SecretStr(FAKE_LINE_CHANNEL_ACCESS_TOKEN), "line_api_base": fake.url,
        "line_channel_secret": SecretStr(SECRET)})


async def test_a_line_step_pushes_its_template_to_the_customers_line_account(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        handle = await start(env.client, tq, LINE_TIP, {"customer": NOK})
        await handle.result()
    [row] = messages(db)
    assert (row.channel, row.status, row.recipient) == ("line", "sent", NOK["line_user_id"])
    [push] = fake.accepted("line")
    assert push["to"] == NOK["line_user_id"]
    assert push["messages"] == [{"type": "text", "text": "Lumen Camera Co.: hello Nok, a LINE tip for you."}]


async def test_a_lost_answer_is_retried_and_line_delivers_one_message(env, tmp_path, db, fake):
    fake.accept_then_drop("line")
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        handle = await start(env.client, tq, LINE_TIP, {"customer": NOK})
        await handle.result()
    [row] = messages(db)
    assert row.status == "sent"
    # Two pushes reached LINE with one retry key; it delivered the first, answered the second 409.
    pushes = [r for r in fake.requests if r["api"] == "line"]
    assert len(pushes) == 2 and len({r["headers"]["X-Line-Retry-Key"] for r in pushes}) == 1
    assert fake.line_deliveries() == {retry_key(f"{handle.id}:0"): 1}
    assert row.provider_message_id == fake.accepted("line")[0]["request_id"]


async def test_without_line_consent_a_marketing_line_message_is_skipped(env, tmp_path, db, fake):
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        await (await start(env.client, tq, LINE_TIP, {"customer": {**NOK, "consents": {"sms": True}}})).result()
    [row] = messages(db)
    assert row.status == "skipped"
    assert fake.accepted("line") == []


LINE_OFFER = snapshot("""
brand: {name: Lumen Camera Co.}
sequences:
  - id: t
    category: marketing
    steps:
      - send: line
        template: offer
""")


async def test_a_flex_template_is_pushed_once_as_a_flex_message_the_contract_accepts(env, tmp_path, db, fake):
    # The fake checks every push against LINE's published schema and answers a violation with 400.
    customer = {**NOK, "first_name": 'Nok "N"\nS.'}
    async with running_worker(env, line_settings(tmp_path, fake), db) as tq:
        handle = await start(env.client, tq, LINE_OFFER, {"customer": customer})
        await handle.result()
    [row] = messages(db)
    assert (row.channel, row.status) == ("line", "sent")
    [push] = fake.accepted("line")
    [message] = push["messages"]
    assert message["type"] == "flex"
    assert message["altText"] == 'Lumen Camera Co.: Nok "N"\nS., your offer is inside'
    assert message["contents"]["body"]["contents"][0]["text"] == 'Hello Nok "N"\nS.'
    assert fake.line_deliveries() == {retry_key(f"{handle.id}:0"): 1}


async def test_a_follow_lets_marketing_go_and_an_unfollow_stops_it(env, tmp_path, db, fake):
    settings = line_settings(tmp_path, fake)
    # Known to the shop by their LINE id, with no word on LINE consent: the follow is it.
    customer = {key: value for key, value in NOK.items() if key != "consents"}
    with db.session() as session:
        session.add(Customer(id=NOK["id"], line_user_id=NOK["line_user_id"], consents={}, attributes={}))
    async with serving(settings, db) as http, running_worker(env, settings, db) as tq:
        await send(http, line_event("follow", T0, user=NOK["line_user_id"]))
        await (await start(env.client, tq, LINE_TIP, {"customer": customer})).result()
        await send(http, line_event("unfollow", T0 + 1000, user=NOK["line_user_id"]))
        await (await start(env.client, tq, LINE_TIP, {"customer": customer})).result()
    followed, unfollowed = messages(db)
    assert followed.status == "sent"
    assert (unfollowed.status, unfollowed.error) == ("skipped", "suppressed: line_unfollow (line_unfollow)")
    assert [push["to"] for push in fake.accepted("line")] == [NOK["line_user_id"]]
