"""Facebook Messenger over real HTTP: Meta's handshake and signature, batches of entries
and messaging items, echoes, receipts, edits / unsends / reactions that overtake their
message, postbacks and referrals reaching the lead, Page feed comments in their per-post
conversation, and replies, comment answers and moderation against a local Graph fake
(tests/fakes/graph.py). Payloads follow CHANNEL_PROTOCOLS.md §9 and §11.1.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from channels.base import (
    Attachment,
    CommentModerator,
    OutboundMessage,
    SendError,
    SendingChannel,
    WebhookRequest,
)
from channels.messenger import MessengerChannel
from config.models import AppConfig, ChannelAccount
from crm_store import tokens
from inbox.replies import ReplyError, reply
from tests.fakes import graph
from tests.fakes.graph import FakeGraph
from tests.helpers import wait_for
from tests.meta_support import (
    ENV,
    SECRET_SETTINGS,
    TOKEN,
    handshake_checks,
    one,
    post,
    reply_and_wait,
    signature_checks,
)
from tests.service import InProcess, config_with, in_process

ACCOUNT = "page"
PAGE = "104918273645501"
PSID = "7391846205517734"
PSID2 = "7391846205517799"
PATH = f"/webhooks/messenger/{ACCOUNT}"
CHANNEL = MessengerChannel()
Json = dict[str, Any]


def fb_account(api_base: str, **settings: str | int | float | bool) -> ChannelAccount:
    return ChannelAccount(
        channel="messenger",
        account=ACCOUNT,
        source="messengers",
        secret_env="OMNIROUTE_TEST_META_TOKEN",
        settings={**SECRET_SETTINGS, "page_id": PAGE, "api_base": api_base, **settings},
    )


def fb_config(api_base: str) -> AppConfig:
    return config_with(fb_account(api_base))


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
    async with in_process(mongo_uri, db_name, config=fb_config(fake.base)) as svc:
        yield svc


# --- payloads ---------------------------------------------------------------------------


def ms(ago_s: float = 60) -> int:
    return int((time.time() - ago_s) * 1000)


def item(kind: str, content: Any, who: str = PSID, ago_s: float = 60, **extra: Any) -> Json:
    return {
        "sender": {"id": who},
        "recipient": {"id": PAGE},
        "timestamp": ms(ago_s),
        kind: content,
        **extra,
    }


def text(mid: str, body: str = "Здравствуйте, заказ 1182 не пришёл", **kw: Any) -> Json:
    return item("message", {"mid": mid, "text": body}, **kw)


def entry(messaging: list[Json] | None = None, **extra: Any) -> Json:
    e: Json = {"id": PAGE, "time": ms(0), **extra}
    if messaging is not None:
        e["messaging"] = messaging
    return e


def page(*entries: Json) -> Json:
    return {"object": "page", "entry": list(entries)}


def comment(
    cid: str, post_id: str, who: str = "6641023378852201", verb: str = "add", **extra: Any
) -> Json:
    value: Json = {
        "item": "comment",
        "verb": verb,
        "comment_id": cid,
        "post_id": post_id,
        "parent_id": post_id,
        "from": {"id": who, "name": "Ирина К."},
        "message": "Сколько стоит доставка?",
        "created_time": int(time.time()) - 30,
        "post": {"id": post_id, "status_type": "mobile_status_update", "is_published": True},
        **extra,
    }
    return {"field": "feed", "value": value}


async def inbound(svc: InProcess, mid: str) -> Json:
    return await one(svc.store.messages, {"provider_id": mid, "direction": "in"})


# --- authenticity ---------------------------------------------------------------------------


async def test_handshake_and_signatures(mongo_uri: str, db_name: str, fake: FakeGraph) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        await handshake_checks(svc, PATH)
        await signature_checks(svc, PATH, page(entry([text("m_sig")])))


# --- inbound ------------------------------------------------------------------------------


async def test_a_batch_of_entries_echoes_postbacks_and_a_referral_on_the_lead(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    """Two entries, several items each (and one on standby): every customer item stored
    once, echoes never inbound, the ad a thread was opened from kept on the lead, a phone
    number shared through a quick reply on the contact."""
    first = entry(
        [
            item(
                "referral",
                {
                    "ref": "promo_may",
                    "source": "ADS",
                    "type": "OPEN_THREAD",
                    "ad_id": "6045246247433",
                },
                ago_s=90,
            ),
            text("m_Qx7", ago_s=80),
            item(
                "message",
                {"is_echo": True, "app_id": 1517776481860111, "mid": "m_echo1", "text": "Проверим"},
                who=PAGE,
            ),
        ]
    )
    second = entry(
        [
            item(
                "message",
                {
                    "mid": "m_phone",
                    "text": "+7 900 123-45-67",
                    "quick_reply": {"payload": "+79001234567"},
                },
                ago_s=70,
            ),
            item("postback", {"mid": "m_Pb1", "title": "Статус заказа", "payload": "ORDER_STATUS"}),
        ],
        standby=[
            item(
                "message",
                {
                    "mid": "m_img",
                    "attachments": [
                        {"type": "image", "payload": {"url": "https://lookaside.fbsbx.com/x.jpg"}},
                        {"type": "fallback", "title": "A shared link"},
                    ],
                },
                who=PSID2,
            )
        ],
    )
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, PATH, page(first, second))
        assert code == 200
        assert len(body["accepted"]) == 5
        await svc.routed()
        assert await svc.store.messages.count_documents({"provider_id": "m_echo1"}) == 0
        lead = await one(svc.store.leads, {"identities": f"messenger:{ACCOUNT}:{PSID}"})
        assert lead["meta"]["referral_ad_id"] == "6045246247433"
        assert lead["meta"]["referral_ref"] == "promo_may"
        contact = await one(svc.store.contacts, {"_id": lead["contact_id"]})
        assert contact["phones"] == ["+79001234567"]
        assert f"messenger:{ACCOUNT}:{PSID}" in contact["identities"]
        postback = await inbound(svc, "m_Pb1")
        assert postback["text"] == "Статус заказа"
        assert postback["meta"]["postback_payload"] == "ORDER_STATUS"
        image = await inbound(svc, "m_img")
        assert [a["kind"] for a in image["attachments"]] == ["image", "fallback"]
        assert image["attachments"][0]["url"] == "https://lookaside.fbsbx.com/x.jpg"
        # Each customer has one conversation, the reply address their PSID.
        conv = await one(svc.store.conversations, {"_id": postback["conversation_id"]})
        assert conv["reply_to"] == PSID
        assert await svc.store.leads.count_documents({}) == 2
        # A redelivery stores nothing new.
        code, body = await post(svc, PATH, page(first, second))
        assert (code, body["accepted"]) == (200, [])


async def test_edits_unsends_and_reactions_that_overtake_their_message(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    async with service(mongo_uri, db_name, fake) as svc:
        early = page(
            entry(
                [
                    item(
                        "message_edit",
                        {"mid": "m_late", "text": "…заказ 1183…", "num_edit": 1},
                        ago_s=20,
                    ),
                    item(
                        "reaction",
                        {"mid": "m_late", "action": "react", "reaction": "love", "emoji": "❤️"},
                        ago_s=10,
                    ),
                ]
            )
        )
        assert (await post(svc, PATH, early))[0] == 200
        assert await svc.store.messages.count_documents({}) == 0
        assert (await post(svc, PATH, page(entry([text("m_late", "заказ 1182", ago_s=30)]))))[
            0
        ] == 200
        await svc.routed()
        msg = await inbound(svc, "m_late")
        assert msg["text"] == "…заказ 1183…"
        assert [e["text"] for e in msg["edits"]] == ["заказ 1182"]
        assert msg["reactions"][PSID]["reaction"] == "❤️"
        # Removing the reaction clears it; an older reaction delivered late does not return.
        unreact = item("reaction", {"mid": "m_late", "action": "unreact"}, ago_s=5)
        late = item("reaction", {"mid": "m_late", "action": "react", "emoji": "😮"}, ago_s=8)
        assert (await post(svc, PATH, page(entry([unreact, late]))))[0] == 200
        msg = await inbound(svc, "m_late")
        assert msg["reactions"][PSID]["reaction"] is None
        # Instagram-style unsend in a Messenger payload: marked deleted, text kept.
        gone = item("message", {"mid": "m_late", "is_deleted": True}, ago_s=1)
        assert (await post(svc, PATH, page(entry([gone]))))[0] == 200
        msg = await inbound(svc, "m_late")
        assert (msg["deleted"], msg["text"]) == (True, "…заказ 1183…")
        assert await svc.store["pending_updates"].count_documents({"key": msg["_id"]}) == 0


# --- comments ------------------------------------------------------------------------------


async def test_feed_comments_make_one_conversation_per_post_and_commenter(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    post_a, post_b = f"{PAGE}_122131676912594941", f"{PAGE}_122131676912594999"
    changes = [
        comment("122131676912594941_1", post_a),
        comment(
            "122131676912594941_2", post_a, parent_id="122131676912594941_1", message="И сборка?"
        ),
        comment("122131676912594999_1", post_b, message="Есть в белом?"),
        comment("122131676912594941_3", post_a, who=PAGE, message="Ответили в личные"),  # ours
        {"field": "feed", "value": {"item": "reaction", "verb": "add", "post_id": post_a}},
    ]
    async with service(mongo_uri, db_name, fake) as svc:
        code, body = await post(svc, PATH, page(entry(changes=changes)))
        assert (code, len(body["accepted"])) == (200, 3)
        await svc.routed()
        first = await inbound(svc, "122131676912594941_1")
        second = await inbound(svc, "122131676912594941_2")
        other = await inbound(svc, "122131676912594999_1")
        assert first["conversation_id"] == second["conversation_id"] != other["conversation_id"]
        record = await one(svc.store.intake, {"provider_id": "122131676912594941_2"})
        message = record["message"]
        assert (message["kind"], message["parent_id"]) == ("comment", "122131676912594941_1")
        assert message["post"] == {
            "id": post_a,
            "url": f"https://www.facebook.com/{post_a}",
            "text": None,
        }
        assert message["thread_id"] == f"comment:{post_a}:6641023378852201"
        assert message["reply_to"] == "6641023378852201"
        first_record = await one(svc.store.intake, {"provider_id": "122131676912594941_1"})
        assert first_record["message"]["parent_id"] is None  # top level: parent is the post
        assert (
            await svc.store.messages.count_documents({"provider_id": "122131676912594941_3"}) == 0
        )
        # Edited and removed comments update the stored ones.
        edits = [
            comment(
                "122131676912594941_1",
                post_a,
                verb="edited",
                message="Сколько стоит доставка в Тверь?",
            ),
            comment("122131676912594999_1", post_b, verb="remove"),
        ]
        assert (await post(svc, PATH, page(entry(changes=edits))))[0] == 200
        assert (await inbound(svc, "122131676912594941_1"))[
            "text"
        ] == "Сколько стоит доставка в Тверь?"
        removed = await inbound(svc, "122131676912594999_1")
        assert (removed["deleted"], removed["text"]) == (True, "Есть в белом?")


# --- outbound ------------------------------------------------------------------------------


async def test_reply_within_the_window_and_its_receipts(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    fake.reset()
    async with service(mongo_uri, db_name, fake) as svc:
        assert (await post(svc, PATH, page(entry([text("m_in1", ago_s=5)]))))[0] == 200
        await svc.routed()
        conv = await one(svc.store.conversations, {})
        out = await reply_and_wait(svc, conv["_id"], "Заказ 1182 передан курьеру", "sent")
        [req] = fake.requests
        assert (req.method, req.path) == ("POST", f"/v25.0/{PAGE}/messages")
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        assert "access_token" not in req.query
        assert req.json() == {
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {"text": "Заказ 1182 передан курьеру"},
        }
        assert out["provider_id"] == fake.sent[0]
        # The echo of our own send is not inbound; delivery then a reaction to our message;
        # a read watermark from before the send moves nothing.
        receipts = [
            item("message", {"is_echo": True, "mid": fake.sent[0], "text": "…"}, who=PAGE),
            item("delivery", {"mids": [fake.sent[0]], "watermark": ms(0)}),
            item("read", {"watermark": ms(3600)}),
            item("reaction", {"mid": fake.sent[0], "action": "react", "emoji": "👍"}, ago_s=0),
        ]
        assert (await post(svc, PATH, page(entry(receipts))))[0] == 200
        doc = await svc.store.messages.find_one({"_id": out["_id"]})
        assert doc is not None
        assert doc["state"] == "delivered"
        assert doc["reactions"][PSID]["reaction"] == "👍"
        # A read watermark names no message: everything sent to this person up to it is read.
        assert (await post(svc, PATH, page(entry([item("read", {"watermark": ms(0)})]))))[0] == 200
        doc = await svc.store.messages.find_one({"_id": out["_id"]})
        assert doc is not None
        assert [h["state"] for h in doc["state_history"]] == ["queued", "sent", "delivered", "read"]
        assert await svc.store.messages.count_documents({"direction": "in"}) == 1
        # A day later the window is closed: refused at once, nothing sent.
        old = datetime.now(UTC) - timedelta(hours=25)
        await svc.store.conversations.update_one(
            {"_id": conv["_id"]}, {"$set": {"last_inbound_at": old}}
        )
        with pytest.raises(ReplyError) as err:
            await reply(svc.store, svc.service.config, conv["_id"], "Ещё актуально?")
        assert err.value.code == "window_closed"
        assert "human-agent" in err.value.detail
        assert len(fake.requests) == 1


async def test_receipts_that_overtake_their_send(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    """Meta's delivery and read can arrive before our send has stored the message's id:
    they wait, and apply once it is stored."""
    fake.reset()
    fake.next_ids.append("m_overtaken")
    async with service(mongo_uri, db_name, fake) as svc:
        assert (await post(svc, PATH, page(entry([text("m_in2", ago_s=5)]))))[0] == 200
        await svc.routed()
        conv = await one(svc.store.conversations, {})
        early = [item("delivery", {"mids": ["m_overtaken"], "watermark": ms(0)}, ago_s=0)]
        assert (await post(svc, PATH, page(entry(early))))[0] == 200
        assert await svc.store["pending_updates"].count_documents({"kind": "status"}) == 1
        out = await reply_and_wait(svc, conv["_id"], "Ждём вас в салоне", "delivered")
        assert out["provider_id"] == "m_overtaken"

        async def forgotten() -> bool:  # applied first, then removed
            return await svc.store["pending_updates"].count_documents({"kind": "status"}) == 0

        await wait_for(forgotten, timeout=10, message="the applied receipt is still parked")


async def api(svc: InProcess, method: str, path: str, body: Json | None = None) -> tuple[int, Any]:
    token, _ = await tokens.issue(svc.store, "sergey.volkov")  # the example's admin
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = orjson.dumps(body) if body is not None else None
    async with svc.client.http.request(
        method, f"{svc.client.base}{path}", data=data, headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_an_operator_answers_a_comment_publicly_and_privately_and_hides_it(
    mongo_uri: str, db_name: str, fake: FakeGraph
) -> None:
    """End to end through the operator API and the outbox: the comment's provider id
    reaches the Graph calls."""
    fake.reset()
    cid, post_id = "122131676912594941_77", f"{PAGE}_122131676912594941"
    async with service(mongo_uri, db_name, fake) as svc:
        assert (await post(svc, PATH, page(entry(changes=[comment(cid, post_id)]))))[0] == 200
        await svc.routed()
        stored = await inbound(svc, cid)
        path = f"/api/v1/conversations/{stored['conversation_id']}/messages"
        status, body = await api(svc, "POST", path, {"text": "Доставка бесплатно"})
        assert status == 201, body
        status, private = await api(
            svc, "POST", path, {"text": "Напишем в личные", "mode": "private"}
        )
        assert status == 201, private
        assert svc.service.outbox is not None
        svc.service.outbox.wake.set()

        async def both_sent() -> bool:
            return len(fake.requests) == 2

        await wait_for(both_sent, timeout=15, message="the answers never reached Graph")
        by_path = {r.path: r.json() for r in fake.requests}
        assert by_path[f"/v25.0/{cid}/comments"] == {"message": "Доставка бесплатно"}
        assert by_path[f"/v25.0/{PAGE}/messages"]["recipient"] == {"comment_id": cid}
        moderate = (
            f"/api/v1/conversations/{stored['conversation_id']}/comments/{stored['_id']}/moderate"
        )
        status, view = await api(svc, "POST", moderate, {"action": "hide"})
        assert status == 200, view
        assert (fake.requests[-1].path, fake.requests[-1].json()) == (
            f"/v25.0/{cid}",
            {"is_hidden": True},
        )
        fake.fail_next(graph.NO_PERMISSION)
        status, refused = await api(svc, "POST", moderate, {"action": "delete"})
        assert (status, refused["code"]) == (409, "provider_refused")
        assert "pages_messaging" in refused["detail"]


def outbound(**kw: Any) -> OutboundMessage:
    base: Json = {
        "id": "out-1",
        "channel": "messenger",
        "account": ACCOUNT,
        "recipient": PSID,
        "text": "Здравствуйте!",
        "last_inbound_at": datetime.now(UTC) - timedelta(minutes=5),
    }
    return OutboundMessage(**{**base, **kw})


async def test_windows_attachments_and_human_agent(fake: FakeGraph) -> None:
    fake.reset()
    plain, agent = fb_account(fake.base), fb_account(fake.base, human_agent=True)
    two_days = datetime.now(UTC) - timedelta(days=2)
    with pytest.raises(SendError) as err:
        CHANNEL.check_outbound(plain, outbound(last_inbound_at=two_days))
    assert (err.value.code, err.value.retryable) == ("window_closed", False)
    await CHANNEL.send(agent, TOKEN, outbound(last_inbound_at=two_days))
    assert fake.requests[-1].json()["messaging_type"] == "MESSAGE_TAG"
    assert fake.requests[-1].json()["tag"] == "HUMAN_AGENT"
    for late in (
        outbound(last_inbound_at=datetime.now(UTC) - timedelta(days=8)),
        outbound(last_inbound_at=two_days, automatic=True),  # the tag is for people only
        outbound(last_inbound_at=None),
    ):
        with pytest.raises(SendError) as err:
            CHANNEL.check_outbound(agent, late)
        assert err.value.code == "window_closed"
    # An attachment by URL goes first, then the text.
    pic = Attachment(kind="image", url="https://cdn.example.ru/sofa.jpg", name="sofa.jpg")
    fake.reset()
    result = await CHANNEL.send(plain, TOKEN, outbound(attachments=[pic]))
    assert [r.json()["message"] for r in fake.requests] == [
        {"attachment": {"type": "image", "payload": {"url": pic.url, "is_reusable": True}}},
        {"text": "Здравствуйте!"},
    ]
    assert result.provider_id == fake.sent[0]
    for bad, code in (
        (outbound(text="x" * 2001), "text_too_long"),
        (outbound(text="", attachments=[]), "empty_message"),
        (outbound(attachments=[Attachment(kind="file", file_id="f1")]), "unsupported_attachment"),
    ):
        with pytest.raises(SendError) as err:
            CHANNEL.check_outbound(plain, bad)
        assert err.value.code == code


async def test_public_and_private_comment_replies_and_moderation(fake: FakeGraph) -> None:
    fake.reset()
    account = fb_account(fake.base)
    cid = "122131676912594941_1213590066982748"
    assert isinstance(CHANNEL, SendingChannel)
    assert isinstance(CHANNEL, CommentModerator)
    public = await CHANNEL.send(
        account, TOKEN, outbound(reply_mode="public", comment_id=cid, text="Доставка бесплатно")
    )
    private = await CHANNEL.send(
        account,
        TOKEN,
        outbound(
            reply_mode="private",
            comment_id=cid,
            recipient="6641023378852201",
            text="Напишем детали в личные",
            last_inbound_at=datetime.now(UTC) - timedelta(days=3),  # beyond 24 h: still allowed
        ),
    )
    assert (public.provider_id, private.provider_id) == (fake.sent[0], fake.sent[1])
    pub, priv = fake.requests
    assert (pub.method, pub.path, pub.json()) == (
        "POST",
        f"/v25.0/{cid}/comments",
        {"message": "Доставка бесплатно"},
    )
    assert (priv.path, priv.json()) == (
        f"/v25.0/{PAGE}/messages",
        {
            "recipient": {"comment_id": cid},
            "messaging_type": "RESPONSE",
            "message": {"text": "Напишем детали в личные"},
        },
    )
    with pytest.raises(SendError) as err:  # a private reply only within 7 days
        CHANNEL.check_outbound(
            account,
            outbound(
                reply_mode="private",
                comment_id=cid,
                last_inbound_at=datetime.now(UTC) - timedelta(days=8),
            ),
        )
    assert err.value.code == "window_closed"
    fake.reset()
    for action in ("hide", "unhide", "delete"):
        await CHANNEL.moderate(account, TOKEN, cid, action)  # type: ignore[arg-type]
    assert [(r.method, r.path, r.json()) for r in fake.requests] == [
        ("POST", f"/v25.0/{cid}", {"is_hidden": True}),
        ("POST", f"/v25.0/{cid}", {"is_hidden": False}),
        ("DELETE", f"/v25.0/{cid}", None),
    ]


async def test_graph_errors_reach_the_operator_in_words(fake: FakeGraph) -> None:
    account = fb_account(fake.base)
    for failure, code, retryable in (
        (graph.WINDOW_CLOSED, "window_closed", False),
        (graph.UNAVAILABLE, "recipient_unavailable", False),
        (graph.BAD_TOKEN, "token_invalid", False),
        (graph.NO_PERMISSION, "permission_denied", False),
        (graph.RATE_LIMITED, "rate_limited", True),
        (graph.UNKNOWN, "provider_unavailable", True),
        (graph.Failure(400, 100, 2018001, "(#100) No matching user found"), "messenger_100", False),
    ):
        fake.reset()
        fake.fail_next(failure)
        with pytest.raises(SendError) as err:
            await CHANNEL.send(account, TOKEN, outbound())
        assert (err.value.code, err.value.retryable) == (code, retryable), failure
        assert failure.message[:20] in err.value.detail
    with pytest.raises(SendError) as err:
        await CHANNEL.send(account, "a-wrong-token", outbound())
    assert err.value.code == "token_invalid"
    with pytest.raises(SendError) as err:  # nobody listening
        await CHANNEL.send(fb_account("http://127.0.0.1:9"), TOKEN, outbound())
    assert (err.value.code, err.value.retryable) == ("connection_error", True)


def test_a_quick_reply_joins_the_contact_only_when_it_is_a_number_or_an_address() -> None:
    account = fb_account("http://127.0.0.1:9")
    for payload, phone, email in (
        ("+7 (900) 123-45-67", "+79001234567", None),
        ("ivan.petrov@example.ru", None, "ivan.petrov@example.ru"),
        ("PRODUCT_89001234567", None, None),
        ("SIZE_42", None, None),
    ):
        quick = item(
            "message", {"mid": "m_q", "text": payload, "quick_reply": {"payload": payload}}
        )
        body = orjson.dumps(page(entry([quick])))
        [msg] = CHANNEL.read(account, WebhookRequest("POST", {}, {}, body)).messages
        assert (msg.sender.phone, msg.sender.email) == (phone, email), payload
        assert msg.meta["quick_reply_payload"] == payload


def test_check_config_reports_meta_settings(tmp_path: Path) -> None:
    """check-config reads a Messenger/Instagram account's settings key by key, at its line."""
    from config.loader import check_config
    from tests.automation_support import copy_seed

    target = copy_seed("furniture", tmp_path / "furniture")
    channels = target / "channels.yaml"
    text = channels.read_text(encoding="utf-8")
    assert check_config(target) == []
    broken = text.replace('page_id: "104918273645501"', "page_id: my-page", 1).replace(
        "human_agent: false", "human_agent: sometimes", 1
    )
    assert broken != text
    channels.write_text(broken, encoding="utf-8")
    problems = {(p.file, p.message) for p in check_config(target)}
    messages = [m for f, m in problems if f == "channels.yaml"]
    assert any("my-page" in m for m in messages), problems
    assert any("sometimes" in m for m in messages), problems
    lines = {p.line for p in check_config(target) if p.file == "channels.yaml"}
    want = {n for n, line in enumerate(broken.splitlines(), 1) if "my-page" in line}
    assert want <= lines
