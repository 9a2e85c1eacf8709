"""The Viber channel end to end: signed callbacks over HTTP into the running service,
replies through the outbox to a local fake of the Viber REST Bot API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from channels.base import Attachment, OutboundMessage, SendError
from channels.viber import ViberChannel, sign
from config.models import ChannelAccount
from inbox.replies import ReplyError, reply
from tests.fakes.viber import FakeViber
from tests.helpers import free_port, wait_for
from tests.service import InProcess, config_with, in_process

TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"
TOKEN_ENV = "OMNIROUTE_TEST_VIBER_TOKEN"
ACCOUNT = "kitchen-bot"
USER = "01234567890A="
OTHER_USER = "ZyX/9+abcDEF=="
TS = 1732000000123
SENT_AT = datetime.fromtimestamp(TS / 1000, UTC)
EVENT_TYPES = ["delivered", "seen", "failed", "subscribed", "unsubscribed", "conversation_started"]
REACH = f"viber:{ACCOUNT}"
VIBER = ViberChannel()


@pytest.fixture(autouse=True)
def viber_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def viber_account(api_base: str, **settings: str | int | bool) -> ChannelAccount:
    values: dict[str, str | int | bool] = {
        "api_base": api_base,
        "sender_name": "Kitchen Studio",
        "rate_limit_retry_s": "0.2",
        "timeout_s": 5,
    }
    values.update(settings)
    return ChannelAccount(
        channel="viber", account=ACCOUNT, source="site", secret_env=TOKEN_ENV, settings=values
    )


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeViber]]:
    async with (
        FakeViber(TOKEN) as fake,
        in_process(mongo_uri, db_name, config=config_with(viber_account(fake.base))) as svc,
    ):
        yield svc, fake


def hook(svc: InProcess) -> str:
    return f"{svc.client.base}/webhooks/viber/{ACCOUNT}"


def user(uid: str = USER, **extra: Any) -> dict[str, Any]:
    return {
        "id": uid,
        "name": "Иван Петров",
        "avatar": "https://media-direct.cdn.viber.com/download_photo?dlid=abc&fltp=jpg",
        "country": "RU",
        "language": "ru",
        "api_version": 10,
        **extra,
    }


def message(
    token: int | str, msg: dict[str, Any], sender: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "event": "message",
        "timestamp": TS,
        "chat_hostname": "SN-CHAT-05_",
        "message_token": token,
        "sender": sender or user(),
        "message": msg,
        "silent": False,
    }


def receipt(event: str, token: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": event,
        "timestamp": TS + 5000,
        "chat_hostname": "SN-CHAT-05_",
        "message_token": int(token),
        "user_id": USER,
        **extra,
    }


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {len(docs)}: {docs}"
    return docs[0]


async def nothing_stored(svc: InProcess) -> None:
    assert await svc.store.intake.count_documents({}) == 0
    assert await svc.store.messages.count_documents({}) == 0
    assert await svc.store.leads.count_documents({}) == 0


async def reply_and_wait(svc: InProcess, text: str, state: str = "sent") -> dict[str, Any]:
    conv = await one(svc.store.conversations, {"channel": "viber"})
    queued = await reply(svc.store, svc.service.config, conv["_id"], text)
    assert svc.service.outbox is not None
    outbox = svc.service.outbox

    async def settled() -> dict[str, Any] | None:
        outbox.wake.set()
        doc: dict[str, Any] | None = await svc.store.messages.find_one({"_id": queued["_id"]})
        return doc if doc is not None and doc["state"] == state else None

    await wait_for(settled, timeout=15, interval=0.1, message=f"reply not {state}")
    doc = await settled()
    assert doc is not None
    return doc


async def customer_writes(
    svc: InProcess, fake: FakeViber, token: int = 4912661846655238145
) -> None:
    status, _ = await fake.callback(
        hook(svc), message(token, {"type": "text", "text": "Добрый день"})
    )
    assert status == 200
    await svc.routed()


# --- inbound ---------------------------------------------------------------------------


async def test_text_message_creates_a_lead(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        payload = message(4912661846655238145, {"type": "text", "text": "Нужна кухня 3 м"})
        status, body = await fake.callback(hook(svc), payload)
        assert status == 200
        [mid] = orjson.loads(body)["accepted"]
        await svc.routed()
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == [f"viber:{ACCOUNT}:{USER}"]
        assert lead["meta"] == {"viber_country": "RU", "viber_language": "ru"}
        assert lead["title"].startswith("Иван Петров")
        msg = await one(svc.store.messages, {"_id": mid})
        assert (msg["channel"], msg["account"], msg["provider_id"]) == (
            "viber",
            ACCOUNT,
            "4912661846655238145",
        )
        assert msg["text"] == "Нужна кухня 3 м"
        assert msg["sender"] == {"name": "Иван Петров", "external_user_id": USER}
        assert msg["sent_at"] == SENT_AT
        assert msg["decision"]["rule"] == "new_lead"
        conv = await one(svc.store.conversations, {})
        assert conv["reply_to"] == USER
        intake = await one(svc.store.intake, {})
        assert intake["raw"] == orjson.dumps(payload)


async def test_media_kinds(mongo_uri: str, db_name: str) -> None:
    media = "https://dl-media.viber.com/1/share/2/long/vibes/icon/image/0x0/95e0/5688fdffdf.jpg"
    kinds: dict[int, dict[str, Any]] = {
        101: {
            "type": "picture",
            "text": "Вот такой цвет",
            "media": media,
            "thumbnail": media + "?thumb",
            "file_name": "IMG_2041.jpg",
            "size": 204800,
        },
        102: {
            "type": "video",
            "media": "https://dl-media.viber.com/v/clip.mp4",
            "size": 5242880,
            "duration": 12,
            "thumbnail": media,
        },
        103: {
            "type": "file",
            "media": "https://dl-media.viber.com/f/plan.pdf",
            "size": 10240,
            "file_name": "plan.pdf",
        },
        104: {
            "type": "sticker",
            "sticker_id": 46105,
            "media": "https://viber.com/stickers/46105.png",
        },
        105: {"type": "location", "location": {"lat": 55.751244, "lon": 37.618423}},
        106: {"type": "url", "media": "https://example.com/kitchens/oak"},
        107: {"type": "rich_media", "text": "from a carousel"},
    }
    async with running(mongo_uri, db_name) as (svc, fake):
        for token, msg in kinds.items():
            status, _ = await fake.callback(hook(svc), message(token, msg))
            assert status == 200
        await svc.routed()

        async def stored(token: int) -> dict[str, Any]:
            return await one(svc.store.messages, {"provider_id": str(token)})

        picture = await stored(101)
        assert picture["text"] == "Вот такой цвет"
        assert picture["attachments"] == [
            {
                "kind": "image",
                "url": media,
                "name": "IMG_2041.jpg",
                "mime_type": "image/jpeg",
                "size": 204800,
            }
        ]
        video = await stored(102)
        assert video["attachments"] == [
            {"kind": "video", "url": "https://dl-media.viber.com/v/clip.mp4", "size": 5242880}
        ]
        file = await stored(103)
        assert file["attachments"] == [
            {
                "kind": "file",
                "url": "https://dl-media.viber.com/f/plan.pdf",
                "name": "plan.pdf",
                "mime_type": "application/pdf",
                "size": 10240,
            }
        ]
        sticker = await stored(104)
        assert sticker["attachments"] == [
            {"kind": "sticker", "file_id": "46105", "url": "https://viber.com/stickers/46105.png"}
        ]
        location = await stored(105)
        assert location["attachments"] == [{"kind": "location", "url": "geo:55.751244,37.618423"}]
        url = await stored(106)
        assert (url["text"], url["attachments"]) == ("https://example.com/kitchens/oak", [])
        rich = await stored(107)
        assert (rich["text"], rich["meta"]["viber_type"]) == ("from a carousel", "rich_media")
        # All of one chat: one conversation, one lead.
        assert await svc.store.conversations.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_shared_contact_gives_a_phone_identity(mongo_uri: str, db_name: str) -> None:
    contact = {"type": "contact", "contact": {"name": "Иван", "phone_number": "8 (900) 123-45-67"}}
    async with running(mongo_uri, db_name) as (svc, fake):
        status, _ = await fake.callback(hook(svc), message(201, contact, user(OTHER_USER)))
        assert status == 200
        await svc.routed()
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == ["phone:+79001234567", f"viber:{ACCOUNT}:{OTHER_USER}"]
        msg = await one(svc.store.messages, {"provider_id": "201"})
        assert msg["text"] == "Иван\n8 (900) 123-45-67"
        assert msg["attachments"] == [{"kind": "contact", "name": "Иван"}]
        assert msg["sender"]["phone"] == "8 (900) 123-45-67"
        # The same person later writes from a site form with the phone: same lead.
        await svc.client.post_api(
            {"external_id": "f-1", "sender": {"phone": "+79001234567"}, "text": "Перезвоните"}
        )
        await svc.routed()
        site = await one(svc.store.messages, {"provider_id": "f-1"})
        assert site["target"]["id"] == lead["_id"]


async def test_phone_shared_later_in_the_chat_joins_the_contact(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        contact = {"type": "contact", "contact": {"name": "Иван", "phone_number": "+79001234567"}}
        await fake.callback(hook(svc), message(202, contact))
        await svc.routed()
        person = await one(svc.store.contacts, {})
        assert "phone:+79001234567" in person["identities"]


async def test_missing_optional_fields(mongo_uri: str, db_name: str) -> None:
    bare: dict[str, Any] = {
        "event": "message",
        "message_token": "912661846655238145",  # the SDK's examples use strings
        "sender": {"id": USER},
        "message": {"type": "picture", "media": "https://dl-media.viber.com/p.jpg"},
    }
    async with running(mongo_uri, db_name) as (svc, fake):
        status, _ = await fake.callback(hook(svc), bare)
        assert status == 200
        await svc.routed()
        msg = await one(svc.store.messages, {"provider_id": "912661846655238145"})
        assert msg["sender"] == {"external_user_id": USER}
        assert msg["sent_at"] is None
        assert msg["text"] == ""
        assert msg["attachments"] == [{"kind": "image", "url": "https://dl-media.viber.com/p.jpg"}]
        lead = await one(svc.store.leads, {})
        assert lead["meta"] == {}


async def test_bad_or_missing_signature_is_refused(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = message(301, {"type": "text", "text": "hi"})
    raw = orjson.dumps(payload)
    async with running(mongo_uri, db_name) as (svc, fake):
        wrong_key, _ = await fake.callback(hook(svc), raw, signature=sign("other-token", raw))
        tampered, _ = await fake.callback(
            hook(svc), raw.replace(b"hi", b"ho"), signature=sign(TOKEN, raw)
        )
        empty, _ = await fake.callback(hook(svc), raw, signature="")
        garbage, _ = await fake.callback(hook(svc), raw, signature="подпись")
        async with svc.client.http.post(hook(svc), data=raw) as resp:
            missing = resp.status
        monkeypatch.delenv(TOKEN_ENV)
        no_token, body = await fake.callback(hook(svc), raw)
        assert [wrong_key, tampered, empty, garbage, missing, no_token] == [401] * 6
        assert orjson.loads(body)["code"] == "unauthorized"
        await nothing_stored(svc)


async def test_unreadable_bodies_are_kept_unparsed(mongo_uri: str, db_name: str) -> None:
    """A signed callback is never refused for its shape (Viber would retry and drop it):
    what cannot be read at all is acknowledged and kept as unparsed; a message without a
    token is keyed by a hash of the body."""
    async with running(mongo_uri, db_name) as (svc, fake):
        not_json, body = await fake.callback(hook(svc), b'{"event": "message", ')
        assert orjson.loads(body)["accepted"] == []
        array, _ = await fake.callback(hook(svc), b"[]")
        no_sender, _ = await fake.callback(
            hook(svc), {"event": "message", "message_token": 1, "message": {"type": "text"}}
        )
        no_token = {"event": "message", "sender": {"id": USER}, "message": {"type": "text"}}
        kept, _ = await fake.callback(hook(svc), no_token)
        again, _ = await fake.callback(hook(svc), no_token)
        assert [not_json, array, no_sender, kept, again] == [200] * 5
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 3
        await svc.routed()
        msg = await one(svc.store.messages, {})
        assert msg["provider_id"].startswith("h")
        assert msg["sender"] == {"external_user_id": USER}


async def test_redelivery_is_stored_once(mongo_uri: str, db_name: str) -> None:
    payload = message(4912661846655238145, {"type": "text", "text": "Сколько стоит?"})
    async with running(mongo_uri, db_name) as (svc, fake):
        answers = [await fake.callback(hook(svc), payload) for _ in range(3)]
        assert [s for s, _ in answers] == [200] * 3
        bodies = [orjson.loads(b) for _, b in answers]
        assert len(bodies[0]["accepted"]) == 1
        assert [b["accepted"] for b in bodies[1:]] == [[], []]
        assert [len(b["duplicates"]) for b in bodies[1:]] == [1, 1]
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == 1
        assert await svc.store.messages.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_webhook_check_and_non_messages_are_acknowledged(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        check = {
            "event": "webhook",
            "timestamp": TS,
            "chat_hostname": "SN-CHAT-05_",
            "message_token": 5741311803571721087,
        }
        status, _ = await fake.callback(hook(svc), check)
        assert status == 200
        started = {
            "event": "conversation_started",
            "timestamp": TS,
            "message_token": 77,
            "type": "open",
            "context": "ad-campaign",
            "user": user(),
            "subscribed": False,
        }
        status, body = await fake.callback(hook(svc), started)
        # No welcome message: Viber would send a non-empty answer to the user.
        assert (status, body) == (200, b"")
        for other in (
            {"event": "client_status", "timestamp": TS, "user_id": USER},
            receipt("delivered", "123456789"),  # a receipt for a message we never sent
            {"event": "seen", "timestamp": TS},  # no message_token
            {"event": "unsubscribed", "timestamp": TS},  # no user_id
        ):
            status, _ = await fake.callback(hook(svc), other)
            assert status == 200, other
        await nothing_stored(svc)
        assert await svc.store.contacts.count_documents({}) == 0


async def test_subscription_events_update_reachability(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)

        async def reachable() -> dict[str, Any]:
            contact = await one(svc.store.contacts, {})
            state: dict[str, Any] = contact["reachable"][REACH]
            return state

        await fake.callback(
            hook(svc),
            {"event": "unsubscribed", "timestamp": TS + 1, "user_id": USER, "message_token": 4},
        )
        assert (await reachable())["reachable"] is False
        assert (await reachable())["reason"] == "unsubscribed"
        await fake.callback(
            hook(svc),
            {"event": "subscribed", "timestamp": TS + 2, "user": user(), "api_version": 10},
        )
        assert (await reachable())["reachable"] is True
        started = {
            "event": "conversation_started",
            "timestamp": TS + 3,
            "message_token": 5,
            "type": "open",
            "user": user(),
            "subscribed": False,
        }
        await fake.callback(hook(svc), started)
        assert (await reachable())["reachable"] is False
        # A message subscribes the user again (Viber sends no "subscribed" for it).
        await customer_writes(svc, fake, token=6)
        assert await reachable() == {"reachable": True, "at": SENT_AT, "reason": "message"}
        assert await svc.store.messages.count_documents({}) == 2


# --- outbound --------------------------------------------------------------------------


async def test_reply_is_sent_and_receipts_move_it_forward(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        doc = await reply_and_wait(svc, "Здравствуйте! Замерщик приедет завтра.")
        [req] = fake.sent()
        assert (req.method, req.path) == ("POST", "/pa/send_message")
        assert req.headers["X-Viber-Auth-Token"] == TOKEN
        assert req.headers["Content-Type"] == "application/json"
        assert req.json == {
            "receiver": USER,
            "type": "text",
            "text": "Здравствуйте! Замерщик приедет завтра.",
            "sender": {"name": "Kitchen Studio"},
        }
        token = doc["provider_id"]
        assert token == "5741311803571721087"
        assert (doc["state"], doc["attempts"]) == ("sent", 1)

        async def state() -> str:
            found = await svc.store.messages.find_one({"_id": doc["_id"]})
            assert found is not None
            return str(found["state"])

        for event, expected in [
            ("delivered", "delivered"),
            ("delivered", "delivered"),  # a re-delivered receipt
            ("seen", "read"),
            ("delivered", "read"),  # late: never backwards
            ("failed", "read"),
        ]:
            status, _ = await fake.callback(hook(svc), receipt(event, token, desc="x"))
            assert status == 200
            assert await state() == expected, event
        final = await one(svc.store.messages, {"_id": doc["_id"]})
        assert [h["state"] for h in final["state_history"]] == [
            "queued",
            "sent",
            "delivered",
            "read",
        ]
        assert "error" not in final


async def test_failed_receipt_fails_a_sent_message(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        doc = await reply_and_wait(svc, "Ваш заказ готов")
        await fake.callback(
            hook(svc),
            receipt("failed", doc["provider_id"], desc="Bad media (unsupported media type)"),
        )
        failed = await one(svc.store.messages, {"_id": doc["_id"]})
        assert (failed["state"], failed["error"]) == (
            "failed",
            "Bad media (unsupported media type)",
        )
        await fake.callback(hook(svc), receipt("delivered", doc["provider_id"]))
        assert (await one(svc.store.messages, {"_id": doc["_id"]}))["state"] == "delivered"


async def test_rate_limited_send_is_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(viber_status=12, status_message="Too many requests")
        doc = await reply_and_wait(svc, "Минутку")
        first, second = fake.sent()
        assert first.body == second.body
        assert (doc["state"], doc["attempts"], doc["provider_id"]) == (
            "sent",
            2,
            "5741311803571721087",
        )
        assert "error" not in doc


async def test_http_429_and_5xx_are_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(http_status=503)
        fake.fail_next(http_status=429, retry_after="0")
        doc = await reply_and_wait(svc, "Минутку")
        assert len(fake.sent()) == 3
        assert (doc["state"], doc["attempts"]) == ("sent", 3)


async def test_permanent_error_fails_the_message(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(viber_status=6, status_message="receiverNotSubscribed")
        doc = await reply_and_wait(svc, "Вы здесь?", state="failed")
        assert len(fake.sent()) == 1
        assert doc["error"] == "Viber: receiverNotSubscribed (status 6)"
        assert doc["error_code"] == "viber_status_6"
        assert "provider_id" not in doc


async def test_reply_over_the_limits_is_refused_at_once(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        conv = await one(svc.store.conversations, {})
        with pytest.raises(ReplyError) as err:
            await reply(svc.store, svc.service.config, conv["_id"], "я" * 7001)
        assert err.value.code == "viber_text_too_long"
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0


def outbound(text: str = "Добрый день", recipient: str = USER, **extra: Any) -> OutboundMessage:
    return OutboundMessage(
        id="m-1", channel="viber", account=ACCOUNT, recipient=recipient, text=text, **extra
    )


async def test_check_outbound_refusals() -> None:
    acct = viber_account("http://127.0.0.1:9")
    image = Attachment(kind="image", url="https://example.com/y.jpg")
    big_avatar = viber_account("http://x", sender_avatar="https://example.com/" + "a" * 4000)
    cases = [
        (viber_account("http://x", sender_name=""), outbound(), "viber_sender_name_missing"),
        (viber_account("http://x", sender_name="K" * 29), outbound(), "viber_sender_name_too_long"),
        (acct, outbound(recipient=""), "viber_no_recipient"),
        (acct, outbound(attachments=[image]), "viber_attachments_unsupported"),
        (acct, outbound("   "), "viber_empty_text"),
        (acct, outbound("x" * 7001), "viber_text_too_long"),
        (big_avatar, outbound("😀" * 7000), "viber_request_too_large"),
    ]
    for account, msg, code in cases:
        with pytest.raises(SendError) as err:
            VIBER.check_outbound(account, msg)
        assert (err.value.code, err.value.retryable) == (code, False)
    VIBER.check_outbound(acct, outbound("😀" * 7000))


async def test_send_error_mapping() -> None:
    async with FakeViber(TOKEN) as fake:
        acct = viber_account(fake.base, timeout_s="0.3")

        async def error() -> SendError:
            with pytest.raises(SendError) as err:
                await VIBER.send(acct, TOKEN, outbound())
            return err.value

        fake.fail_next(delay_s=1.0)
        timeout = await error()
        assert (timeout.code, timeout.retryable) == ("viber_timeout", True)
        fake.fail_next(http_status=429, retry_after="7")
        limited = await error()
        assert (limited.code, limited.retryable, limited.retry_after) == (
            "viber_http_429",
            True,
            7.0,
        )
        fake.fail_next(http_status=502)
        assert (await error()).retryable is True
        fake.fail_next(http_status=400)
        bad = await error()
        assert (bad.code, bad.retryable) == ("viber_http_400", False)
        fake.fail_next(viber_status=12, status_message="Too many requests")
        busy = await error()
        assert (busy.code, busy.retryable, busy.retry_after) == ("viber_status_12", True, 0.2)
        with pytest.raises(SendError) as wrong:
            await VIBER.send(acct, "not-the-token", outbound())
        assert (wrong.value.code, wrong.value.retryable) == ("viber_status_2", False)
        assert "invalidAuthToken" in wrong.value.detail
        with pytest.raises(SendError) as no_token:
            await VIBER.send(acct, None, outbound())
        assert no_token.value.code == "viber_no_token"
        ok = await VIBER.send(acct, TOKEN, outbound())
        assert ok.provider_id == "5741311803571721087"
    closed = viber_account(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SendError) as down:
        await VIBER.send(closed, TOKEN, outbound())
    assert (down.value.code, down.value.retryable) == ("viber_unreachable", True)


# --- webhook registration ---------------------------------------------------------------


async def test_register_webhook(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        acct = svc.service.config.account("viber", ACCOUNT)
        assert acct is not None
        url = await VIBER.register_webhook(acct, TOKEN, svc.client.base + "/")
        assert url == hook(svc)
        [req] = fake.requests
        assert (req.method, req.path) == ("POST", "/pa/set_webhook")
        assert req.headers["X-Viber-Auth-Token"] == TOKEN
        assert req.json == {"url": url, "event_types": EVENT_TYPES, "send_name": True}
        # Viber checked the URL with a signed "webhook" callback, and we answered 200.
        assert fake.webhook_checks == [(url, 200)]
        await nothing_stored(svc)

        with pytest.raises(SendError) as refused:
            await VIBER.register_webhook(acct, TOKEN, svc.client.base + "/elsewhere")
        assert (refused.value.code, refused.value.retryable) == ("viber_status_1", False)
        assert "is not 200" in refused.value.detail
        with pytest.raises(SendError) as wrong:
            await VIBER.register_webhook(acct, "not-the-token", svc.client.base)
        assert "invalidAuthToken" in wrong.value.detail
