"""VK communities (Callback API) end to end: real HTTP into the running service, replies
through vk_api to a local fake of the VK API (tests/fakes/vk.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from channels.base import Attachment, OutboundMessage, SendError
from channels.vk import API_VERSION, VkChannel, random_id
from config.models import ChannelAccount
from inbox.replies import ReplyError, reply
from tests.fakes.vk import FakeVk
from tests.helpers import free_port, wait_for
from tests.service import InProcess, config_with, in_process

GROUP = 218_000_111
ACCOUNT = "club"
USER = 631_204_577
TOKEN_ENV = "OMNIROUTE_SECRET_VK_CLUB_TOKEN"
CALLBACK_ENV = "OMNIROUTE_SECRET_VK_CLUB_CALLBACK"
TOKEN = "vk1.a.community-token-for-tests"
CALLBACK_SECRET = "Zq8-callback-secret"
CONFIRMATION = "4f1c9a2e"
CLIENT_INFO = {
    "button_actions": ["text", "vkpay", "open_app", "location", "open_link", "callback"],
    "keyboard": True,
    "inline_keyboard": True,
    "carousel": True,
    "lang_id": 0,
}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(CALLBACK_ENV, CALLBACK_SECRET)


def vk_account(account: str = ACCOUNT, /, **settings: str | int | bool) -> ChannelAccount:
    values: dict[str, str | int | bool] = {
        "group_id": GROUP,
        "confirmation": CONFIRMATION,
        "callback_secret_env": CALLBACK_ENV,
        "timeout_s": 2,
    }
    values.update(settings)
    return ChannelAccount(
        channel="vk", account=account, source="site", secret_env=TOKEN_ENV, settings=values
    )


@asynccontextmanager
async def service(
    mongo_uri: str, db_name: str, *extra: ChannelAccount, **settings: str | int | bool
) -> AsyncIterator[InProcess]:
    config = config_with(vk_account(ACCOUNT, **settings), *extra)
    async with in_process(mongo_uri, db_name, config=config) as svc:
        yield svc


async def post(
    svc: InProcess,
    event: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    account: str = ACCOUNT,
) -> tuple[int, str, str]:
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    hdrs = {"Content-Type": "application/json", "User-Agent": "VKCallback", **(headers or {})}
    url = f"{svc.client.base}/webhooks/vk/{account}"
    async with svc.client.http.post(url, data=raw, headers=hdrs) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def envelope(
    type_: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    secret: str | None = CALLBACK_SECRET,
    group: int = GROUP,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "group_id": group,
        "type": type_,
        "event_id": event_id or uuid.uuid4().hex[:40],
        "v": API_VERSION,
        "object": obj,
    }
    if secret is not None:
        body["secret"] = secret
    return body


def message(
    cmid: int, text: str = "Здравствуйте! Сколько стоит диван?", **extra: Any
) -> dict[str, Any]:
    """A ``messages_message`` as VK 5.199 sends it in a DM with the community."""
    return {
        "date": 1_735_000_000 + cmid,
        "from_id": USER,
        "id": 9000 + cmid,
        "version": 10_000_000 + cmid,
        "out": 0,
        "fwd_messages": [],
        "important": False,
        "is_hidden": False,
        "attachments": [],
        "conversation_message_id": cmid,
        "text": text,
        "peer_id": USER,
        "random_id": 0,
        **extra,
    }


def message_new(msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return envelope("message_new", {"message": msg, "client_info": CLIENT_INFO}, **kw)


async def counts(svc: InProcess) -> tuple[int, int]:
    return (
        await svc.store.intake.count_documents({}),
        await svc.store.messages.count_documents({}),
    )


async def wait_state(svc: InProcess, message_id: str, state: str) -> dict[str, Any]:
    async def reached() -> bool:
        doc = await svc.store.messages.find_one({"_id": message_id})
        return doc is not None and doc["state"] == state

    await wait_for(reached, timeout=15, message=f"message never reached {state}")
    doc = await svc.store.messages.find_one({"_id": message_id})
    assert doc is not None
    return doc


async def queue_reply(svc: InProcess, text: str = "Добрый день! 45 000 ₽.") -> dict[str, Any]:
    conv = await svc.store.conversations.find_one({})
    assert conv is not None
    doc = await reply(svc.store, svc.service.config, conv["_id"], text)
    assert svc.service.outbox is not None
    svc.service.outbox.wake.set()
    return doc


# --- handshake, authenticity, malformed requests ------------------------------------


async def test_confirmation_answers_the_configured_string(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        status, ctype, body = await post(
            svc, {"type": "confirmation", "group_id": GROUP, "secret": CALLBACK_SECRET}
        )
        assert (status, body) == (200, CONFIRMATION)
        assert ctype.startswith("text/plain")
        status, _, body = await post(
            svc, {"type": "confirmation", "group_id": GROUP, "secret": "wrong"}
        )
        assert status == 403
        assert CONFIRMATION not in body
        assert await counts(svc) == (0, 0)


async def test_wrong_or_missing_secret_and_other_group_are_refused(
    mongo_uri: str, db_name: str
) -> None:
    no_secret = vk_account("open", callback_secret_env="OMNIROUTE_SECRET_VK_UNSET")
    async with service(mongo_uri, db_name, no_secret) as svc:
        for event in (
            message_new(message(1), secret="Zq8-callback-secreT"),
            message_new(message(1), secret=None),
            message_new(message(1), secret=""),
            message_new(message(1), group=GROUP + 1),
            {**message_new(message(1)), "secret": 12345},
        ):
            status, ctype, body = await post(svc, event)
            assert status == 403, event
            assert ctype.startswith("application/problem+json")
            assert body != "ok"
        # An account without a callback secret refuses everything (fails closed).
        status, _, _ = await post(svc, message_new(message(1)), account="open")
        assert status == 403
        assert await counts(svc) == (0, 0)
        assert await svc.store.leads.count_documents({}) == 0


async def test_malformed_json_is_400_and_nothing_stored(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        for raw in (
            b'{"type": "message_new", "object": {',
            b"",
            b"[1, 2]",
            b'"ok"',
            b'{"group_id": 218000111, "secret": "x"}',
        ):
            status, _, _ = await post(svc, raw)
            assert status == 400, raw
        assert await counts(svc) == (0, 0)


async def test_account_without_confirmation_string_is_a_server_error(
    mongo_uri: str, db_name: str
) -> None:
    async with service(mongo_uri, db_name, confirmation="") as svc:
        status, _, body = await post(
            svc, {"type": "confirmation", "group_id": GROUP, "secret": CALLBACK_SECRET}
        )
        assert status == 500
        assert "confirmation" in body


# --- inbound messages ---------------------------------------------------------------


async def test_text_message_creates_a_lead(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        msg = message(17, payload='{"button":"price"}')
        status, ctype, body = await post(svc, message_new(msg))
        assert (status, body) == (200, "ok")
        assert ctype.startswith("text/plain")
        await svc.routed()
        stored = await svc.store.messages.find_one({})
        assert stored is not None
        assert stored["provider_id"] == f"{USER}_17"
        assert stored["text"] == "Здравствуйте! Сколько стоит диван?"
        assert stored["sent_at"].timestamp() == 1_735_000_017
        assert stored["sender"] == {"external_user_id": str(USER)}
        assert stored["identities"] == [f"vk:{ACCOUNT}:{USER}"]
        assert stored["meta"] == {
            "vk_peer_id": USER,
            "vk_conversation_message_id": 17,
            "vk_message_id": 9017,
            "vk_payload": '{"button":"price"}',
        }
        lead = await svc.store.leads.find_one({})
        assert lead is not None
        assert (lead["pipeline_id"], lead["stage_id"], lead["source_id"]) == (
            "leads",
            "new",
            "site",
        )
        assert lead["identities"] == [f"vk:{ACCOUNT}:{USER}"]
        assert lead["meta"]["vk_peer_id"] == USER
        assert stored["target"] == {"kind": "lead", "id": lead["_id"], "open": True}
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        assert conv["reply_to"] == str(USER)
        # The customer writes again: same conversation, same lead.
        await post(svc, message_new(message(18, "И доставка?")))
        await svc.routed()
        assert await svc.store.leads.count_documents({}) == 1
        second = await svc.store.messages.find_one({"provider_id": f"{USER}_18"})
        assert second is not None
        assert second["conversation_id"] == conv["_id"]


async def test_legacy_object_shapes_are_ingested(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        # API 5.80–5.102: the message is the object itself, no client_info.
        legacy = {**envelope("message_new", message(5, "старый формат")), "v": "5.101"}
        assert (await post(svc, legacy))[0] == 200
        # API < 5.80: user_id/body, no conversation_message_id: keyed by the message id.
        ancient = envelope(
            "message_new",
            {
                "id": 77,
                "date": 1_500_000_000,
                "out": 0,
                "user_id": USER + 1,
                "read_state": 0,
                "title": "",
                "body": "совсем старый",
            },
        )
        assert (await post(svc, ancient))[0] == 200
        await svc.routed()
        docs = {d["provider_id"]: d async for d in svc.store.messages.find({})}
        assert docs[f"{USER}_5"]["text"] == "старый формат"
        assert docs["id77"]["text"] == "совсем старый"
        assert docs["id77"]["sender"] == {"external_user_id": str(USER + 1)}
        conv = await svc.store.conversations.find_one({"_id": docs["id77"]["conversation_id"]})
        assert conv is not None
        assert conv["reply_to"] == str(USER + 1)


async def test_missing_optional_fields(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        bare = {
            "type": "message_new",
            "group_id": GROUP,
            "secret": CALLBACK_SECRET,
            "object": {"message": {"from_id": USER, "peer_id": USER, "conversation_message_id": 3}},
        }
        assert await post(svc, bare) == (200, "text/plain; charset=utf-8", "ok")
        await svc.routed()
        doc = await svc.store.messages.find_one({})
        assert doc is not None
        assert (doc["provider_id"], doc["text"], doc["sent_at"], doc["attachments"]) == (
            f"{USER}_3",
            "",
            None,
            [],
        )
        assert doc["meta"] == {"vk_peer_id": USER, "vk_conversation_message_id": 3}


async def test_awkward_messages(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        # No conversation_message_id, no id, no event_id: keyed by a hash of the body, so
        # VK's redelivery of the same body is stored once.
        no_ids = envelope("message_new", {"message": {"from_id": USER, "text": "?"}})
        del no_ids["event_id"]
        assert (await post(svc, no_ids))[:3:2] == (200, "ok")
        assert (await post(svc, no_ids))[:3:2] == (200, "ok")
        # Only the event id: the message is keyed by it.
        only_event = envelope(
            "message_new", {"message": {"from_id": USER, "text": "Алло"}}, event_id="e" * 40
        )
        assert (await post(svc, only_event))[2] == "ok"
        assert (await post(svc, only_event, {"X-Retry-Counter": "1"}))[2] == "ok"
        # Nonsense where VK puts dates, attachments and coordinates is tolerated.
        odd = message(
            8,
            "странное",
            date=10**15,
            attachments=[{"type": "photo"}, "junk", {"type": "doc", "doc": {"id": "x"}}],
            geo={"type": "point", "coordinates": "north"},
        )
        assert (await post(svc, message_new(odd)))[2] == "ok"
        await svc.routed()
        docs = {d["provider_id"]: d async for d in svc.store.messages.find({})}
        hashed = [p for p in docs if p.startswith("h")]
        assert len(hashed) == 1
        assert docs[hashed[0]]["text"] == "?"
        assert set(docs) == {"event" + "e" * 40, f"{USER}_8", hashed[0]}
        assert docs["event" + "e" * 40]["text"] == "Алло"
        assert (docs[f"{USER}_8"]["sent_at"], docs[f"{USER}_8"]["attachments"]) == (
            None,
            [{"kind": "file"}],
        )
        assert await counts(svc) == (3, 3)


PHOTO = {
    "album_id": -3,
    "date": 1_735_000_100,
    "id": 457_239_017,
    "owner_id": USER,
    "access_key": "c5e0f6b7d1a2",
    "has_tags": False,
    "text": "",
    "sizes": [
        {"height": 75, "type": "s", "width": 56, "url": "https://sun9-1.userapi.com/s.jpg"},
        {"height": 1280, "type": "w", "width": 960, "url": "https://sun9-1.userapi.com/w.jpg"},
        {"height": 604, "type": "x", "width": 453, "url": "https://sun9-1.userapi.com/x.jpg"},
    ],
}
DOC = {
    "id": 671_234_567,
    "owner_id": USER,
    "title": "smeta.pdf",
    "size": 183_245,
    "ext": "pdf",
    "date": 1_735_000_100,
    "type": 1,
    "access_key": "f00dbeef",
    "url": f"https://vk.com/doc{USER}_671234567?hash=abc&dl=def",
}
VOICE = {
    "duration": 4,
    "waveform": [0, 3, 12, 31, 9, 0],
    "id": 671_234_568,
    "owner_id": USER,
    "access_key": "9a8b7c",
    "link_ogg": "https://psv4.userapi.com/v/voice.ogg",
    "link_mp3": "https://psv4.userapi.com/v/voice.mp3",
    "transcript_state": "done",
}
VIDEO = {
    "id": 456_239_018,
    "owner_id": USER,
    "title": "Наша кухня",
    "duration": 31,
    "access_key": "0c0ffee",
    "date": 1_735_000_100,
    "views": 3,
    "type": "video",
    "image": [{"url": "https://sun9-2.userapi.com/v.jpg", "width": 320, "height": 240}],
}
STICKER = {
    "product_id": 279,
    "sticker_id": 9011,
    "images": [
        {"url": "https://vk.com/sticker/1-9011-64", "width": 64, "height": 64},
        {"url": "https://vk.com/sticker/1-9011-512", "width": 512, "height": 512},
    ],
    "images_with_background": [],
}
WALL = {
    "id": 42,
    "from_id": -GROUP,
    "to_id": -GROUP,
    "date": 1_734_000_000,
    "post_type": "post",
    "text": "Скидка 20% на диваны",
}
LINK = {
    "url": "https://example.com/sofa",
    "title": "Диван «Оскар»",
    "caption": "example.com",
    "description": "",
}
POLL = {"id": 7, "owner_id": USER, "question": "Какой цвет?", "answers": []}
GEO = {
    "type": "point",
    "coordinates": {"latitude": 55.751244, "longitude": 37.618423},
    "place": {"title": "Москва, Россия", "country": "Россия", "city": "Москва"},
}


async def test_attachments_are_stored_as_metadata(mongo_uri: str, db_name: str) -> None:
    items = [
        ("photo", PHOTO),
        ("doc", DOC),
        ("audio_message", VOICE),
        ("video", VIDEO),
        ("sticker", STICKER),
        ("wall", WALL),
        ("link", LINK),
        ("poll", POLL),
    ]
    msg = message(21, "Вот что я хочу", attachments=[{"type": t, t: o} for t, o in items], geo=GEO)
    async with service(mongo_uri, db_name) as svc:
        assert (await post(svc, message_new(msg)))[0] == 200
        await svc.routed()
        doc = await svc.store.messages.find_one({})
        assert doc is not None
        assert doc["text"] == "Вот что я хочу"
        assert doc["attachments"] == [
            {
                "kind": "image",
                "file_id": f"photo{USER}_457239017_c5e0f6b7d1a2",
                "url": "https://sun9-1.userapi.com/w.jpg",
            },
            {
                "kind": "file",
                "file_id": f"doc{USER}_671234567_f00dbeef",
                "url": DOC["url"],
                "name": "smeta.pdf",
                "mime_type": "application/pdf",
                "size": 183_245,
            },
            {
                "kind": "voice",
                "file_id": f"audio_message{USER}_671234568_9a8b7c",
                "url": "https://psv4.userapi.com/v/voice.ogg",
                "mime_type": "audio/ogg",
            },
            {
                "kind": "video",
                "file_id": f"video{USER}_456239018_0c0ffee",
                "url": f"https://vk.com/video{USER}_456239018",
                "name": "Наша кухня",
            },
            {"kind": "sticker", "file_id": "9011", "url": "https://vk.com/sticker/1-9011-512"},
            {
                "kind": "wall",
                "file_id": f"wall-{GROUP}_42",
                "url": f"https://vk.com/wall-{GROUP}_42",
            },
            {"kind": "link", "url": "https://example.com/sofa", "name": "Диван «Оскар»"},
            {"kind": "poll", "file_id": f"poll{USER}_7"},
            {"kind": "location", "url": "geo:55.751244,37.618423", "name": "Москва, Россия"},
        ]


async def test_group_chat_message_keeps_the_chat_as_thread(mongo_uri: str, db_name: str) -> None:
    chat = 2_000_000_005
    async with service(mongo_uri, db_name) as svc:
        # In chats VK may hide the message id (0): the key is (peer_id, cmid).
        msg = message(4, "Коллеги, нужен счёт", peer_id=chat, id=0)
        assert (await post(svc, message_new(msg)))[0] == 200
        await svc.routed()
        doc = await svc.store.messages.find_one({})
        assert doc is not None
        assert doc["provider_id"] == f"{chat}_4"
        assert doc["identities"] == [f"vk:{ACCOUNT}:{USER}"]
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        assert (conv["thread"], conv["reply_to"]) == (f"thread:{chat}", str(chat))


async def test_duplicate_deliveries_are_stored_once(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        event = message_new(message(9))
        assert await post(svc, event) == (200, "text/plain; charset=utf-8", "ok")
        # VK's retry of the same event, and the same message in a new event.
        assert (await post(svc, event, {"X-Retry-Counter": "1"}))[2] == "ok"
        assert (await post(svc, event, {"X-Retry-Counter": "2"}))[2] == "ok"
        assert (await post(svc, message_new(message(9))))[2] == "ok"
        await svc.routed()
        assert await counts(svc) == (1, 1)
        assert await svc.store.leads.count_documents({}) == 1


async def test_echoes_and_service_messages_are_not_inbound(mongo_uri: str, db_name: str) -> None:
    ours = message(
        6, "Ответ оператора", from_id=-GROUP, out=1, random_id=123_456, admin_author_id=777
    )
    async with service(mongo_uri, db_name) as svc:
        await post(svc, message_new(message(5, "Исходный текст")))
        await svc.routed()
        for event in (
            envelope("message_reply", ours),
            message_new(ours),
            envelope(
                "message_edit", {**ours, "text": "Исправленный ответ", "update_time": 1_735_000_300}
            ),
            # Another community's bot writing in a chat the community is in.
            message_new(
                message(3, "Я бот другого сообщества", from_id=-1234, peer_id=2_000_000_009)
            ),
            message_new(
                message(
                    7,
                    "",
                    action={"type": "chat_invite_user", "member_id": -GROUP},
                    peer_id=2_000_000_009,
                )
            ),
        ):
            status, _, body = await post(svc, event)
            assert (status, body) == (200, "ok")
        await svc.routed()
        assert await counts(svc) == (1, 1)
        doc = await svc.store.messages.find_one({})
        assert doc is not None
        assert doc["text"] == "Исходный текст"
        assert "edits" not in doc


async def test_customer_edit_replaces_the_text(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post(svc, message_new(message(11, "Хочу диван")))
        await svc.routed()
        edited = {
            **message(11, "Хочу два дивана", attachments=[{"type": "photo", "photo": PHOTO}]),
            "update_time": 1_735_000_500,
        }
        event = envelope("message_edit", edited)
        assert await post(svc, event) == (200, "text/plain; charset=utf-8", "ok")
        assert (await post(svc, event, {"X-Retry-Counter": "1"}))[2] == "ok"
        doc = await svc.store.messages.find_one({})
        assert doc is not None
        assert doc["text"] == "Хочу два дивана"
        assert doc["attachments"][0]["kind"] == "image"
        assert [e["text"] for e in doc["edits"]] == ["Хочу диван"]
        assert doc["edited_at"].timestamp() == 1_735_000_500
        assert await counts(svc) == (1, 1)


async def test_allow_and_deny_update_reachability(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post(svc, message_new(message(1)))
        await svc.routed()
        assert (await post(svc, envelope("message_deny", {"user_id": USER})))[2] == "ok"
        contact = await svc.store.contacts.find_one({})
        assert contact is not None
        state = contact["reachable"][f"vk:{ACCOUNT}"]
        assert (state["reachable"], state["reason"]) == (False, "message_deny")
        allow = envelope("message_allow", {"user_id": USER, "key": "subscribe"})
        assert (await post(svc, allow))[2] == "ok"
        contact = await svc.store.contacts.find_one({})
        assert contact is not None
        state = contact["reachable"][f"vk:{ACCOUNT}"]
        assert (state["reachable"], state["reason"]) == (True, "message_allow")
        assert await counts(svc) == (1, 1)


async def test_other_events_are_acknowledged_and_ignored(mongo_uri: str, db_name: str) -> None:
    events = [
        envelope("message_typing_state", {"state": "typing", "from_id": USER, "to_id": -GROUP}),
        envelope(
            "message_event",
            {
                "user_id": USER,
                "peer_id": USER,
                "event_id": "a1b2",
                "payload": {"cmd": "price"},
                "conversation_message_id": 3,
            },
        ),
        envelope("group_join", {"user_id": USER, "join_type": "join"}),
        envelope("wall_post_new", {"id": 43, "owner_id": -GROUP, "text": "Новинка"}),
        envelope("message_read", {"from_id": USER, "peer_id": USER, "read_message_id": 1}),
        envelope("message_allow", {}),
        envelope("brand_new_event_type", {"whatever": True}),
        {**envelope("message_new", {}), "object": "not an object"},
    ]
    async with service(mongo_uri, db_name) as svc:
        for event in events:
            assert await post(svc, event) == (200, "text/plain; charset=utf-8", "ok"), event
        assert await counts(svc) == (0, 0)
        assert await svc.store.contacts.count_documents({}) == 0


# --- outbound -----------------------------------------------------------------------


async def test_reply_is_sent_with_messages_send(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, message_new(message(1)))
        await svc.routed()
        out = await queue_reply(svc)
        doc = await wait_state(svc, out["_id"], "sent")
        [req] = fake.requests
        assert (req.method, req.path, req.query) == ("POST", "/method/messages.send", {})
        assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert req.form == {
            "peer_id": str(USER),
            "random_id": str(random_id(out["_id"])),
            "message": "Добрый день! 45 000 ₽.",
            "v": "5.199",
            "access_token": TOKEN,
        }
        assert doc["provider_id"] == "501"
        assert doc["attempts"] == 1
        assert len(fake.delivered) == 1


async def test_rate_limited_first_attempt_is_retried(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, message_new(message(1)))
        await svc.routed()
        fake.fail_next(vk_error=6)
        out = await queue_reply(svc)
        doc = await wait_state(svc, out["_id"], "sent")
        first, second = fake.sends()
        assert first.form == second.form  # same random_id: VK cannot deliver it twice
        assert doc["provider_id"] == "501"
        assert doc["attempts"] == 2
        assert [h["state"] for h in doc["state_history"]] == ["queued", "sent"]
        assert len(fake.delivered) == 1


async def test_timeout_after_delivery_does_not_send_twice(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base, timeout_s="0.5") as svc,
    ):
        await post(svc, message_new(message(1)))
        await svc.routed()
        fake.fail_next(delay_s=1.0)  # VK delivers, but answers after our timeout
        out = await queue_reply(svc)
        doc = await wait_state(svc, out["_id"], "sent")
        sends = fake.sends()
        assert len(sends) >= 2
        assert {r.form["random_id"] for r in sends} == {str(random_id(out["_id"]))}
        assert len(fake.delivered) == 1
        assert doc["provider_id"] == fake.delivered[0]["id"]


async def test_permanent_error_fails_the_message(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, message_new(message(1)))
        await svc.routed()
        fake.closed_peers.add(USER)
        out = await queue_reply(svc)
        doc = await wait_state(svc, out["_id"], "failed")
        assert doc["error_code"] == "vk_901"
        assert "has not allowed messages from this community" in doc["error"]
        assert "Can't send messages for users without permission" in doc["error"]
        assert len(fake.sends()) == 1
        assert fake.delivered == []


async def test_read_receipt_moves_the_state_forward_only(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, message_new(message(1)))
        await svc.routed()
        out = await queue_reply(svc)
        await wait_state(svc, out["_id"], "sent")
        read = envelope(
            "message_read",
            {
                "from_id": USER,
                "peer_id": USER,
                "read_message_id": 501,
                "conversation_message_id": 2,
            },
        )
        assert (await post(svc, read))[2] == "ok"
        await wait_state(svc, out["_id"], "read")
        # A redelivered receipt, and one for another message, change nothing.
        assert (await post(svc, read, {"X-Retry-Counter": "1"}))[2] == "ok"
        other = envelope("message_read", {"from_id": USER, "peer_id": USER, "read_message_id": 500})
        assert (await post(svc, other))[2] == "ok"
        doc = await svc.store.messages.find_one({"_id": out["_id"]})
        assert doc is not None
        assert doc["state"] == "read"
        assert [h["state"] for h in doc["state_history"]] == ["queued", "sent", "read"]


async def test_reply_refused_at_once_when_vk_would_refuse(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        await post(svc, message_new(message(1)))
        await svc.routed()
        conv = await svc.store.conversations.find_one({})
        assert conv is not None
        with pytest.raises(ReplyError) as too_long:
            await reply(svc.store, svc.service.config, conv["_id"], "я" * 9001)
        assert too_long.value.code == "text_too_long"
        with pytest.raises(ReplyError) as upload:
            await reply(
                svc.store,
                svc.service.config,
                conv["_id"],
                "фото",
                attachments=[{"kind": "image", "url": "https://example.com/a.jpg"}],
            )
        assert upload.value.code == "unsupported_attachment"
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0


# --- send() against the fake, one error at a time -----------------------------------


def outbound(text: str = "Здравствуйте", **kw: Any) -> OutboundMessage:
    return OutboundMessage(
        id=kw.pop("id", "m-1"),
        channel="vk",
        account=ACCOUNT,
        recipient=str(USER),
        text=text,
        **kw,
    )


@pytest.mark.parametrize(
    ("failure", "retryable", "retry_after", "code", "phrase"),
    [
        ({"vk_error": 6}, True, 1.0, "vk_6", "Too many requests per second"),
        ({"vk_error": 9}, True, 60.0, "vk_9", "Flood control"),
        ({"vk_error": 10}, True, None, "vk_10", "Internal server error"),
        ({"vk_error": 901}, False, None, "vk_901", "has not allowed messages"),
        ({"vk_error": 902}, False, None, "vk_902", "privacy settings"),
        ({"vk_error": 5}, False, None, "vk_5", "rejected the community access token"),
        ({"vk_error": 914}, False, None, "vk_914", "VK error 914: Message is too long"),
        ({"http_status": 429, "retry_after": "7"}, True, 7.0, "http_429", "HTTP 429"),
        ({"http_status": 502}, True, None, "http_502", "HTTP 502"),
        ({"http_status": 403}, False, None, "http_403", "HTTP 403"),
    ],
)
async def test_send_maps_vk_errors(
    failure: dict[str, Any], retryable: bool, retry_after: float | None, code: str, phrase: str
) -> None:
    async with FakeVk(TOKEN).running() as fake:
        fake.fail_next(**failure)
        with pytest.raises(SendError) as err:
            await VkChannel().send(vk_account(api_base=fake.base), TOKEN, outbound())
        assert (err.value.retryable, err.value.retry_after, err.value.code) == (
            retryable,
            retry_after,
            code,
        )
        assert phrase in err.value.detail
        assert len(fake.requests) == 1  # vk_api's own retry loop for error 6 is off


async def test_send_network_errors_are_retryable() -> None:
    account = vk_account(api_base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SendError) as err:
        await VkChannel().send(account, TOKEN, outbound())
    assert (err.value.retryable, err.value.code) == (True, "network")
    with pytest.raises(SendError) as missing:
        await VkChannel().send(account, None, outbound())
    assert (missing.value.retryable, missing.value.code) == (False, "not_configured")


async def test_send_runs_off_the_event_loop_and_sends_attachments() -> None:
    async with FakeVk(TOKEN).running() as fake:
        fake.fail_next(delay_s=0.5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        msg = outbound(
            "",
            attachments=[
                Attachment(kind="image", file_id=f"photo-{GROUP}_456"),
                Attachment(kind="file", file_id="doc1_2_abc"),
            ],
        )
        result = await VkChannel().send(vk_account(api_base=fake.base), TOKEN, msg)
        task.cancel()
        assert ticks >= 10  # the loop kept running while vk_api waited for the answer
        assert result.provider_id == "501"
        assert fake.requests[0].form == {
            "peer_id": str(USER),
            "random_id": str(random_id("m-1")),
            "attachment": f"photo-{GROUP}_456,doc1_2_abc",
            "v": "5.199",
            "access_token": TOKEN,
        }


def test_check_outbound_and_random_id() -> None:
    vk, account = VkChannel(), vk_account()
    vk.check_outbound(account, outbound("x" * 9000))
    for msg, code in (
        (outbound("x" * 9001), "text_too_long"),
        (outbound("   "), "empty_message"),
        (outbound().model_copy(update={"recipient": "user-1"}), "invalid_recipient"),
        (outbound(attachments=[Attachment(file_id="../etc/passwd")]), "unsupported_attachment"),
        (outbound(attachments=[Attachment(file_id="photo1_2")] * 11), "too_many_attachments"),
    ):
        with pytest.raises(SendError) as err:
            vk.check_outbound(account, msg)
        assert (err.value.code, err.value.retryable) == (code, False)
    ids = {random_id(uuid.uuid4().hex) for _ in range(1000)}
    assert random_id("m-1") == random_id("m-1")
    assert len(ids) == 1000
    assert all(-(2**31) <= i < 2**31 and i != 0 for i in ids)
