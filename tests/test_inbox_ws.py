"""Live updates over the WebSocket against the running service: what a user may see
arrives, what they may not never does, and a reconnect with the last cursor misses
nothing and repeats nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from crm_store import conversations as convs
from crm_store import events, notifications, tokens
from crm_store.documents import stable_id
from inbox import live_api
from inbox.live import Facts, visible
from tests.service import InProcess, api_body, in_process

ANNA, OLGA, IVAN, ADMIN, ELENA = (
    "anna.smirnova",
    "olga.ivanova",
    "ivan.petrov",
    "sergey.volkov",
    "elena.orlova",
)


Frame = dict[str, Any]


async def frames_until(
    ws: aiohttp.ClientWebSocketResponse, want: Callable[[Frame], bool]
) -> list[Frame]:
    """Frames received until ``want(frame)`` is true for one (inclusive)."""
    got: list[Frame] = []
    while True:
        msg = await ws.receive(timeout=10.0)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = orjson.loads(msg.data)
        got.append(frame)
        if want(frame):
            return got


def event_of(frame: Frame, type_: str) -> bool:
    return bool(frame["type"] == "event" and frame["event"]["type"] == type_)


async def connect(
    svc: InProcess, token: str, after: int | None = None
) -> aiohttp.ClientWebSocketResponse:
    """Open a socket. Without ``after`` the stream starts when the server has joined the
    socket to the feed, which its first frame (a ``cursor`` frame) announces: wait for it,
    as a client must, so that nothing the test writes next falls before the start."""
    return (await connect_at(svc, token, after))[0]


async def connect_at(
    svc: InProcess, token: str, after: int | None = None
) -> tuple[aiohttp.ClientWebSocketResponse, int | None]:
    """:func:`connect`, and where the stream starts (None when resuming ``after``)."""
    url = f"{svc.client.base}/api/v1/ws?token={token}"
    if after is not None:
        url += f"&after={after}"
    ws = await svc.client.http.ws_connect(url)
    if after is not None:
        return ws, None
    first = await frames_until(ws, lambda f: True)
    assert first[0]["type"] == "cursor", first
    return ws, int(first[0]["cursor"])


async def write(svc: InProcess, ext: str, phone: str) -> Frame:
    status, body = await svc.client.post_api(api_body(ext, phone=phone, name=ext))
    assert status == 200, body
    await svc.routed()
    conv = await svc.store.conversations.find_one({"sender_keys": f"phone:{phone}"})
    assert conv is not None
    return conv


async def test_a_new_message_reaches_those_who_see_it_and_nobody_else(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA, IVAN)}
        anna, olga, ivan = [await connect(svc, t[u]) for u in (ANNA, OLGA, IVAN)]
        conv = await write(svc, "live-1", "+79001230001")
        assert conv["department"] == "sales"
        for ws in (anna, ivan):
            frames = await frames_until(ws, lambda f: event_of(f, "message.attached"))
            attached = frames[-1]["event"]
            assert attached["refs"]["conversation_id"] == conv["_id"]
            assert frames[-1]["cursor"] == attached["sequence"]
        # Olga (wholesale) gets only cursor frames: nothing of the sales conversation.
        await convs.assign(svc.store, conv, OLGA, "wholesale", ADMIN)
        frames = await frames_until(olga, lambda f: event_of(f, "conversation.assigned"))
        assert [f["event"]["type"] for f in frames if f["type"] == "event"] == [
            "conversation.assigned"
        ]
        # Now it is wholesale's: Anna no longer receives its events.
        moved = await svc.store.conversations.find_one({"_id": conv["_id"]})
        assert moved is not None
        await convs.add_note(svc.store, moved, "wholesale price list", OLGA)
        await frames_until(olga, lambda f: event_of(f, "message.note_added"))
        await write(svc, "live-2", "+79001230002")  # a new sales conversation
        frames = await frames_until(anna, lambda f: event_of(f, "conversation.opened"))
        types = [f["event"]["type"] for f in frames if f["type"] == "event"]
        assert "message.note_added" not in types
        for ws in (anna, olga, ivan):
            await ws.close()


async def test_resume_after_a_disconnect_misses_nothing_and_repeats_nothing(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        token, _ = await tokens.issue(svc.store, ANNA)
        ws = await connect(svc, token)
        await write(svc, "resume-1", "+79001231001")
        frames = await frames_until(ws, lambda f: event_of(f, "message.attached"))
        seen = [f["event"]["id"] for f in frames if f["type"] == "event"]
        cursor = frames[-1]["cursor"]
        await ws.close()
        # Away: three more customers write.
        for i in range(3):
            await write(svc, f"resume-{i + 2}", f"+7900123100{i + 2}")
        expected = [
            e["_id"]
            async for e in svc.store.events.find(
                {"seq": {"$gt": cursor}, "type": {"$in": ["message.attached", "lead.created"]}},
                sort=[("seq", 1)],
            )
        ]
        assert len(expected) == 6
        ws = await connect(svc, token, after=cursor)
        got: list[str] = []

        def done(f: Frame) -> bool:
            if f["type"] == "event" and f["event"]["type"] in ("message.attached", "lead.created"):
                got.append(f["event"]["id"])
            return len(got) == len(expected)

        frames = await frames_until(ws, done)
        assert got == expected
        resumed = [f["event"]["id"] for f in frames if f["type"] == "event"]
        assert not set(resumed) & set(seen)
        assert len(resumed) == len(set(resumed))
        await ws.close()


async def test_notifications_go_to_their_user_only_and_bad_tokens_are_refused(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, ADMIN, ELENA)}
        anna, admin = await connect(svc, t[ANNA]), await connect(svc, t[ADMIN])
        note = {
            "_id": stable_id("notification", "live"),
            "user_id": ANNA,
            "text": "Call the customer back",
            "created_at": datetime.now(UTC),
            "read_at": None,
        }
        await notifications.create_many(svc.store, [note])
        frames = await frames_until(anna, lambda f: event_of(f, "notification.created"))
        assert frames[-1]["event"]["data"]["text"] == "Call the customer back"
        await write(svc, "n-1", "+79001232001")  # something the admin does see
        frames = await frames_until(admin, lambda f: event_of(f, "message.attached"))
        assert not any(event_of(f, "notification.created") for f in frames)
        for ws in (anna, admin):
            await ws.close()
        for url, status in (
            ("/api/v1/ws?token=omr_nope", 401),
            (f"/api/v1/ws?token={t[ELENA]}", 403),
            ("/api/v1/ws", 401),
        ):
            async with svc.client.http.get(
                f"{svc.client.base}{url}",
                headers={"Connection": "Upgrade", "Upgrade": "websocket"},
            ) as resp:
                assert resp.status == status, url
        async with svc.client.http.get(f"{svc.client.base}/api/v1/ws?token={t[ANNA]}") as resp:
            assert resp.status == 426
            assert (await resp.json(content_type=None))["code"] == "upgrade_required"


def test_visibility_rules() -> None:
    from config.loader import load_config
    from config.settings import DEFAULT_CONFIG_DIR
    from inbox.auth import Principal, visible_departments

    cfg = load_config(DEFAULT_CONFIG_DIR)

    def who(uid: str) -> Principal:
        user = cfg.user(uid)
        assert user is not None
        return Principal(user, visible_departments(cfg, user))

    users = {u.id: u.department for u in cfg.users.users}
    facts = Facts({"c-sales": "sales", "c-none": None}, {"e-lead": {"wholesale"}}, users)
    conv_event = {"_id": "e1", "type": "message.attached", "refs": {"conversation_id": "c-sales"}}
    orphan = {"_id": "e2", "type": "message.attached", "refs": {"conversation_id": "c-none"}}
    lead_event = {"_id": "e-lead", "type": "lead.stage_changed", "refs": {"lead_id": "l"}}
    task = {"_id": "t", "type": "task.created", "data": {"assignee_id": ANNA, "watchers": [OLGA]}}
    timer = {"_id": "x", "type": "timer.fired", "refs": {}}
    moderated = {"_id": "e3", "type": "comment.moderated", "refs": {"conversation_id": "c-sales"}}
    document = {"_id": "e-lead", "type": "document.signed", "refs": {"deal_id": "d"}}
    table = [
        (moderated, {ANNA: True, OLGA: False, IVAN: True, ADMIN: True}),
        (document, {ANNA: False, OLGA: True, IVAN: True, ADMIN: True}),
        (conv_event, {ANNA: True, OLGA: False, IVAN: True, ADMIN: True}),
        (orphan, {ANNA: False, OLGA: False, IVAN: False, ADMIN: True}),
        (lead_event, {ANNA: False, OLGA: True, IVAN: True, ADMIN: True}),
        (task, {ANNA: True, OLGA: True, IVAN: True, ADMIN: True}),
        (timer, {ANNA: False, OLGA: False, IVAN: False, ADMIN: False}),
    ]
    for event, expected in table:
        got = {u: visible(event, who(u), facts) for u in expected}
        assert got == expected, event["type"]


async def last_seq(svc: InProcess) -> int:
    last = await svc.store.events.find_one({}, {"seq": 1}, sort=[("seq", -1)])
    assert last is not None
    return int(last["seq"])


def is_cursor(frame: Frame) -> bool:
    return bool(frame["type"] == "cursor")


async def test_filtered_out_events_move_the_cursor_and_resume_on_an_open_socket(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_api, "CURSOR_EVERY_S", 0.2)
    async with in_process(mongo_uri, db_name) as svc:
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA)}
        # Without ``after`` the stream starts at the current end and says where that is.
        (olga, start), anna = await connect_at(svc, t[OLGA]), await connect(svc, t[ANNA])
        assert start is not None
        await write(svc, "quiet-1", "+79001233001")  # sales: nothing of it for Olga
        end = await last_seq(svc)
        frames = await frames_until(olga, lambda f: is_cursor(f) and f["cursor"] >= end)
        assert start < end
        assert not [f for f in frames if f["type"] == "event"]
        # Anna got it; she asks the open socket to go back to where she started.
        first = await frames_until(anna, lambda f: event_of(f, "message.attached"))
        first_ids = [f["event"]["id"] for f in first if f["type"] == "event"]
        await anna.send_str(orjson.dumps({"type": "resume", "after": start}).decode())
        again = await frames_until(anna, lambda f: event_of(f, "message.attached"))
        again_ids = [f["event"]["id"] for f in again if f["type"] == "event"]
        assert again_ids[-len(first_ids) :] == first_ids
        # A ping is answered; what the server does not understand says so.
        await anna.send_str('{"type": "ping"}')
        await frames_until(anna, lambda f: f["type"] == "pong")
        await anna.send_str('{"type": "rewind"}')
        bad = (await frames_until(anna, lambda f: f["type"] == "error"))[-1]
        assert bad["code"] == "invalid_command"
        for ws in (olga, anna):
            await ws.close()


async def test_a_conversation_moved_away_stops_reaching_the_old_department(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA)}
        conv = await write(svc, "moved-1", "+79001234001")
        anna, olga = await connect(svc, t[ANNA]), await connect(svc, t[OLGA])
        # An event appended straight to the log; what counts is the conversation's
        # department *now*, not the one the event was written with.
        await svc.store.conversations.update_one(
            {"_id": conv["_id"]}, {"$set": {"department": "wholesale"}}
        )
        await events.append(
            svc.store,
            [
                events.event(
                    "conversation.closed",
                    {"conversation_id": conv["_id"]},
                    {"department": "sales", "by": ADMIN},
                    key=[conv["_id"], "closed-in-test"],
                )
            ],
        )
        await frames_until(olga, lambda f: event_of(f, "conversation.closed"))
        end = await last_seq(svc)
        await anna.send_str('{"type": "ping"}')
        frames = await frames_until(anna, lambda f: f["type"] == "pong" and f["cursor"] >= end)
        assert not any(event_of(f, "conversation.closed") for f in frames)
        for ws in (anna, olga):
            await ws.close()


async def test_sockets_are_closed_when_the_service_shuts_down(mongo_uri: str, db_name: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with in_process(mongo_uri, db_name) as svc:
            token, _ = await tokens.issue(svc.store, ANNA)
            ws = await http.ws_connect(f"{svc.client.base}/api/v1/ws?token={token}")
            assert orjson.loads((await ws.receive(timeout=10.0)).data)["type"] == "cursor"
            closing = asyncio.create_task(ws.receive(timeout=30.0))
        msg = await closing
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
