"""Instagram Direct and comments over real HTTP: both signing secrets, DMs with story
mentions and replies, unsends, unsupported messages, seen receipts naming their message,
dashboard test notifications, comments and live comments in their per-media
conversation, and sends, public / private comment replies and moderation for both login
flavours against a local Graph fake (tests/fakes/graph.py). Payloads follow
CHANNEL_PROTOCOLS.md §10 and §11.2.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from channels.base import OutboundMessage, SendError
from channels.instagram import InstagramChannel
from config.models import AppConfig, ChannelAccount
from tests.fakes.graph import FakeGraph
from tests.meta_support import (
    ENV,
    IG_APP_SECRET,
    SECRET_SETTINGS,
    TOKEN,
    handshake_checks,
    one,
    post,
    reply_and_wait,
    signature_checks,
)
from tests.service import InProcess, config_with, in_process

ACCOUNT = "shop"
IGID = "17841400000000001"  # 17 digits: above 2^53, must stay a string
IGSID = "6022387716131219"
PATH = f"/webhooks/instagram/{ACCOUNT}"
CHANNEL = InstagramChannel()
Json = dict[str, Any]


def ig_account(api_base: str, **settings: str | int | float | bool) -> ChannelAccount:
    return ChannelAccount(
        channel="instagram",
        account=ACCOUNT,
        source="messengers",
        secret_env="OMNIROUTE_TEST_META_TOKEN",
        settings={
            **SECRET_SETTINGS,
            "instagram_app_secret_env": "OMNIROUTE_TEST_IG_APP_SECRET",
            "ig_user_id": IGID,
            "api_base": api_base,
            **settings,
        },
    )


def ig_config(api_base: str) -> AppConfig:
    return config_with(ig_account(api_base))


@pytest.fixture(autouse=True)
def meta_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeGraph]:
    async with FakeGraph(TOKEN) as f:
        yield f


@asynccontextmanager
async def service(mongo_uri: str, db_name: str, fake: FakeGraph) -> AsyncIterator[InProcess]:
    async with in_process(mongo_uri, db_name, config=ig_config(fake.base)) as svc:
        yield svc


def ms(ago_s: float = 60) -> int:
    return int((time.time() - ago_s) * 1000)


def item(kind: str, content: Any, who: str = IGSID, ago_s: float = 60) -> Json:
    return {
        "sender": {"id": who},
        "recipient": {"id": IGID},
        "timestamp": ms(ago_s),
        kind: content,
    }


def dm(mid: str, **content: Any) -> Json:
    ago = content.pop("ago_s", 60)
    return item("message", {"mid": mid, **content}, ago_s=ago)


def instagram(messaging: list[Json] | None = None, changes: list[Json] | None = None) -> Json:
    e: Json = {"id": IGID, "time": ms(0)}
    if messaging is not None:
        e["messaging"] = messaging
    if changes is not None:
        e["changes"] = changes
    return {"object": "instagram", "entry": [e]}


def ig_comment(cid: str, media: str, who: str = "848067418322071", **extra: Any) -> Json:
    return {
        "id": cid,
        "text": "Цена?",
        "from": {"id": who, "username": "irina.k"},
        "media": {"id": media, "media_product_type": "FEED"},
        **extra,
    }


async def inbound(svc: InProcess, mid: str) -> Json:
    return await one(svc.store.messages, {"provider_id": mid, "direction": "in"})


async def test_handshake_and_either_signing_secret(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        await handshake_checks(svc, PATH)
        await signature_checks(svc, PATH, instagram([dm("aWdf_sig", text="x")]))
        # Instagram Login webhooks may be signed with the Instagram app secret instead.
        payload = instagram([dm("aWdf_ig_secret", text="Есть размер M?")])
        code, body = await post(svc, PATH, payload, secret=IG_APP_SECRET)
        assert (code, len(body["accepted"])) == (200, 1)


async def test_direct_messages_stories_unsends_and_test_notifications(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    story = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17900011122233344"
    payload = instagram(
        [
            dm("aWdf_1", text="Есть размер M?", ago_s=90),
            dm("aWdf_echo", text="Да", is_echo=True),
            dm("aWdf_2", attachments=[{"type": "story_mention", "payload": {"url": story}}]),
            dm(
                "aWdf_3",
                text="Красивое!",
                reply_to={"story": {"url": story, "id": "17900011122233344"}},
            ),
            dm("aWdf_4", is_unsupported=True),
            dm("aWdf_1", is_deleted=True, ago_s=10),
        ]
    )
    test_notice = {
        "object": "instagram",
        "entry": [
            {
                "id": "0",
                "time": ms(0),
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "sender": {"id": "12334"},
                            "recipient": {"id": "23245"},
                            "timestamp": str(int(time.time())),
                            "message": {"mid": "random_mid", "text": "random_text"},
                        },
                    }
                ],
            }
        ],
    }
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, PATH, payload)
        assert (code, len(body["accepted"])) == (200, 4)
        assert (await post(svc, PATH, test_notice))[0] == 200
        await svc.routed()
        assert await svc.store.messages.count_documents({"provider_id": "aWdf_echo"}) == 0
        first = await inbound(svc, "aWdf_1")
        assert (first["deleted"], first["text"]) == (True, "Есть размер M?")
        mention = await inbound(svc, "aWdf_2")
        assert mention["meta"]["story_mention_url"] == story
        assert mention["attachments"] == [{"kind": "story_mention", "url": story}]
        assert mention["text"] == "[mentioned you in their story]"
        reply_ = await inbound(svc, "aWdf_3")
        assert (reply_["meta"]["story_url"], reply_["meta"]["story_id"]) == (
            story,
            "17900011122233344",
        )
        assert "cannot show" in (await inbound(svc, "aWdf_4"))["text"]
        lead = await one(svc.store.leads, {"identities": f"instagram:{ACCOUNT}:{IGSID}"})
        assert await svc.store.messages.count_documents({"target.id": lead["_id"]}) == 4
        assert (await inbound(svc, "random_mid"))["text"] == "random_text"


async def test_comments_and_live_comments_and_a_seen_reply(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    fake.reset()
    media = "18050310947722369"
    changes = [
        {"field": "comments", "value": ig_comment("17867301270523379", media)},
        {
            "field": "comments",
            "value": ig_comment("17867301270523380", media, parent_id="17867301270523379"),
        },
        {"field": "comments", "value": ig_comment("17867301270523381", media, who=IGID)},  # ours
        {"field": "live_comments", "value": ig_comment("17867301270523390", "18000000000000001")},
    ]
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, PATH, instagram(changes=changes))
        assert (code, len(body["accepted"])) == (200, 3)
        await svc.routed()
        top = await one(svc.store.intake, {"provider_id": "17867301270523379"})
        answer = await one(svc.store.intake, {"provider_id": "17867301270523380"})
        assert top["message"]["kind"] == "comment"
        assert top["message"]["parent_id"] is None
        assert answer["message"]["parent_id"] == "17867301270523379"
        assert answer["message"]["thread_id"] == f"comment:{media}:848067418322071"
        assert answer["message"]["post"]["id"] == media
        a, b = await inbound(svc, "17867301270523379"), await inbound(svc, "17867301270523380")
        live = await inbound(svc, "17867301270523390")
        assert a["conversation_id"] == b["conversation_id"] != live["conversation_id"]
        assert live["meta"]["live"] is True
        # A DM, our reply, and the customer's seen naming our message.
        assert (await post(svc, PATH, instagram([dm("aWdf_dm", text="Привет", ago_s=5)])))[0] == 200
        await svc.routed()
        conv = await one(
            svc.store.conversations, {"reply_to": IGSID, "_id": {"$ne": a["conversation_id"]}}
        )
        out = await reply_and_wait(svc, conv["_id"], "Здравствуйте!", "sent")
        [req] = fake.requests
        assert (req.path, req.json()) == (
            "/v25.0/me/messages",
            {
                "recipient": {"id": IGSID},
                "messaging_type": "RESPONSE",
                "message": {"text": "Здравствуйте!"},
            },
        )
        seen = item("read", {"mid": out["provider_id"]}, ago_s=0)
        assert (await post(svc, PATH, instagram([seen])))[0] == 200
        doc = await svc.store.messages.find_one({"_id": out["_id"]})
        assert doc is not None
        assert doc["state"] == "read"


def outbound(**kw: Any) -> OutboundMessage:
    base: Json = {
        "id": "out-1",
        "channel": "instagram",
        "account": ACCOUNT,
        "recipient": IGSID,
        "text": "Здравствуйте!",
        "last_inbound_at": datetime.now(UTC) - timedelta(minutes=5),
    }
    return OutboundMessage(**{**base, **kw})


async def test_instagram_login_sends_replies_and_moderation(fake: FakeGraph) -> None:
    fake.reset()
    account = ig_account(fake.base, login="instagram")
    cid = "17867301270523379"
    await CHANNEL.send(account, TOKEN, outbound())
    await CHANNEL.send(
        account, TOKEN, outbound(reply_mode="public", comment_id=cid, text="Да, есть")
    )
    await CHANNEL.send(
        account, TOKEN, outbound(reply_mode="private", comment_id=cid, text="Написали в директ")
    )
    for action in ("hide", "unhide", "delete"):
        await CHANNEL.moderate(account, TOKEN, cid, action)  # type: ignore[arg-type]
    got = [(r.method, r.path, r.query, r.json()) for r in fake.requests]
    assert got == [
        (
            "POST",
            f"/v25.0/{IGID}/messages",
            {},
            {
                "recipient": {"id": IGSID},
                "messaging_type": "RESPONSE",
                "message": {"text": "Здравствуйте!"},
            },
        ),
        ("POST", f"/v25.0/{cid}/replies", {"message": "Да, есть"}, None),
        (
            "POST",
            f"/v25.0/{IGID}/messages",
            {},
            {
                "recipient": {"comment_id": cid},
                "messaging_type": "RESPONSE",
                "message": {"text": "Написали в директ"},
            },
        ),
        ("POST", f"/v25.0/{cid}", {"hide": "true"}, None),
        ("POST", f"/v25.0/{cid}", {"hide": "false"}, None),
        ("DELETE", f"/v25.0/{cid}", {}, None),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    for bad, code in (
        (outbound(text="я" * 1001), "text_too_long"),
        (outbound(reply_mode="public", comment_id=None), "no_comment"),
        (outbound(last_inbound_at=datetime.now(UTC) - timedelta(days=2)), "window_closed"),
    ):
        with pytest.raises(SendError) as err:
            CHANNEL.check_outbound(account, bad)
        assert err.value.code == code
