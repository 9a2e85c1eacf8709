"""The Telegram channel over real HTTP: webhooks into the running service, replies out to a
local fake Bot API server (tests/fakes/telegram.py).

Payloads are Bot API ``Update`` objects as Telegram sends them (CHANNEL_PROTOCOLS.md §1).
Every refused request must store nothing.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from telegram import Update

from channels.base import OutboundMessage, SendError, WebhookError, WebhookRequest
from channels.telegram import ALLOWED_UPDATES, SECRET_HEADER, Address, TelegramChannel
from channels.telegram_read import read_raw, read_with_library
from config.models import ChannelAccount
from crm_store.documents import intake_id
from inbox.replies import ReplyError, reply
from tests.fakes.telegram import (
    FakeBotApi,
    migrated,
    permanent,
    rate_limited,
    server_error,
    slow,
)
from tests.helpers import free_port, wait_for
from tests.service import InProcess, api_body, config_with, in_process

TOKEN = "7000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
WEBHOOK_SECRET = "wh_S3cret-token"
TOKEN_ENV = "OMNIROUTE_TEST_TELEGRAM_TOKEN"
WEBHOOK_ENV = "OMNIROUTE_TEST_TELEGRAM_WEBHOOK"
BOT = "sales-bot"
PATH = f"/webhooks/telegram/{BOT}"

IVAN = {
    "id": 111222333,
    "is_bot": False,
    "first_name": "Ivan",
    "last_name": "Petrov",
    "username": "ivanp",
    "language_code": "ru",
}
BUSINESS = "AbCdEf0123456789_bc"
_update_ids = itertools.count(815_000_001)
_message_ids = itertools.count(100)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(WEBHOOK_ENV, WEBHOOK_SECRET)


def tg_account(api_base: str = "http://127.0.0.1:9", **settings: str | int) -> ChannelAccount:
    return ChannelAccount(
        channel="telegram",
        account=BOT,
        source="site",
        secret_env=TOKEN_ENV,
        settings={
            "webhook_secret_env": WEBHOOK_ENV,
            "api_base": api_base,
            "timeout_s": 2,
            **settings,
        },
    )


@asynccontextmanager
async def service(
    mongo_uri: str, db_name: str, **settings: str | int
) -> AsyncIterator[tuple[InProcess, FakeBotApi]]:
    async with (
        FakeBotApi(TOKEN) as fake,
        in_process(
            mongo_uri, db_name, config=config_with(tg_account(fake.base, **settings))
        ) as svc,
    ):
        yield svc, fake


# --- payloads (Bot API 10.0 shapes) ----------------------------------------------------


def chat_of(user: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "first_name", "last_name", "username")
    return {"type": "private", **{k: user[k] for k in keys if k in user}}


def message(
    text: str | None = "Hello, I need a sofa",
    user: dict[str, Any] | None = IVAN,
    chat: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "message_id": next(_message_ids),
        "date": int(time.time()) - 5,
        "chat": chat or chat_of(user or IVAN),
    }
    if user is not None:
        msg["from"] = user
    if text is not None:
        msg["text"] = text
    msg.update(extra)
    return msg


def update(kind: str = "message", body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"update_id": next(_update_ids), kind: body if body is not None else message()}


async def post(
    svc: InProcess,
    payload: dict[str, Any] | bytes,
    secret: str | None = WEBHOOK_SECRET,
    path: str = PATH,
) -> tuple[int, dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    async with svc.client.http.post(f"{svc.client.base}{path}", data=raw, headers=headers) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else {})


async def stored(svc: InProcess) -> tuple[int, int]:
    return (
        await svc.store.intake.count_documents({}),
        await svc.store.messages.count_documents({}),
    )


def pid(msg: dict[str, Any], business: str | None = None) -> str:
    base = f"{msg['chat']['id']}:{msg['message_id']}"
    return f"{business}:{base}" if business else base


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {docs}"
    return docs[0]


# --- inbound ---------------------------------------------------------------------------


async def test_text_message_creates_a_lead_for_a_new_sender(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        up = update()
        status, body = await post(svc, up)
        assert status == 200, body
        assert body["ok"] is True
        assert len(body["accepted"]) == 1
        await svc.routed()
        msg = await one(svc.store.messages, {})
        assert msg["_id"] == intake_id("telegram", BOT, pid(up["message"]))
        assert (msg["channel"], msg["account"], msg["provider_id"]) == (
            "telegram",
            BOT,
            f"{IVAN['id']}:{up['message']['message_id']}",
        )
        assert msg["text"] == "Hello, I need a sofa"
        assert msg["sender"] == {"external_user_id": str(IVAN["id"]), "name": "Ivan Petrov"}
        assert msg["sent_at"].timestamp() == up["message"]["date"]
        assert msg["meta"] == {
            "update_id": up["update_id"],
            "chat_type": "private",
            "username": "ivanp",
        }
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == [f"telegram:{BOT}:{IVAN['id']}"]
        assert lead["meta"]["username"] == "ivanp"
        assert msg["target"] == {"kind": "lead", "id": lead["_id"], "open": True}
        contact = await one(svc.store.contacts, {})
        assert contact["identities"] == [f"telegram:{BOT}:{IVAN['id']}"]
        conv = await one(svc.store.conversations, {})
        assert conv["thread"] == f"thread:{IVAN['id']}"
        assert conv["reply_to"] == f"chat_id={IVAN['id']}"
        # The same person writes again: same conversation, same lead.
        await post(svc, update(body=message("And a table")))
        await svc.routed()
        second = await one(svc.store.messages, {"text": "And a table"})
        assert (second["decision"]["rule"], second["target"]["id"]) == ("conversation", lead["_id"])


async def test_media_become_attachments_with_file_ids(mongo_uri: str, db_name: str) -> None:
    photo = [
        {
            "file_id": "AgAD-small",
            "file_unique_id": "s1",
            "width": 90,
            "height": 67,
            "file_size": 1200,
        },
        {
            "file_id": "AgAD-large",
            "file_unique_id": "s2",
            "width": 1280,
            "height": 960,
            "file_size": 98765,
        },
    ]
    cases: list[tuple[dict[str, Any], str, list[dict[str, Any]]]] = [
        (
            {"photo": photo, "caption": "This one?"},
            "This one?",
            [{"kind": "image", "file_id": "AgAD-large", "mime_type": "image/jpeg", "size": 98765}],
        ),
        (
            {
                "document": {
                    "file_id": "BQAD-doc",
                    "file_unique_id": "d1",
                    "file_name": "plan.pdf",
                    "mime_type": "application/pdf",
                    "file_size": 20480,
                }
            },
            "",
            [
                {
                    "kind": "file",
                    "file_id": "BQAD-doc",
                    "name": "plan.pdf",
                    "mime_type": "application/pdf",
                    "size": 20480,
                }
            ],
        ),
        (
            {
                "voice": {
                    "file_id": "AwAD-voice",
                    "file_unique_id": "v1",
                    "duration": 3,
                    "mime_type": "audio/ogg",
                    "file_size": 4100,
                }
            },
            "",
            [{"kind": "voice", "file_id": "AwAD-voice", "mime_type": "audio/ogg", "size": 4100}],
        ),
        (
            {
                "video": {
                    "file_id": "BAAD-video",
                    "file_unique_id": "vi1",
                    "width": 640,
                    "height": 360,
                    "duration": 12,
                    "file_name": "room.mp4",
                    "mime_type": "video/mp4",
                    "file_size": 700000,
                },
                "caption": "my room",
            },
            "my room",
            [
                {
                    "kind": "video",
                    "file_id": "BAAD-video",
                    "name": "room.mp4",
                    "mime_type": "video/mp4",
                    "size": 700000,
                }
            ],
        ),
        (
            {
                "sticker": {
                    "file_id": "CAAD-sticker",
                    "file_unique_id": "st1",
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                    "emoji": "👍",
                    "file_size": 3000,
                }
            },
            "",
            [
                {
                    "kind": "sticker",
                    "file_id": "CAAD-sticker",
                    "name": "👍",
                    "mime_type": "image/webp",
                    "size": 3000,
                }
            ],
        ),
        (
            {"location": {"latitude": 55.751244, "longitude": 37.618423}},
            "",
            [{"kind": "location", "url": "geo:55.751244,37.618423"}],
        ),
        # Someone else's contact: an attachment, not the sender's phone.
        (
            {"contact": {"phone_number": "79005554433", "first_name": "Olga", "user_id": 42}},
            "",
            [{"kind": "contact", "url": "tel:+79005554433", "name": "Olga"}],
        ),
    ]
    async with service(mongo_uri, db_name) as (svc, _):
        ups = [update(body=message(None, **fields)) for fields, _, _ in cases]
        for up in ups:
            status, body = await post(svc, up)
            assert (status, len(body["accepted"])) == (200, 1), body
        await svc.routed()
        for up, (_, text, attachments) in zip(ups, cases, strict=True):
            msg = await one(svc.store.messages, {"provider_id": pid(up["message"])})
            assert (msg["text"], msg["attachments"]) == (text, attachments)
            assert "phone" not in msg["sender"]
        assert await svc.store.contacts.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_missing_optional_fields_and_groups(mongo_uri: str, db_name: str) -> None:
    bare_user = {"id": 555, "is_bot": False, "first_name": "Anna"}
    group: dict[str, Any] = {
        "id": -1001234567890,
        "type": "supergroup",
        "title": "Kitchen buyers",
        "is_forum": True,
    }
    async with service(mongo_uri, db_name) as (svc, _):
        minimal = update(body=message("hi", user=bare_user))
        no_from = update(body=message("anonymous", user=None, chat={"id": 777, "type": "private"}))
        in_topic = update(
            body=message("in a topic", chat=group, message_thread_id=12, is_topic_message=True)
        )
        for up in (minimal, no_from, in_topic):
            status, body = await post(svc, up)
            assert (status, len(body["accepted"])) == (200, 1), body
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": pid(minimal["message"])})
        assert msg["sender"] == {"external_user_id": "555", "name": "Anna"}
        assert msg["meta"] == {"update_id": minimal["update_id"], "chat_type": "private"}
        msg = await one(svc.store.messages, {"provider_id": pid(no_from["message"])})
        assert msg["sender"] == {"external_user_id": "777"}
        msg = await one(svc.store.messages, {"provider_id": pid(in_topic["message"])})
        assert msg["sender"]["external_user_id"] == str(IVAN["id"])
        conv = await one(svc.store.conversations, {"_id": msg["conversation_id"]})
        assert conv["thread"] == f"thread:{group['id']}:12"
        assert Address.decode(conv["reply_to"]) == Address(group["id"], None, 12)


async def test_business_messages_and_owner_echoes(mongo_uri: str, db_name: str) -> None:
    owner = {"id": 999000, "is_bot": False, "first_name": "Shop", "last_name": "Owner"}
    async with service(mongo_uri, db_name) as (svc, fake):
        customer = update("business_message", message(business_connection_id=BUSINESS))
        echo = update(
            "business_message",
            message(
                "We have sofas", user=owner, chat=chat_of(IVAN), business_connection_id=BUSINESS
            ),
        )
        status, body = await post(svc, customer)
        assert (status, len(body["accepted"])) == (200, 1)
        status, body = await post(svc, echo)
        assert (status, body["accepted"], body["duplicates"]) == (200, [], [])
        await svc.routed()
        msg = await one(svc.store.messages, {})
        assert (
            msg["provider_id"]
            == f"{BUSINESS}:{IVAN['id']}:{customer['business_message']['message_id']}"
        )
        assert msg["meta"]["business_connection_id"] == BUSINESS
        conv = await one(svc.store.conversations, {})
        assert conv["reply_to"] == f"chat_id={IVAN['id']}&business_connection_id={BUSINESS}"
        # A reply inside the business chat must name the connection.
        out = await reply(svc.store, svc.service.config, conv["_id"], "Which colour?")
        wake(svc)
        sent = await sent_state(svc, out["_id"], "sent")
        [call] = fake.calls("sendMessage")
        assert call.params == {
            "chat_id": str(IVAN["id"]),
            "text": "Which colour?",
            "business_connection_id": BUSINESS,
        }
        assert sent["provider_id"].startswith(f"{BUSINESS}:{IVAN['id']}:")


async def test_edits_update_the_stored_message_and_never_create_one(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        original = message("I need a sfoa")
        await post(svc, update(body=original))
        await svc.routed()
        edited = {**original, "text": "I need a sofa", "edit_date": original["date"] + 30}
        status, body = await post(svc, update("edited_message", edited))
        assert (status, body["accepted"]) == (200, [])
        msg = await one(svc.store.messages, {})
        assert msg["text"] == "I need a sofa"
        assert [e["text"] for e in msg["edits"]] == ["I need a sfoa"]
        assert msg["edited_at"].timestamp() == edited["edit_date"]
        # The same edit delivered again changes nothing.
        await post(svc, update("edited_message", edited))
        assert len((await one(svc.store.messages, {}))["edits"]) == 1
        # An edit of a message we never had creates nothing.
        unknown = {**message("never seen"), "edit_date": int(time.time())}
        status, _ = await post(svc, update("edited_message", unknown))
        assert status == 200
        assert await stored(svc) == (1, 1)
        # Business chats: the edit finds its original through the connection id.
        biz = message("colour: gren", business_connection_id=BUSINESS)
        await post(svc, update("business_message", biz))
        await svc.routed()
        await post(
            svc,
            update(
                "edited_business_message",
                {**biz, "text": "colour: green", "edit_date": biz["date"] + 5},
            ),
        )
        msg = await one(svc.store.messages, {"provider_id": pid(biz, BUSINESS)})
        assert msg["text"] == "colour: green"
        assert await stored(svc) == (2, 2)


BOT_USER = {"id": 7000001, "is_bot": True, "first_name": "Omni", "username": "omni_test_bot"}


def member(status: str) -> dict[str, Any]:
    """A ChatMember of the bot; a banned one carries ``until_date`` (0: forever)."""
    return {"user": BOT_USER, "status": status, **({"until_date": 0} if status == "kicked" else {})}


def member_update(status: str, old: str, chat: dict[str, Any] | None = None) -> dict[str, Any]:
    return update(
        "my_chat_member",
        {
            "chat": chat or chat_of(IVAN),
            "from": IVAN,
            "date": int(time.time()),
            "old_chat_member": member(old),
            "new_chat_member": member(status),
        },
    )


async def test_blocking_the_bot_marks_the_contact_unreachable(mongo_uri: str, db_name: str) -> None:
    key = f"telegram:{BOT}"  # the field name: "reachable.<channel>:<account>"
    async with service(mongo_uri, db_name) as (svc, _):
        await post(svc, update())
        await svc.routed()
        status, body = await post(svc, member_update("kicked", "member"))
        assert (status, body["accepted"]) == (200, [])
        state = (await one(svc.store.contacts, {}))["reachable"][key]
        assert (state["reachable"], state["reason"]) == (False, "blocked the bot")
        status, _ = await post(svc, member_update("member", "kicked"))
        assert status == 200
        state = (await one(svc.store.contacts, {}))["reachable"][key]
        assert (state["reachable"], state["reason"]) == (True, "unblocked the bot")
        # The bot removed from a group is not about the customer.
        group = {"id": -100777, "type": "group", "title": "g"}
        status, _ = await post(svc, member_update("left", "member", chat=group))
        assert status == 200
        assert (await one(svc.store.contacts, {}))["reachable"][key]["reachable"] is True
        assert await stored(svc) == (1, 1)


IGNORED: list[tuple[str, dict[str, Any]]] = [
    ("callback_query", {"id": "4382", "from": IVAN, "chat_instance": "-12", "data": "yes"}),
    (
        "channel_post",
        {
            "message_id": 5,
            "date": 1_700_000_000,
            "text": "news",
            "chat": {"id": -100200, "type": "channel", "title": "News"},
        },
    ),
    ("inline_query", {"id": "77", "from": IVAN, "query": "sofa", "offset": ""}),
    (
        "message_reaction",
        {
            "chat": chat_of(IVAN),
            "message_id": 1,
            "date": 1_700_000_000,
            "user": IVAN,
            "old_reaction": [],
            "new_reaction": [{"type": "emoji", "emoji": "👍"}],
        },
    ),
    (
        "deleted_business_messages",
        {"business_connection_id": BUSINESS, "chat": chat_of(IVAN), "message_ids": [1, 2]},
    ),
    # A service message (someone joined a group) carries nothing to store.
    (
        "message",
        message(
            None,
            chat={"id": -100300, "type": "supergroup", "title": "g"},
            new_chat_members=[IVAN],
        ),
    ),
    ("brand_new_update_type", {"anything": True}),
]


async def test_other_updates_are_acknowledged_and_ignored(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        for kind, body in IGNORED:
            status, answer = await post(svc, update(kind, body))
            assert (status, answer["ok"], answer["accepted"]) == (200, True, []), kind
        assert await stored(svc) == (0, 0)
        assert await svc.store.contacts.count_documents({}) == 0


async def test_bad_or_missing_secret_token_is_403_and_stores_nothing(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        for secret in (None, "", "wrong", WEBHOOK_SECRET + "x", WEBHOOK_SECRET[:-1], "ключ"):
            status, body = await post(svc, update(), secret=secret)
            assert (status, body["code"]) == (403, "forbidden"), secret
        # No webhook secret configured: nothing is accepted at all.
        monkeypatch.delenv(WEBHOOK_ENV)
        status, _ = await post(svc, update(), secret=WEBHOOK_SECRET)
        assert status == 403
        assert await stored(svc) == (0, 0)
        assert await svc.store.contacts.count_documents({}) == 0


MALFORMED = [
    b"{not json",
    b"",
    b"[]",
    b'"update"',
    b'{"message": {"text": "no update_id"}}',
    b'{"update_id": "7", "message": {}}',
    b'{"update_id": 7, "message": "text"}',
    b'{"update_id": 7, "message": {"message_id": 1, "text": "no chat, no date"}}',
]


async def test_unreadable_body_is_kept_unparsed_and_get_is_405(
    mongo_uri: str, db_name: str
) -> None:
    """An authentic body nobody can read as a message (not JSON, no chat) is not refused:
    Telegram would retry it and then drop it. It is acknowledged and kept as unparsed."""
    async with service(mongo_uri, db_name) as (svc, _):
        for raw in MALFORMED:
            req = WebhookRequest("POST", {SECRET_HEADER: WEBHOOK_SECRET}, {}, raw)
            with pytest.raises(WebhookError):
                TelegramChannel().read(tg_account(), req)
            status, body = await post(svc, raw)
            assert status == 200, raw
            assert body.get("accepted") == [], raw
        # Telegram has no verification handshake: a GET is not a Telegram request.
        status, _ = await svc.client.get(PATH)
        assert status == 405
        assert await svc.store.messages.count_documents({}) == 0
        kept = await svc.store.intake.count_documents({"status": "unparsed"})
        assert kept == await svc.store.intake.count_documents({}) == len(set(MALFORMED))


async def test_redelivered_update_is_stored_once(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        up = update()
        first = await post(svc, up)
        again = await post(svc, up)
        assert first[0] == again[0] == 200
        assert again[1]["accepted"] == []
        assert again[1]["duplicates"] == first[1]["accepted"]
        await svc.routed()
        assert await post(svc, up) == (200, {**again[1]})
        assert await stored(svc) == (1, 1)
        assert await svc.store.leads.count_documents({}) == 1


async def share_contact_then_fill_in_the_form(svc: InProcess, *, wrote_before: bool) -> None:
    """A Telegram user shares their own contact (phone); later the same person uses the
    site form (the generic API channel) with that phone: one contact, one lead."""
    if wrote_before:
        await post(svc, update())
        await svc.routed()
    own = {"phone_number": "79001234567", "first_name": "Ivan", "user_id": IVAN["id"]}
    shared = update(body=message(None, contact=own))
    status, _ = await post(svc, shared)
    assert status == 200
    await svc.routed()
    msg = await one(svc.store.messages, {"provider_id": pid(shared["message"])})
    assert msg["sender"]["phone"] == "+79001234567"
    assert msg["identities"] == ["phone:+79001234567", f"telegram:{BOT}:{IVAN['id']}"]
    status, body = await svc.client.post_api(api_body("form-1", phone="8 900 123-45-67"))
    assert status == 200, body
    await svc.routed()
    contact = await one(svc.store.contacts, {})
    assert "phone:+79001234567" in contact["identities"]
    form = await one(svc.store.messages, {"provider_id": "form-1"})
    assert form["contact_id"] == contact["_id"]
    lead = await one(svc.store.leads, {})
    assert (form["decision"]["rule"], form["target"]["id"]) == ("open_lead", lead["_id"])


async def test_contact_shared_in_the_first_message_links_other_channels(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        await share_contact_then_fill_in_the_form(svc, wrote_before=False)


async def test_contact_shared_later_in_the_chat_links_other_channels(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, _):
        await share_contact_then_fill_in_the_form(svc, wrote_before=True)


# --- outbound --------------------------------------------------------------------------


def wake(svc: InProcess) -> None:
    """Skip the outbox worker's poll interval."""
    assert svc.service.outbox is not None
    svc.service.outbox.wake.set()


async def sent_state(svc: InProcess, message_id: str, state: str) -> dict[str, Any]:
    async def reached() -> bool:
        doc = await svc.store.messages.find_one({"_id": message_id})
        return doc is not None and doc["state"] == state

    await wait_for(reached, timeout=10, message=f"message never reached {state}")
    doc = await svc.store.messages.find_one({"_id": message_id})
    assert doc is not None
    return doc


async def conversation(svc: InProcess) -> dict[str, Any]:
    await post(svc, update())
    await svc.routed()
    return await one(svc.store.conversations, {})


async def test_reply_is_sent_with_send_message(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as (svc, fake):
        conv = await conversation(svc)
        out = await reply(svc.store, svc.service.config, conv["_id"], "Hello Ivan, which size?")
        wake(svc)
        doc = await sent_state(svc, out["_id"], "sent")
        assert [r.api_method for r in fake.requests] == ["getMe", "sendMessage"]
        call = fake.calls("sendMessage")[0]
        assert (call.http_method, call.path) == ("POST", f"/bot{TOKEN}/sendMessage")
        assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert call.params == {"chat_id": str(IVAN["id"]), "text": "Hello Ivan, which size?"}
        assert doc["provider_id"] == f"{IVAN['id']}:501"
        assert (doc["attempts"], doc.get("error")) == (1, None)
        # The Bot is kept: the second reply does not call getMe again.
        out2 = await reply(svc.store, svc.service.config, conv["_id"], "And the colour?")
        wake(svc)
        await sent_state(svc, out2["_id"], "sent")
        assert [r.api_method for r in fake.requests] == ["getMe", "sendMessage", "sendMessage"]


async def test_rate_limited_reply_is_retried_then_sent(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as (svc, fake):
        conv = await conversation(svc)
        fake.fail("sendMessage", rate_limited(1))
        started = time.monotonic()
        out = await reply(svc.store, svc.service.config, conv["_id"], "One moment")
        wake(svc)
        doc = await sent_state(svc, out["_id"], "sent")
        assert time.monotonic() - started >= 1.0  # waited retry_after
        calls = fake.calls("sendMessage")
        assert len(calls) == 2
        assert calls[0].params == calls[1].params
        assert doc["attempts"] == 2
        assert doc["provider_id"] == f"{IVAN['id']}:501"
        assert "error" not in doc


async def test_permanent_error_fails_the_reply_with_telegrams_reason(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, fake):
        conv = await conversation(svc)
        fake.fail("sendMessage", permanent("Forbidden: bot was blocked by the user", 403))
        out = await reply(svc.store, svc.service.config, conv["_id"], "Are you there?")
        wake(svc)
        doc = await sent_state(svc, out["_id"], "failed")
        assert doc["error"] == "Forbidden: bot was blocked by the user"
        assert doc["error_code"] == "forbidden"
        assert len(fake.calls("sendMessage")) == 1
        assert "provider_id" not in doc


async def test_replies_the_provider_would_refuse_are_refused_at_once(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, fake):
        conv = await conversation(svc)
        for text, attachments, code in [
            ("x" * 4097, None, "text_too_long"),
            ("   ", None, "empty_message"),
            (
                "two",
                [{"kind": "image", "file_id": "a"}, {"kind": "image", "file_id": "b"}],
                "too_many_attachments",
            ),
            ("here", [{"kind": "location", "url": "geo:1,2"}], "unsupported_attachment"),
            ("c" * 1025, [{"kind": "image", "file_id": "a"}], "text_too_long"),
        ]:
            with pytest.raises(ReplyError) as err:
                await reply(
                    svc.store, svc.service.config, conv["_id"], text, attachments=attachments
                )
            assert err.value.code == code
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0
        assert fake.requests == []


async def test_reply_with_one_attachment_uses_the_media_method(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name) as (svc, fake):
        conv = await conversation(svc)
        out = await reply(
            svc.store,
            svc.service.config,
            conv["_id"],
            "Our catalogue",
            attachments=[{"kind": "file", "url": "https://example.com/c.pdf"}],
        )
        wake(svc)
        doc = await sent_state(svc, out["_id"], "sent")
        [call] = fake.calls("sendDocument")
        assert call.path == f"/bot{TOKEN}/sendDocument"
        assert call.params == {
            "chat_id": str(IVAN["id"]),
            "caption": "Our catalogue",
            "document": "https://example.com/c.pdf",
        }
        assert doc["provider_id"] == f"{IVAN['id']}:501"


def outbound(recipient: str = f"chat_id={IVAN['id']}", **kw: Any) -> OutboundMessage:
    return OutboundMessage(
        id="m1",
        channel="telegram",
        account=BOT,
        recipient=recipient,
        text=kw.pop("text", "hi"),
        **kw,
    )


@pytest.mark.parametrize(
    ("failure", "retryable", "code", "retry_after", "detail"),
    [
        (rate_limited(7), True, "rate_limited", 7.0, "Flood control exceeded. Retry in 7 seconds"),
        (server_error(500), True, "unavailable", None, "Internal Server Error"),
        (server_error(502), True, "unavailable", None, "Internal Server Error"),
        (slow(1.2), True, "timeout", None, None),
        (permanent("Bad Request: chat not found"), False, "bad_request", None, "Chat not found"),
        (
            permanent("Forbidden: bot was blocked by the user", 403),
            False,
            "forbidden",
            None,
            "Forbidden: bot was blocked by the user",
        ),
        (permanent("Unauthorized", 401), False, "invalid_token", None, "Unauthorized"),
        (migrated(-1009876), False, "chat_migrated", None, None),
    ],
)
async def test_send_maps_provider_errors(
    failure: Any, retryable: bool, code: str, retry_after: float | None, detail: str | None
) -> None:
    channel = TelegramChannel()
    async with FakeBotApi(TOKEN) as fake:
        account = tg_account(fake.base, timeout_s=1)
        fake.fail("sendMessage", failure)
        with pytest.raises(SendError) as err:
            await channel.send(account, TOKEN, outbound())
        e = err.value
        assert (e.retryable, e.code, e.retry_after) == (retryable, code, retry_after)
        if detail is not None:
            assert e.detail == detail
        if code == "chat_migrated":
            assert "-1009876" in e.detail
        # The next attempt goes through.
        assert (await channel.send(account, TOKEN, outbound())).provider_id == (f"{IVAN['id']}:501")


async def test_send_without_a_reachable_api_is_retryable() -> None:
    account = tg_account(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    with pytest.raises(SendError) as err:
        await TelegramChannel().send(account, TOKEN, outbound())
    assert (err.value.retryable, err.value.code) == (True, "unavailable")


async def test_send_refuses_what_it_cannot_address() -> None:
    account = tg_account()
    channel = TelegramChannel()
    for bad in ("", "chat_id=abc", "business_connection_id=x", "@channel name"):
        with pytest.raises(SendError) as err:
            await channel.send(account, TOKEN, outbound(bad))
        assert (err.value.retryable, err.value.code) == (False, "bad_recipient")
    with pytest.raises(SendError) as err:
        await channel.send(account, None, outbound())
    assert (err.value.retryable, err.value.code) == (False, "no_token")
    for timeout in ("soon", "0", "1.5"):
        with pytest.raises(SendError) as err:
            await channel.send(tg_account(timeout_s=timeout), TOKEN, outbound())
        assert (err.value.retryable, err.value.code) == (False, "bad_settings")


async def test_the_bot_token_never_reaches_errors_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "7000001:AAwrongTOKENwrongTOKENwrongTOKEN_x"
    async with FakeBotApi(TOKEN) as fake:
        account = tg_account(fake.base)
        with caplog.at_level(logging.INFO, logger="httpx"):
            await TelegramChannel().send(account, TOKEN, outbound())
            with pytest.raises(SendError) as err:  # getMe answers 401 Unauthorized
                await TelegramChannel().send(account, wrong, outbound())
        assert (err.value.retryable, err.value.code) == (False, "invalid_token")
        assert wrong not in err.value.detail
        assert "<token>" in err.value.detail
        assert [r.api_method for r in fake.requests] == ["getMe", "sendMessage", "getMe"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/bot<token>/sendMessage" in logged
    assert TOKEN not in logged
    assert wrong not in logged


async def test_reply_quotes_the_message_it_answers() -> None:
    async with FakeBotApi(TOKEN) as fake:
        account = tg_account(fake.base)
        channel = TelegramChannel()
        await channel.send(account, TOKEN, outbound(in_reply_to=f"{IVAN['id']}:42"))
        await channel.send(account, TOKEN, outbound(in_reply_to="-100:42"))  # another chat
        first, second = fake.calls("sendMessage")
        assert first.json("reply_parameters") == {
            "message_id": 42,
            "allow_sending_without_reply": True,
        }
        assert "reply_parameters" not in second.params


def test_addresses_round_trip() -> None:
    for a in (Address(1), Address(-100123, None, 7), Address(5, "bc:x&y=z", None)):
        assert Address.decode(a.encode()) == a
    assert Address.decode("12345") == Address(12345)


async def test_register_webhook_calls_set_webhook() -> None:
    async with FakeBotApi(TOKEN) as fake:
        account = tg_account(fake.base)
        url = await TelegramChannel().register_webhook(account, TOKEN, "https://crm.example.com/")
        assert url == f"https://crm.example.com/webhooks/telegram/{BOT}"
        [call] = fake.calls("setWebhook")
        assert call.path == f"/bot{TOKEN}/setWebhook"
        assert call.params["url"] == url
        assert call.params["secret_token"] == WEBHOOK_SECRET
        assert call.json("allowed_updates") == list(ALLOWED_UPDATES)
        fake.fail("setWebhook", permanent("Bad Request: bad webhook: HTTPS url must be provided"))
        with pytest.raises(SendError) as err:
            await TelegramChannel().register_webhook(account, TOKEN, "http://crm.example.com")
        assert (err.value.retryable, err.value.code) == (False, "bad_request")
        # python-telegram-bot drops the "Bad Request: " prefix and re-capitalises.
        assert err.value.detail == "Bad webhook: https url must be provided"


async def test_register_webhook_needs_a_valid_secret_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in ("", "has space", "x" * 257):
        monkeypatch.setenv(WEBHOOK_ENV, value)
        with pytest.raises(SendError) as err:
            await TelegramChannel().register_webhook(tg_account(), TOKEN, "https://crm.example")
        assert err.value.code == "bad_webhook_secret"


# --- updates of older Bot API versions ---------------------------------------------------

OLD_BOT_API = Path(__file__).parent / "fixtures" / "telegram" / "old_bot_api"
ANNA, OLEG, MARIA = "204518372", "97341102", "310044871"
# fixture → (sender id, sender name, chat id, text, attachment kinds); None: not a message.
OLD_EXPECTED: dict[str, tuple[str, str, str, str, list[str]] | None] = {
    "01_text_private_2016": (ANNA, "Anna Smirnova", ANNA, "Hello! Do you make kitchens", []),
    "02_photo_no_file_unique_id": (ANNA, "Anna Smirnova", ANNA, "", ["image"]),
    "03_photo_with_caption": (OLEG, "Oleg", OLEG, "Like this one, but 2.4 m wide", ["image"]),
    "04_document": (OLEG, "Oleg", OLEG, "The plan of my kitchen", ["file"]),
    "05_voice": (MARIA, "Мария Кузнецова", MARIA, "", ["voice"]),
    "06_sticker_without_type": (MARIA, "Мария Кузнецова", MARIA, "", ["sticker"]),
    "07_location": (ANNA, "Anna Smirnova", ANNA, "", ["location"]),
    "08_venue": (OLEG, "Oleg", OLEG, "", ["location"]),
    "09_own_contact": (ANNA, "Anna Smirnova", ANNA, "", ["contact"]),
    "10_video_with_caption": (MARIA, "Мария Кузнецова", MARIA, "The drawer", ["video"]),
    "11_edited_message": None,
    "12_channel_post": None,
    "13_reply_to_message": (OLEG, "Oleg", OLEG, "Tomorrow after 6 pm", []),
    "14_forwarded": (MARIA, "Мария Кузнецова", MARIA, "Sergey recommended you", []),
    "15_group_chat": (OLEG, "Oleg", "-217055431", "Colleagues, the kitchen", []),
    "16_supergroup_with_entities": (MARIA, "Мария Кузнецова", "-1001098765432", "Call me", []),
    "17_audio_old": (ANNA, "Anna Smirnova", ANNA, "", ["audio"]),
    "18_edited_caption": None,
}


def old_updates() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(OLD_BOT_API.glob("*.json"))}


def test_older_bot_api_updates_need_the_tolerant_reader() -> None:
    """The fixtures are what python-telegram-bot's models refuse (no ``is_bot``,
    ``file_unique_id``, sticker ``type`` …): without the tolerant reading most are lost."""
    refused = 0
    for raw in old_updates().values():
        try:
            Update.de_json(orjson.loads(raw), None)
        except TypeError:
            refused += 1
    assert set(old_updates()) == set(OLD_EXPECTED)
    assert refused >= 15


async def test_older_bot_api_updates_are_stored(mongo_uri: str, db_name: str) -> None:
    updates = old_updates()
    async with service(mongo_uri, db_name) as (svc, _):
        for name, raw in updates.items():
            if name.startswith(("11_", "18_")):
                continue  # the edits, after their messages are stored
            status, body = await post(svc, raw)
            assert status == 200, (name, body)
            assert len(body["accepted"]) == (0 if OLD_EXPECTED[name] is None else 1), name
        await svc.routed()
        for name, expected in OLD_EXPECTED.items():
            if expected is None:
                continue
            user, user_name, chat, text, kinds = expected
            update_ = orjson.loads(updates[name])
            pid_ = f"{chat}:{update_['message']['message_id']}"
            msg = await one(svc.store.messages, {"provider_id": pid_})
            assert msg["sender"]["external_user_id"] == user, name
            assert msg["sender"]["name"] == user_name, name
            assert msg["text"].startswith(text), name
            assert [a["kind"] for a in msg["attachments"]] == kinds, name
            assert msg["sent_at"].timestamp() == update_["message"]["date"], name
        contact = await one(svc.store.messages, {"provider_id": f"{ANNA}:1209"})
        assert contact["sender"]["phone"] == "+79161234567"  # her own number: an identity
        # The channel post is ours, not a customer's: nothing was stored for it.
        assert await svc.store.messages.count_documents({}) == 15
        # The edits of older versions apply to the stored messages, with their edit_date.
        for name in ("11_edited_message", "18_edited_caption"):
            assert (await post(svc, updates[name]))[0] == 200
        await svc.routed()

        async def edited() -> bool:
            texts = {
                d["provider_id"]: d["text"]
                async for d in svc.store.messages.find(
                    {"provider_id": {"$in": [f"{ANNA}:1201", f"{OLEG}:1203"]}}
                )
            }
            return texts == {
                f"{ANNA}:1201": "Hello! Do you make kitchens and wardrobes to order?",
                f"{OLEG}:1203": "Like this one, but 2.6 m wide",
            }

        await wait_for(edited, message="older Bot API edits not applied")
        first = await one(svc.store.messages, {"provider_id": f"{ANNA}:1201"})
        assert first["edited_at"].timestamp() == 1462015290


def modern_updates() -> list[dict[str, Any]]:
    """Updates of the current Bot API, one per kind of content python-telegram-bot reads."""
    group = {"id": -1001234567890, "title": "Sofa owners", "type": "supergroup", "is_forum": True}
    sizes = [
        {"file_id": "AgAD-s", "file_unique_id": "s1", "width": 90, "height": 67},
        {"file_id": "AgAD-l", "file_unique_id": "l1", "width": 1280, "height": 960, "file_size": 9},
    ]
    sticker = {
        "file_id": "CAAC-st",
        "file_unique_id": "st1",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": True,
        "emoji": "👍",
        "file_size": 2100,
    }
    place = {"latitude": 55.75, "longitude": 37.61}
    own = {"phone_number": "79001234567", "first_name": "Ivan", "user_id": IVAN["id"]}
    document = {
        "file_id": "BQAD-doc",
        "file_unique_id": "d1",
        "file_name": "plan.pdf",
        "mime_type": "application/pdf",
        "file_size": 20480,
    }
    return [
        update(),
        update(body=message(None, photo=sizes, caption="This one?")),
        update(body=message(None, document=document)),
        update(body=message(None, sticker=sticker)),
        update(
            body=message(
                None,
                location=place,
                venue={"location": place, "title": "Showroom", "address": "Tverskaya 1"},
            )
        ),
        update(body=message(None, contact=own)),
        update("business_message", message(business_connection_id=BUSINESS)),
        update(body=message("in a topic", chat=group, message_thread_id=12, is_topic_message=True)),
        update(
            body=message(
                "on behalf of the group",
                chat=group,
                sender_chat={"id": group["id"], "title": "Sofa owners", "type": "supergroup"},
            )
        ),
        update("edited_message", {**message("fixed"), "edit_date": int(time.time())}),
    ]


def test_both_readers_read_an_update_the_same_way() -> None:
    """python-telegram-bot's models and the tolerant JSON reading give the same result for
    every update the library accepts, so a stored message does not depend on which read it."""
    for up in modern_updates():
        by_library = read_with_library(up)  # accepted: no exception
        assert by_library is not None
        assert read_raw(up) == by_library, up


def test_deleted_business_messages_become_deletions() -> None:
    """The customer deleted messages in a business chat: one deletion per message id,
    keyed like the stored messages (the store marks them deleted, or keeps the deletion
    until they are stored)."""
    gone = {"business_connection_id": BUSINESS, "chat": chat_of(IVAN), "message_ids": [7, "8"]}
    body = orjson.dumps(update("deleted_business_messages", gone))
    parsed = TelegramChannel().read(tg_account(), WebhookRequest("POST", {}, {}, body))
    assert [d.provider_id for d in parsed.deletions] == [
        f"{BUSINESS}:{IVAN['id']}:7",
        f"{BUSINESS}:{IVAN['id']}:8",
    ]
    assert (parsed.messages, parsed.edits) == ([], [])
