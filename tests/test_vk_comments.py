"""VK comments end to end: Callback API comment events over real HTTP into the running
service, answers and moderation through the operator API to a local fake of the VK API
(tests/fakes/vk.py) that records the exact requests."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from channels.base import OutboundMessage
from channels.vk import VkChannel
from crm_store import tokens
from tests.fakes.vk import FakeVk
from tests.service import InProcess
from tests.test_channel_vk import (
    ACCOUNT,
    CALLBACK_ENV,
    CALLBACK_SECRET,
    GROUP,
    TOKEN,
    TOKEN_ENV,
    USER,
    envelope,
    message,
    message_new,
    post,
    service,
    vk_account,
    wait_state,
)

ADMIN = "sergey.volkov"
OWNER = -GROUP
POST = 4410
WALL = f"wall{OWNER}_{POST}"
THREAD = f"thread:comment:{WALL}:{USER}"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(CALLBACK_ENV, CALLBACK_SECRET)


def comment(cid: int, text: str = "Когда будет в наличии?", **extra: Any) -> dict[str, Any]:
    """A ``wall_wall_comment`` as the Callback API sends it (CHANNEL_PROTOCOLS.md §11.3)."""
    return {
        "id": cid,
        "from_id": USER,
        "post_id": POST,
        "owner_id": OWNER,
        "post_owner_id": OWNER,
        "parents_stack": [5800],
        "reply_to_comment": 5800,
        "reply_to_user": 598_877_665,
        "date": 1_718_000_200 + cid,
        "text": text,
        "attachments": [{"type": "photo", "photo": {"id": 457_239_017, "owner_id": USER}}],
        "thread": {"count": 0},
        **extra,
    }


def key(cid: int, kind: str = "wall", owner: int = OWNER) -> str:
    return f"{kind}_comment{owner}_{cid}"


async def api(
    svc: InProcess, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    token, _ = await tokens.issue(svc.store, ADMIN)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = orjson.dumps(body) if body is not None else None
    url = f"{svc.client.base}{path}"
    async with svc.client.http.request(method, url, data=data, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def stored(svc: InProcess, provider_id: str) -> dict[str, Any]:
    doc = await svc.store.messages.find_one({"provider_id": provider_id})
    assert doc is not None, provider_id
    return doc


async def event_types(svc: InProcess) -> list[str]:
    return [e["type"] async for e in svc.store.events.find({}, sort=[("seq", 1)])]


# --- inbound ------------------------------------------------------------------------


async def test_new_edit_delete_restore(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        assert await post(svc, envelope("wall_reply_new", comment(5821))) == (
            200,
            "text/plain; charset=utf-8",
            "ok",
        )
        await svc.routed()
        doc = await stored(svc, key(5821))
        assert (doc["kind"], doc["text"], doc["parent_id"]) == (
            "comment",
            "Когда будет в наличии?",
            key(5800),
        )
        assert doc["post"] == {"id": WALL, "url": f"https://vk.com/{WALL}?reply=5821"}
        assert doc["sender"] == {"external_user_id": str(USER)}
        assert doc["attachments"] == [{"kind": "image", "file_id": f"photo{USER}_457239017"}]
        assert doc["meta"] == {
            "vk_object": "wall",
            "vk_owner_id": OWNER,
            "vk_comment_id": 5821,
            "vk_object_id": POST,
            "vk_reply_to_comment": 5800,
        }
        conv = await svc.store.conversations.find_one({"_id": doc["conversation_id"]})
        assert conv is not None
        assert (conv["thread"], conv["reply_to"]) == (THREAD, str(USER))
        # Comments create leads by default (the seed treats them as requests).
        assert doc["decision"]["rule"] == "new_lead"
        assert conv["target"]["kind"] == "lead"

        edited = comment(5821, "Когда будет в наличии? Нужен серый")
        assert (await post(svc, envelope("wall_reply_edit", edited)))[2] == "ok"
        doc = await stored(svc, key(5821))
        assert doc["text"] == "Когда будет в наличии? Нужен серый"
        assert [e["text"] for e in doc["edits"]] == ["Когда будет в наличии?"]

        # The schema calls the deleter user_id, the SDKs deleter_id: either is read.
        gone = {"owner_id": OWNER, "id": 5821, "deleter_id": USER, "post_id": POST}
        assert (await post(svc, envelope("wall_reply_delete", gone)))[2] == "ok"
        doc = await stored(svc, key(5821))
        assert doc["deleted"] is True
        assert doc["text"] == "Когда будет в наличии? Нужен серый"  # kept for the operator

        assert (await post(svc, envelope("wall_reply_restore", edited)))[2] == "ok"
        doc = await stored(svc, key(5821))
        assert doc["deleted"] is False
        assert "deleted_at" not in doc
        assert doc["restored_at"] is not None
        assert len(doc["edits"]) == 1  # the text came back unchanged: no new history
        types = await event_types(svc)
        assert types.count("message.deleted") == 1
        assert types.count("message.restored") == 1
        assert types.index("message.deleted") < types.index("message.restored")
        # The same restore again (VK's redelivery) changes nothing.
        await post(svc, envelope("wall_reply_restore", edited))
        assert (await event_types(svc)).count("message.restored") == 1
        assert await svc.store.messages.count_documents({}) == 1
        # A restore of a comment never stored (deleted before we were connected) stores it.
        await post(svc, envelope("wall_reply_restore", comment(4000, "Старый вопрос")))
        await svc.routed()
        old = await stored(svc, key(4000))
        assert (old["text"], old.get("deleted")) == ("Старый вопрос", None)
        assert old["conversation_id"] == doc["conversation_id"]


async def test_echoes_and_other_communities_are_not_inbound(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        ours = comment(5900, "Будет через неделю!", from_id=OWNER)  # our public reply
        other = comment(5901, "Реклама", from_id=-999)
        for event in (envelope("wall_reply_new", ours), envelope("wall_reply_new", other)):
            assert (await post(svc, event))[:3:2] == (200, "ok")
        assert await svc.store.intake.count_documents({}) == 0
        assert await svc.store.messages.count_documents({}) == 0


async def test_deletion_overtaking_its_comment(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        gone = {"owner_id": OWNER, "id": 5830, "user_id": USER, "post_id": POST}
        await post(svc, envelope("wall_reply_delete", gone))
        assert await svc.store.messages.count_documents({}) == 0
        await post(svc, envelope("wall_reply_new", comment(5830, "Передумал")))
        await svc.routed()
        doc = await stored(svc, key(5830))
        assert (doc["deleted"], doc["text"]) == (True, "Передумал")
        assert (await event_types(svc)).count("message.deleted") == 1


async def test_photo_and_market_comments(mongo_uri: str, db_name: str) -> None:
    async with service(mongo_uri, db_name) as svc:
        photo = {
            **comment(77, "Это какой цвет?"),
            "photo_id": 457_239_100,
            "photo_owner_id": OWNER,
        }
        del photo["post_id"], photo["post_owner_id"], photo["reply_to_comment"]
        market = {**comment(78, "Есть 160 см?"), "item_id": 9131, "market_owner_id": OWNER}
        del market["post_id"], market["post_owner_id"]
        await post(svc, envelope("photo_comment_new", photo))
        await post(svc, envelope("market_comment_new", market))
        await svc.routed()
        p = await stored(svc, key(77, "photo"))
        assert p["post"] == {
            "id": f"photo{OWNER}_457239100",
            "url": f"https://vk.com/photo{OWNER}_457239100",
        }
        assert p["parent_id"] is None
        m = await stored(svc, key(78, "market"))
        assert m["post"]["url"] == f"https://vk.com/product{OWNER}_9131"
        # Two posts: two conversations, but one commenter → one contact, one lead.
        assert p["conversation_id"] != m["conversation_id"]
        assert p["contact_id"] == m["contact_id"]
        assert await svc.store.leads.count_documents({}) == 1
        gone = {"owner_id": OWNER, "id": 77, "deleter_id": USER, "photo_id": 457_239_100}
        await post(svc, envelope("photo_comment_delete", gone))
        assert (await stored(svc, key(77, "photo")))["deleted"] is True


# --- answers and moderation -----------------------------------------------------------


async def test_public_and_private_answers(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, envelope("wall_reply_new", comment(5821)))
        await post(svc, envelope("wall_reply_new", comment(5822, "И цена?", parents_stack=[])))
        await svc.routed()
        first = await stored(svc, key(5821))
        conv_id = first["conversation_id"]
        path = f"/api/v1/conversations/{conv_id}/messages"

        # Default: public, under the latest comment.
        status, body = await api(svc, "POST", path, {"text": "Будет 15 июня."})
        assert status == 201, body
        sent = await wait_state(svc, body["id"], "sent")
        [req] = fake.calls("wall.createComment")
        assert req.form == {
            "owner_id": str(OWNER),
            "post_id": str(POST),
            "reply_to_comment": "5822",
            "from_group": str(GROUP),
            "guid": body["id"],
            "message": "Будет 15 июня.",
            "v": "5.199",
            "access_token": TOKEN,
        }
        assert sent["provider_id"] == key(7001)
        assert (sent["reply_mode"], sent["comment_id"]) == ("public", key(5822))

        # Under a named comment.
        status, body = await api(
            svc, "POST", path, {"text": "Серый есть.", "comment_id": first["_id"]}
        )
        assert status == 201, body
        await wait_state(svc, body["id"], "sent")
        assert fake.calls("wall.createComment")[1].form["reply_to_comment"] == "5821"

        # Privately: a VK message to the commenter.
        status, body = await api(svc, "POST", path, {"text": "Пишу в личку", "mode": "private"})
        assert status == 201, body
        await wait_state(svc, body["id"], "sent")
        [dm] = fake.sends()
        assert (dm.form["peer_id"], dm.form["message"]) == (str(USER), "Пишу в личку")
        assert "reply_to_comment" not in dm.form

        # Our public reply comes back as a comment event from the community: an echo.
        echo = comment(7001, "Будет 15 июня.", from_id=OWNER, reply_to_comment=5822)
        await post(svc, envelope("wall_reply_new", echo))
        assert await svc.store.messages.count_documents({"direction": "in"}) == 2

        # Refusals: a comment of another conversation; mode on a direct conversation.
        await post(svc, message_new(message(1)))
        await svc.routed()
        direct = await svc.store.conversations.find_one({"thread": {"$not": {"$regex": "^thr"}}})
        assert direct is not None
        status, body = await api(svc, "POST", path, {"text": "x", "comment_id": "nope"})
        assert (status, body["code"]) == (404, "comment_not_found")
        direct_path = f"/api/v1/conversations/{direct['_id']}/messages"
        status, body = await api(svc, "POST", direct_path, {"text": "x", "mode": "public"})
        assert (status, body["code"]) == (422, "not_a_comment_conversation")
        assert len(fake.calls("wall.createComment")) == 2


async def test_comments_closed_fails_with_the_reason(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        fake.closed_posts.add(f"{OWNER}_{POST}")
        await post(svc, envelope("wall_reply_new", comment(5821)))
        await svc.routed()
        conv_id = (await stored(svc, key(5821)))["conversation_id"]
        status, body = await api(
            svc, "POST", f"/api/v1/conversations/{conv_id}/messages", {"text": "Ответ"}
        )
        assert status == 201
        failed = await wait_state(svc, body["id"], "failed")
        assert failed["error_code"] == "vk_213"
        assert "comments on this post are closed" in failed["error"]
        assert len(fake.calls("wall.createComment")) == 1  # not retried


async def test_moderation(mongo_uri: str, db_name: str) -> None:
    async with (
        FakeVk(TOKEN).running() as fake,
        service(mongo_uri, db_name, api_base=fake.base) as svc,
    ):
        await post(svc, envelope("wall_reply_new", comment(5821)))
        await svc.routed()
        doc = await stored(svc, key(5821))
        base = f"/api/v1/conversations/{doc['conversation_id']}/comments"
        status, thread = await api(svc, "GET", base)
        assert status == 200
        assert thread["post"] == {
            "id": WALL,
            "url": f"https://vk.com/{WALL}?reply=5821",
            "text": None,
        }
        assert [c["message_id"] for c in thread["comments"]] == [doc["_id"]]
        assert thread["moderation"] == ["delete"]

        status, body = await api(svc, "POST", f"{base}/{doc['_id']}/moderate", {"action": "hide"})
        assert (status, body["code"]) == (422, "moderation_not_supported")
        assert "VK has no hidden comments" in body["detail"]
        assert fake.requests == []

        # The provider refuses (no 'wall' right), then is busy: nothing recorded.
        fake.fail_next(vk_error=15)
        status, body = await api(svc, "POST", f"{base}/{doc['_id']}/moderate", {"action": "delete"})
        assert (status, body["code"]) == (409, "provider_refused")
        assert "VK denied access" in body["detail"]
        fake.fail_next(vk_error=6)
        status, body = await api(svc, "POST", f"{base}/{doc['_id']}/moderate", {"action": "delete"})
        assert (status, body["code"]) == (503, "provider_unavailable")
        assert (await stored(svc, key(5821))).get("deleted") is None
        fake.requests.clear()

        status, body = await api(svc, "POST", f"{base}/{doc['_id']}/moderate", {"action": "delete"})
        assert status == 200, body
        assert (body["deleted"], body["moderation"]["action"]) == (True, "delete")
        [req] = fake.calls("wall.deleteComment")
        assert req.form == {
            "owner_id": str(OWNER),
            "comment_id": "5821",
            "v": "5.199",
            "access_token": TOKEN,
        }
        ev = await svc.store.events.find_one({"type": "comment.moderated"})
        assert ev is not None
        assert ev["data"] == {
            "channel": "vk",
            "action": "delete",
            "comment_id": key(5821),
            "by": ADMIN,
        }
        assert ev["refs"]["message_id"] == doc["_id"]
        # VK then reports the deletion (by the community): nothing changes twice.
        gone = {"owner_id": OWNER, "id": 5821, "deleter_id": OWNER, "post_id": POST}
        await post(svc, envelope("wall_reply_delete", gone))
        status, body = await api(svc, "POST", f"{base}/{doc['_id']}/moderate", {"action": "delete"})
        assert (status, body["code"]) == (409, "comment_deleted")
        status, body = await api(svc, "POST", f"{base}/other/moderate", {"action": "delete"})
        assert (status, body["code"]) == (404, "comment_not_found")
        assert len(fake.calls("wall.deleteComment")) == 1


async def test_send_builds_each_objects_create_and_delete_call() -> None:
    """photo/video/market comments are answered and deleted with their own methods."""
    async with FakeVk(TOKEN).running() as fake:
        account = vk_account(ACCOUNT, api_base=fake.base)
        channel = VkChannel()
        for kind, section, field in (
            ("photo", "photos", "photo_id"),
            ("video", "video", "video_id"),
            ("market", "market", "item_id"),
        ):
            msg = OutboundMessage(
                id=f"out-{kind}",
                channel="vk",
                account=ACCOUNT,
                recipient=str(USER),
                thread_id=f"comment:{kind}{OWNER}_31:{USER}",
                text="Да",
                reply_mode="public",
                comment_id=key(90, kind),
            )
            channel.check_outbound(account, msg)
            result = await channel.send(account, TOKEN, msg)
            req = fake.calls(f"{section}.createComment")[-1]
            assert req.form[field] == "31"
            assert (req.form["from_group"], req.form["reply_to_comment"]) == ("1", "90")
            assert result.provider_id.startswith(f"{kind}_comment{OWNER}_")
            await channel.moderate(account, TOKEN, key(90, kind), "delete")
            assert fake.calls(f"{section}.deleteComment")[-1].form["comment_id"] == "90"


def test_a_phone_written_in_a_comment_is_the_senders() -> None:
    from channels.vk_comments import phone_in

    for text in ("Мой номер 8 (900) 123-45-67", "звоните +7 900 123 45 67!", "89001234567"):
        assert phone_in(text) == "+79001234567", text
    for text in ("Цена 45 000 ₽ за 2 шт?", "Артикул 2024-05-01", "", "\x00" * 10):
        assert phone_in(text) is None, text
