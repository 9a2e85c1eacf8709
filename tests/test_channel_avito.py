"""The Avito Messenger channel end to end: webhook notifications over HTTP into the running
service (token in the URL path), replies through the outbox to a local fake of the Avito
API (OAuth2 client_credentials token, send, webhook subscription)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from channels import REGISTRY
from channels.avito import AvitoChannel
from channels.base import Attachment, OutboundMessage, SendError
from config.models import ChannelAccount
from inbox.replies import ReplyError, reply
from tests.fakes.avito import FakeAvito
from tests.helpers import free_port, wait_for
from tests.service import InProcess, config_with, in_process

ACCOUNT = "kitchen-avito"
CLIENT_ID = "Zq8hX2vR5mN1cT7bK4yW"
CLIENT_SECRET = "pL3sD9fG6hJ2kQ8wE5rT1yU4iO7aS0dF"
SECRET_ENV = "OMNIROUTE_TEST_AVITO_CLIENT_SECRET"
HOOK_TOKEN = "v6Jx0-Qm2Tb8YwLr4Nc7Pz1Kd9Sg3Hf5"
HOOK_TOKEN_ENV = "OMNIROUTE_TEST_AVITO_WEBHOOK_TOKEN"
USER_ID = 94235311  # our Avito account
CUSTOMER = 152903647
OTHER_CUSTOMER = 287110544
CHAT = "u2i-PJIkU4T7rAoOq3Ffz0Gsvg"
ITEM = 2816739540
TS = 1732000000
SENT_AT = datetime.fromtimestamp(TS, UTC)
_registered = REGISTRY["avito"]
assert isinstance(_registered, AvitoChannel)
AVITO: AvitoChannel = _registered  # the instance the running service uses


@pytest.fixture(autouse=True)
def avito_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(HOOK_TOKEN_ENV, HOOK_TOKEN)
    # No access token cached by an earlier test (a fake may reuse a port).
    monkeypatch.setattr(AVITO, "_tokens", {})


def avito_account(api_base: str, **settings: str | int | bool) -> ChannelAccount:
    values: dict[str, str | int | bool] = {
        "api_base": api_base,
        "client_id": CLIENT_ID,
        "user_id": USER_ID,
        "webhook_token_env": HOOK_TOKEN_ENV,
        "timeout_s": 5,
    }
    values.update(settings)
    return ChannelAccount(
        channel="avito", account=ACCOUNT, source="site", secret_env=SECRET_ENV, settings=values
    )


def fake_avito() -> FakeAvito:
    return FakeAvito(CLIENT_ID, CLIENT_SECRET, USER_ID)


@asynccontextmanager
async def running(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[InProcess, FakeAvito]]:
    async with (
        fake_avito() as fake,
        in_process(mongo_uri, db_name, config=config_with(avito_account(fake.base))) as svc,
    ):
        yield svc, fake


def hook(svc: InProcess, token: str | None = HOOK_TOKEN) -> str:
    base = f"{svc.client.base}/webhooks/avito/{ACCOUNT}"
    return f"{base}/{token}" if token is not None else base


def message(
    mid: str,
    kind: str = "text",
    content: dict[str, Any] | None = None,
    *,
    author: int = CUSTOMER,
    chat: str = CHAT,
    **extra: Any,
) -> dict[str, Any]:
    """A webhook notification of one message, as in the Messenger API spec."""
    value: dict[str, Any] = {
        "id": mid,
        "chat_id": chat,
        "user_id": USER_ID,
        "author_id": author,
        "created": TS,
        "published_at": "2024-11-19T07:06:40Z",
        "type": kind,
        "chat_type": "u2i",
        "item_id": ITEM,
        "content": content
        if content is not None
        else {"text": "Здравствуйте! Кухня ещё продаётся?"},
        **extra,
    }
    return {
        "id": f"evt-{mid}",
        "version": "v3.0.0",
        "timestamp": TS + 1,
        "payload": {"type": "message", "value": value},
    }


async def one(coll: Any, query: dict[str, Any]) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d async for d in coll.find(query)]
    assert len(docs) == 1, f"expected one document for {query}, found {len(docs)}: {docs}"
    return docs[0]


async def nothing_stored(svc: InProcess) -> None:
    assert await svc.store.intake.count_documents({}) == 0
    assert await svc.store.messages.count_documents({}) == 0
    assert await svc.store.leads.count_documents({}) == 0


async def customer_writes(svc: InProcess, fake: FakeAvito, mid: str = "a1f0c3") -> None:
    status, _ = await fake.deliver(hook(svc), message(mid))
    assert status == 200
    await svc.routed()


async def reply_and_wait(svc: InProcess, text: str, state: str = "sent") -> dict[str, Any]:
    conv = await one(svc.store.conversations, {"channel": "avito"})
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


# --- inbound ---------------------------------------------------------------------------


async def test_text_message_creates_a_lead_with_the_ad(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        payload = message("2e5a0b7c9d1f4e8a", content={"text": "Кухня ещё продаётся?"})
        status, body = await fake.deliver(hook(svc), payload)
        assert status == 200
        [mid] = orjson.loads(body)["accepted"]
        await svc.routed()
        lead = await one(svc.store.leads, {})
        assert lead["identities"] == [f"avito:{ACCOUNT}:{CUSTOMER}"]
        assert lead["meta"] == {"item_id": ITEM, "avito_chat_type": "u2i"}
        msg = await one(svc.store.messages, {"_id": mid})
        assert (msg["channel"], msg["account"], msg["provider_id"]) == (
            "avito",
            ACCOUNT,
            "2e5a0b7c9d1f4e8a",
        )
        assert msg["text"] == "Кухня ещё продаётся?"
        assert msg["sender"] == {"external_user_id": str(CUSTOMER)}
        assert msg["sent_at"] == SENT_AT
        assert msg["meta"]["item_id"] == ITEM
        assert msg["decision"]["rule"] == "new_lead"
        conv = await one(svc.store.conversations, {})
        assert (conv["reply_to"], conv["thread"]) == (CHAT, f"thread:{CHAT}")
        intake = await one(svc.store.intake, {})
        assert intake["raw"] == orjson.dumps(payload)
        # Later messages of the chat join the same conversation and lead.
        await fake.deliver(hook(svc), message("2e5a0b7c9d1f4e8b", content={"text": "Торг?"}))
        await svc.routed()
        assert await svc.store.conversations.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_content_kinds(mongo_uri: str, db_name: str) -> None:
    big = "https://90.img.avito.st/image/1/1.abc.1280x960.jpg"
    kinds: dict[str, tuple[str, dict[str, Any]]] = {
        "m-image": (
            "image",
            {
                "image": {
                    "sizes": {
                        "140x105": "https://90.img.avito.st/image/1/1.abc.140x105.jpg",
                        "1280x960": big,
                        "640x480": "https://90.img.avito.st/image/1/1.abc.640x480.jpg",
                    }
                }
            },
        ),
        "m-voice": ("voice", {"voice": {"voice_id": "b7f0e2d4-1c3a-4b5e-9f8d-7a6b5c4d3e2f"}}),
        "m-link": (
            "link",
            {
                "link": {
                    "text": "вот такую хочу",
                    "url": "https://www.avito.ru/moskva/mebel/kuhnya_2816739541",
                    "preview": {"title": "Кухня", "domain": "avito.ru"},
                }
            },
        ),
        "m-item": (
            "item",
            {
                "item": {
                    "title": "Кухонный гарнитур 3 м",
                    "price_string": "85 000 ₽",
                    "item_url": "https://www.avito.ru/moskva/mebel/kuhnya_2816739540",
                    "image_url": "https://90.img.avito.st/image/1/item.jpg",
                }
            },
        ),
        "m-location": (
            "location",
            {
                "location": {
                    "kind": "house",
                    "lat": 55.751244,
                    "lon": 37.618423,
                    "text": "Москва, Красная площадь, 1",
                    "title": "Красная площадь, 1",
                }
            },
        ),
        "m-file": (
            "file",
            {
                "file": {
                    "id": "f-77",
                    "name": "plan.pdf",
                    "size": 10240,
                    "url": "https://x/plan.pdf",
                }
            },
        ),
        "m-video": ("video", {"video": {"id": "v-9", "url": "https://x/clip.mp4"}}),
        "m-call": ("call", {"call": {"status": "missed", "target_user_id": USER_ID}}),
        "m-other": ("quick_reply", {"text": "Да, интересует"}),
    }
    async with running(mongo_uri, db_name) as (svc, fake):
        for mid, (kind, content) in kinds.items():
            status, _ = await fake.deliver(hook(svc), message(mid, kind, content))
            assert status == 200, kind
        await svc.routed()

        async def stored(mid: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
            m = await one(svc.store.messages, {"provider_id": mid})
            return m["text"], m["attachments"], m["meta"]

        assert await stored("m-image") == ("", [{"kind": "image", "url": big}], meta())
        assert await stored("m-voice") == (
            "",
            [{"kind": "voice", "file_id": "b7f0e2d4-1c3a-4b5e-9f8d-7a6b5c4d3e2f"}],
            meta(),
        )
        assert await stored("m-link") == (
            "вот такую хочу\nhttps://www.avito.ru/moskva/mebel/kuhnya_2816739541",
            [],
            meta(),
        )
        assert await stored("m-item") == (
            "Кухонный гарнитур 3 м — 85 000 ₽",
            [
                {
                    "kind": "item",
                    "url": "https://www.avito.ru/moskva/mebel/kuhnya_2816739540",
                    "name": "Кухонный гарнитур 3 м",
                }
            ],
            meta(),
        )
        assert await stored("m-location") == (
            "Москва, Красная площадь, 1",
            [{"kind": "location", "url": "geo:55.751244,37.618423", "name": "Красная площадь, 1"}],
            meta(),
        )
        assert await stored("m-file") == (
            "",
            [
                {
                    "kind": "file",
                    "url": "https://x/plan.pdf",
                    "file_id": "f-77",
                    "name": "plan.pdf",
                    "mime_type": "application/pdf",
                    "size": 10240,
                }
            ],
            meta(),
        )
        assert await stored("m-video") == (
            "",
            [{"kind": "video", "url": "https://x/clip.mp4", "file_id": "v-9"}],
            meta(),
        )
        assert await stored("m-call") == ("", [{"kind": "call"}], meta(avito_call_status="missed"))
        assert await stored("m-other") == ("Да, интересует", [], meta(avito_type="quick_reply"))
        # All of one chat: one conversation, one lead.
        assert await svc.store.conversations.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


def meta(**extra: Any) -> dict[str, Any]:
    return {**extra, "item_id": ITEM, "avito_chat_type": "u2i"}


async def test_missing_optional_fields(mongo_uri: str, db_name: str) -> None:
    bare = {
        "payload": {
            "type": "message",
            "value": {"id": "b-1", "chat_id": "u2u-Hx7Qw", "author_id": str(OTHER_CUSTOMER)},
        }
    }
    image_without_sizes = message("b-2", "image", {}, chat="u2u-Hx7Qw", author=OTHER_CUSTOMER)
    for key in ("item_id", "chat_type", "created", "published_at"):
        del image_without_sizes["payload"]["value"][key]
    async with running(mongo_uri, db_name) as (svc, fake):
        for payload in (bare, image_without_sizes):
            status, _ = await fake.deliver(hook(svc), payload)
            assert status == 200
        await svc.routed()
        first = await one(svc.store.messages, {"provider_id": "b-1"})
        assert (first["text"], first["attachments"], first["sent_at"]) == ("", [], None)
        assert first["meta"] == {}
        assert first["sender"] == {"external_user_id": str(OTHER_CUSTOMER)}
        second = await one(svc.store.messages, {"provider_id": "b-2"})
        assert second["attachments"] == [{"kind": "image"}]
        lead = await one(svc.store.leads, {})
        assert lead["meta"] == {}
        assert lead["identities"] == [f"avito:{ACCOUNT}:{OTHER_CUSTOMER}"]


async def test_own_echoes_system_messages_and_other_events_are_ignored(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        ignored: list[dict[str, Any] | bytes] = [
            b"{}",  # the probe Avito suggests: curl -d '{}'
            message("e-1", author=USER_ID, content={"text": "Добрый день, да"}),  # our echo
            message("e-2", "system", {"text": "Покупатель оформил доставку", "flow_id": "x"}),
            message("e-3", author=USER_ID, read=TS + 60),  # read receipt of a message not ours
            {"payload": {"type": "chat_blocked", "value": {"chat_id": CHAT}}},
            {"id": "x", "version": "v3.0.0", "timestamp": TS},
        ]
        for payload in ignored:
            status, body = await fake.deliver(hook(svc), payload)
            assert status == 200, payload
            assert orjson.loads(body)["accepted"] == []
        await nothing_stored(svc)
        assert await svc.store.contacts.count_documents({}) == 0


async def test_deleted_message_clears_its_text(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake, "d-1")
        deleted = message("d-1", "deleted", {})
        assert (await fake.deliver(hook(svc), deleted))[0] == 200
        msg = await one(svc.store.messages, {"provider_id": "d-1"})
        assert msg["text"] == ""
        assert [e["text"] for e in msg["edits"]] == ["Здравствуйте! Кухня ещё продаётся?"]
        # A deletion of a message we never had stores nothing.
        assert (await fake.deliver(hook(svc), message("d-2", "deleted", {})))[0] == 200
        assert await svc.store.messages.count_documents({}) == 1
        assert await svc.store.intake.count_documents({}) == 1


async def test_wrong_or_missing_token_is_forbidden(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = message("t-1")
    async with running(mongo_uri, db_name) as (svc, fake):
        statuses = [
            (await fake.deliver(hook(svc, token), payload))[0]
            for token in (
                None,
                "wrong-token-of-32-characters-xx",
                HOOK_TOKEN + "x",
                HOOK_TOKEN[:-1],
            )
        ]
        status, body = await fake.deliver(hook(svc, "токен"), b"{}")
        statuses.append(status)
        assert orjson.loads(body)["code"] == "forbidden"
        monkeypatch.setenv(HOOK_TOKEN_ENV, "short")  # too short to be unguessable
        statuses.append((await fake.deliver(hook(svc, "short"), payload))[0])
        monkeypatch.delenv(HOOK_TOKEN_ENV)  # no token configured: refuse everything
        statuses.append((await fake.deliver(hook(svc), payload))[0])
        statuses.append((await fake.deliver(hook(svc, None), payload))[0])
        assert statuses == [403] * 8
        await nothing_stored(svc)


async def test_unreadable_bodies_are_kept_unparsed(mongo_uri: str, db_name: str) -> None:
    """A delivery with the right URL token is never refused for its shape: what cannot be
    read is acknowledged and kept as unparsed; an id that cannot be used as it is (absent,
    over-long) is replaced by a hash, and the message is stored."""
    async with running(mongo_uri, db_name) as (svc, fake):
        not_json, body = await fake.deliver(hook(svc), b'{"payload": {"type": "message", ')
        assert orjson.loads(body)["accepted"] == []
        empty, _ = await fake.deliver(hook(svc), b"")
        array, _ = await fake.deliver(hook(svc), b"[]")
        no_value, _ = await fake.deliver(hook(svc), {"payload": {"type": "message", "value": 7}})
        no_chat = message("y")
        no_chat["payload"]["value"]["chat_id"] = None
        no_chat_status, _ = await fake.deliver(hook(svc), no_chat)
        no_id = message("x", content={"text": "no id"})
        del no_id["payload"]["value"]["id"]
        no_id_status, _ = await fake.deliver(hook(svc), no_id)
        huge_id, _ = await fake.deliver(hook(svc), message("z" * 600))
        statuses = [not_json, empty, array, no_value, no_chat_status, no_id_status, huge_id]
        assert statuses == [200] * 7
        assert await svc.store.intake.count_documents({"status": "unparsed"}) == 5
        await svc.routed()
        ids = sorted([d["provider_id"] async for d in svc.store.messages.find({})])
        assert len(ids) == 2
        assert ids[0].startswith("h")
        assert len(ids[1]) == 512
        assert ids[1].startswith("zzz")


async def test_redelivery_is_stored_once(mongo_uri: str, db_name: str) -> None:
    payload = message("r-1", content={"text": "Сколько стоит доставка?"})
    async with running(mongo_uri, db_name) as (svc, fake):
        answers = [await fake.deliver(hook(svc), payload) for _ in range(3)]
        assert [s for s, _ in answers] == [200] * 3
        bodies = [orjson.loads(b) for _, b in answers]
        assert len(bodies[0]["accepted"]) == 1
        assert [b["accepted"] for b in bodies[1:]] == [[], []]
        assert [len(b["duplicates"]) for b in bodies[1:]] == [1, 1]
        await svc.routed()
        assert await svc.store.intake.count_documents({}) == 1
        assert await svc.store.messages.count_documents({}) == 1
        assert await svc.store.leads.count_documents({}) == 1


async def test_logs_do_not_carry_the_webhook_token(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        with capture_logs() as events:
            assert (await fake.deliver(hook(svc), message("l-1")))[0] == 200
            assert (await fake.deliver(hook(svc, HOOK_TOKEN[:-1]), message("l-2")))[0] == 403
            await svc.routed()
    assert any(e["event"] == "http.request" for e in events)
    assert HOOK_TOKEN[:-1] not in repr(events)


# --- outbound --------------------------------------------------------------------------


async def test_reply_is_sent_and_read_receipts_move_it_forward(
    mongo_uri: str, db_name: str
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        doc = await reply_and_wait(svc, "Здравствуйте! Да, продаётся.")
        [token_req] = fake.token_requests()
        assert token_req.method == "POST"
        assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert token_req.form == {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        [req] = fake.sent()
        assert (req.method, req.path) == (
            "POST",
            f"/messenger/v1/accounts/{USER_ID}/chats/{CHAT}/messages",
        )
        assert req.headers["Authorization"].startswith("Bearer ")
        assert req.headers["Content-Type"] == "application/json"
        assert req.json == {"message": {"text": "Здравствуйте! Да, продаётся."}, "type": "text"}
        [provider_id] = fake.message_ids
        assert (doc["state"], doc["provider_id"], doc["attempts"]) == ("sent", provider_id, 1)

        # A second reply reuses the cached token.
        await reply_and_wait(svc, "Когда удобно посмотреть?")
        assert len(fake.token_requests()) == 1
        assert fake.sent()[1].headers["Authorization"] == req.headers["Authorization"]

        async def state() -> str:
            found = await svc.store.messages.find_one({"_id": doc["_id"]})
            assert found is not None
            return str(found["state"])

        # Avito echoes our own message: without "read" nothing changes; with it → read.
        echo = message(provider_id, author=USER_ID, content={"text": "…"})
        for read, expected in [(None, "sent"), (TS + 90, "read"), (None, "read"), (TS, "read")]:
            if read is not None:
                echo["payload"]["value"]["read"] = read
            else:
                echo["payload"]["value"].pop("read", None)
            assert (await fake.deliver(hook(svc), echo))[0] == 200
            assert await state() == expected
        final = await one(svc.store.messages, {"_id": doc["_id"]})
        assert [h["state"] for h in final["state_history"]] == ["queued", "sent", "read"]
        assert final["state_at"] == datetime.fromtimestamp(TS + 90, UTC)


async def test_rate_limited_send_is_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(429, retry_after="0")
        doc = await reply_and_wait(svc, "Минутку")
        first, second = fake.sent()
        assert first.body == second.body
        assert (doc["state"], doc["attempts"], doc["provider_id"]) == (
            "sent",
            2,
            fake.message_ids[0],
        )
        assert "error" not in doc


async def test_server_errors_are_retried(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(503, retry_after="0")
        fake.fail_next(500, endpoint="token", retry_after="0")
        doc = await reply_and_wait(svc, "Минутку")
        # token fails (500) → retry: token ok, send 503 → retry: send ok
        assert [r.path for r in fake.requests] == [
            "/token",
            "/token",
            f"/messenger/v1/accounts/{USER_ID}/chats/{CHAT}/messages",
            f"/messenger/v1/accounts/{USER_ID}/chats/{CHAT}/messages",
        ]
        assert (doc["state"], doc["attempts"]) == ("sent", 3)


async def test_permanent_error_fails_the_message(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        fake.fail_next(400, message="chat is blocked by user")
        doc = await reply_and_wait(svc, "Вы здесь?", state="failed")
        assert len(fake.sent()) == 1
        assert doc["error"] == "Avito HTTP 400: chat is blocked by user"
        assert doc["error_code"] == "avito_http_400"
        assert "provider_id" not in doc


async def test_reply_over_the_limit_is_refused_at_once(mongo_uri: str, db_name: str) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        await customer_writes(svc, fake)
        conv = await one(svc.store.conversations, {})
        with pytest.raises(ReplyError) as err:
            await reply(svc.store, svc.service.config, conv["_id"], "я" * 1001)
        assert err.value.code == "avito_text_too_long"
        assert "1000" in err.value.detail
        assert await svc.store.messages.count_documents({"direction": "out"}) == 0
        doc = await reply_and_wait(svc, "я" * 1000)
        assert fake.sent()[0].json["message"]["text"] == "я" * 1000
        assert doc["state"] == "sent"


def outbound(text: str = "Добрый день", recipient: str = CHAT, **extra: Any) -> OutboundMessage:
    return OutboundMessage(
        id="m-1", channel="avito", account=ACCOUNT, recipient=recipient, text=text, **extra
    )


async def test_check_outbound_refusals() -> None:
    acct = avito_account("http://127.0.0.1:9")
    image = Attachment(kind="image", url="https://example.com/y.jpg")
    cases = [
        (avito_account("http://x", client_id=""), outbound(), "avito_not_configured"),
        (avito_account("http://x", user_id=""), outbound(), "avito_not_configured"),
        (acct, outbound(recipient=""), "avito_no_recipient"),
        (acct, outbound(attachments=[image]), "avito_attachments_unsupported"),
        (acct, outbound("  \n "), "avito_empty_text"),
        (acct, outbound("x" * 1001), "avito_text_too_long"),
    ]
    for account, msg, code in cases:
        with pytest.raises(SendError) as err:
            AVITO.check_outbound(account, msg)
        assert (err.value.code, err.value.retryable) == (code, False)
    AVITO.check_outbound(acct, outbound("😀" * 1000))


async def test_token_is_cached_and_refreshed_before_expiry() -> None:
    now = [1000.0]
    channel = AvitoChannel(clock=lambda: now[0])
    async with fake_avito() as fake:
        fake.expires_in = 3600
        acct = avito_account(fake.base)
        await channel.send(acct, CLIENT_SECRET, outbound())
        now[0] += 3600 - 301  # five minutes and a second before expiry: still cached
        await channel.send(acct, CLIENT_SECRET, outbound())
        assert len(fake.token_requests()) == 1
        now[0] += 2  # inside the last five minutes: fetched again
        await channel.send(acct, CLIENT_SECRET, outbound())
        assert len(fake.token_requests()) == 2
        auth = [r.headers["Authorization"] for r in fake.sent()]
        assert auth[0] == auth[1] != auth[2]


async def test_rejected_token_is_refreshed_once() -> None:
    channel = AvitoChannel()
    async with fake_avito() as fake:
        acct = avito_account(fake.base)
        await channel.send(acct, CLIENT_SECRET, outbound())
        fake.revoke_tokens()  # e.g. another client fetched a token for the same app
        result = await channel.send(acct, CLIENT_SECRET, outbound())
        assert result.provider_id == fake.message_ids[-1]
        statuses = [r.path.rsplit("/", 1)[-1] for r in fake.requests]
        assert statuses == ["token", "messages", "messages", "token", "messages"]
        # Still refused with a fresh token (e.g. no Messenger subscription): fails for good.
        fake.fail_next(403, message="no access to messenger", times=2)
        with pytest.raises(SendError) as err:
            await channel.send(acct, CLIENT_SECRET, outbound())
        assert (err.value.code, err.value.retryable) == ("avito_http_403", False)
        assert err.value.detail == "Avito HTTP 403: no access to messenger"
        assert len(fake.token_requests()) == 3
        assert len(fake.sent()) == 5


async def test_send_error_mapping() -> None:
    channel = AvitoChannel()
    async with fake_avito() as fake:
        acct = avito_account(fake.base, timeout_s="0.3")

        async def error(secret: str | None = CLIENT_SECRET, account: Any = acct) -> SendError:
            with pytest.raises(SendError) as err:
                await channel.send(account, secret, outbound())
            return err.value

        wrong = await error("not-the-secret")
        assert (wrong.code, wrong.retryable) == ("avito_token_refused", False)
        assert "invalid client id or secret" in wrong.detail
        assert (await error(None)).code == "avito_no_client_secret"
        fake.fail_next(400, endpoint="token", message="client is blocked")
        blocked = await error()
        assert (blocked.code, blocked.retryable) == ("avito_token_http_400", False)
        assert blocked.detail == "Avito token HTTP 400: invalid_request: client is blocked"
        fake.fail_next(503, endpoint="token")
        assert ((e := await error()).code, e.retryable) == ("avito_token_http_503", True)
        fake.fail_next(500, delay_s=1.0)
        timeout = await error()
        assert (timeout.code, timeout.retryable) == ("avito_timeout", True)
        fake.fail_next(429, retry_after="7")
        limited = await error()
        assert (limited.code, limited.retryable, limited.retry_after) == (
            "avito_http_429",
            True,
            7.0,
        )
        fake.fail_next(429)
        assert ((e := await error()).retryable, e.retry_after) == (True, None)
        fake.fail_next(502)
        assert ((e := await error()).code, e.retryable) == ("avito_http_502", True)
        fake.fail_next(404, message="chat not found")
        missing = await error()
        assert (missing.code, missing.retryable, missing.detail) == (
            "avito_http_404",
            False,
            "Avito HTTP 404: chat not found",
        )
        assert (await error(account=avito_account(fake.base, timeout_s="0"))).code == (
            "avito_bad_setting"
        )
        ok = await channel.send(acct, CLIENT_SECRET, outbound())
        assert ok.provider_id == fake.message_ids[-1]
    closed = avito_account(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SendError) as down:
        await AvitoChannel().send(closed, CLIENT_SECRET, outbound())
    assert (down.value.code, down.value.retryable) == ("avito_unreachable", True)


# --- webhook registration ---------------------------------------------------------------


async def test_register_webhook(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(mongo_uri, db_name) as (svc, fake):
        acct = svc.service.config.account("avito", ACCOUNT)
        assert acct is not None
        url = await AVITO.register_webhook(acct, CLIENT_SECRET, svc.client.base + "/")
        assert url == hook(svc)
        token_req, req = fake.requests
        assert token_req.path == "/token"
        assert (req.method, req.path) == ("POST", "/messenger/v3/webhook")
        assert req.headers["Authorization"].startswith("Bearer ")
        assert req.headers["Content-Type"] == "application/json"
        assert req.json == {"url": url}
        # Avito checked the URL with {} and we answered 200 in time.
        assert fake.webhook_checks == [(url, 200)]
        assert fake.subscriptions == [url]
        await nothing_stored(svc)

        with pytest.raises(SendError) as refused:
            await AVITO.register_webhook(acct, CLIENT_SECRET, svc.client.base + "/elsewhere")
        assert (refused.value.code, refused.value.retryable) == ("avito_http_400", False)
        assert "answered 404" in refused.value.detail
        monkeypatch.setenv(HOOK_TOKEN_ENV, "short")
        with pytest.raises(SendError) as no_token:
            await AVITO.register_webhook(acct, CLIENT_SECRET, svc.client.base)
        assert no_token.value.code == "avito_no_webhook_token"
        assert len(fake.subscriptions) == 1
