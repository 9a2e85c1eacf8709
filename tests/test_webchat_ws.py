"""The visitor's live side against the running service: an operator's reply sent
through the operator API reaches the visitor's WebSocket (then ``delivered``, and
``read`` when the widget says so), typing goes both ways' operator hook, a visitor who
was away gets every reply from their last cursor — across reconnects, none lost, none
twice — and the long poll returns as soon as a reply is there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from crm_store import tokens
from crm_store.store import Store
from inbox.webchat_hub import visitor_conversation
from tests.helpers import wait_for
from tests.service import Client, InProcess, in_process, proc
from tests.test_webchat_api import (
    ACCOUNT,
    CONFIG,
    ORIGIN,
    PAGE,
    HasClient,
    call,
    send,
    session,
)

Frame = dict[str, Any]
ANNA = "anna.smirnova"


async def frames_until(
    ws: aiohttp.ClientWebSocketResponse, want: Callable[[Frame], bool]
) -> list[Frame]:
    got: list[Frame] = []
    while True:
        msg = await ws.receive(timeout=10.0)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = orjson.loads(msg.data)
        got.append(frame)
        if want(frame):
            return got


async def visitor_ws(
    svc: HasClient, token: str, after: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    url = f"{svc.client.base}/webchat/{ACCOUNT}/ws?token={token}"
    if after is not None:
        url += f"&after={after}"
    return await svc.client.http.ws_connect(url, headers={"Origin": ORIGIN})


async def operator(svc: HasClient, method: str, path: str, body: Frame, token: str) -> Frame:
    async with svc.client.http.request(
        method,
        f"{svc.client.base}{path}",
        data=orjson.dumps(body) if method != "GET" else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as resp:
        data = orjson.loads(await resp.read())
        assert resp.status in (200, 201), data
        return dict(data)


async def started_chat(svc: InProcess) -> tuple[Frame, str, str]:
    """A visitor who wrote once (routed); their session, conversation id, an operator token."""
    s = await session(svc, name="Olga")
    status, body, _ = await send(svc, s["visitor_token"], "hello-1")
    assert status == 200, body
    await svc.routed()
    conv = visitor_conversation(ACCOUNT, s["visitor_id"])
    assert await svc.store.conversations.find_one({"_id": conv}) is not None
    token, _ = await tokens.issue(svc.store, ANNA)
    return s, conv, token


def is_out(frame: Frame) -> bool:
    return bool(frame["type"] == "message" and frame["direction"] == "out")


async def test_an_operator_reply_reaches_the_visitor_live_then_delivered_and_read(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s, conv, op = await started_chat(svc)
        ws = await visitor_ws(svc, s["visitor_token"], after="0")
        # the history first: the visitor's own message, with its client id
        [own] = await frames_until(ws, lambda f: f["type"] == "message")
        assert own["direction"] == "in"
        assert own["client_id"] == "hello-1"
        reply = await operator(
            svc,
            "POST",
            f"/api/v1/conversations/{conv}/messages",
            {"text": "Yes, 3.2 m is fine"},
            op,
        )
        got = await frames_until(ws, is_out)
        assert got[-1]["id"] == reply["id"]
        assert got[-1]["text"] == "Yes, 3.2 m is fine"
        assert int(got[-1]["cursor"]) > int(own["cursor"])

        async def state_is(want: str) -> bool:
            doc = await svc.store.messages.find_one({"_id": reply["id"]})
            return doc is not None and doc.get("state") == want

        await wait_for(lambda: state_is("delivered"), message="reply not delivered")

        typing = await operator(
            svc, "POST", f"/api/v1/conversations/{conv}/typing", {"on": True}, op
        )
        assert typing == {"visitors": 1}
        frames = await frames_until(ws, lambda f: f["type"] == "typing")
        assert frames[-1] == {"type": "typing", "on": True}

        await ws.send_str(orjson.dumps({"type": "read", "up_to": reply["id"]}).decode())
        await wait_for(lambda: state_is("read"), message="reply not read")

        # the operator sees the visitor online, typing, and the page they are on
        await ws.send_str(orjson.dumps({"type": "typing", "on": True}).decode())

        async def visitor_typing() -> bool:
            view = await operator(svc, "GET", f"/api/v1/conversations/{conv}/visitor", {}, op)
            return bool(view["online"] and view["typing"])

        await wait_for(visitor_typing, message="the visitor's typing never showed")
        view = await operator(svc, "GET", f"/api/v1/conversations/{conv}/visitor", {}, op)
        assert view["page"]["url"] == PAGE["url"]
        assert view["verified"] is False

        # the operator reads the visitor's message: a read frame up to it
        await operator(svc, "POST", f"/api/v1/conversations/{conv}/read", {}, op)
        frames = await frames_until(ws, lambda f: f["type"] == "read")
        assert frames[-1]["up_to"] == own["id"]
        await ws.close()

        async def gone() -> bool:
            view = await operator(svc, "GET", f"/api/v1/conversations/{conv}/visitor", {}, op)
            return not view["online"] and not view["typing"]

        await wait_for(gone, message="the visitor still shows online")


async def test_a_visitor_away_gets_every_reply_from_the_last_cursor_across_reconnects(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s, conv, op = await started_chat(svc)
        status, first, _ = await call(svc, "GET", "feed?after=0", token=s["visitor_token"])
        assert status == 200
        cursor = first["cursor"]  # past the visitor's own message
        sent: list[str] = []
        seen: list[str] = []
        for round_ in range(3):
            # away: two replies while no connection is open
            for k in range(2):
                r = await operator(
                    svc,
                    "POST",
                    f"/api/v1/conversations/{conv}/messages",
                    {"text": f"reply {round_}.{k}"},
                    op,
                )
                sent.append(r["id"])

            async def all_sent(n: int = len(sent)) -> bool:
                q = {"conversation_id": conv, "direction": "out", "provider_id": {"$exists": 1}}
                return await svc.store.messages.count_documents(q) == n

            await wait_for(all_sent, message="replies not sent")
            ws = await visitor_ws(svc, s["visitor_token"], after=cursor)
            frames = await frames_until(ws, lambda f: is_out(f) and f["id"] == sent[-1])
            outs = [f for f in frames if is_out(f)]
            seen += [f["id"] for f in outs]
            assert [f["type"] for f in frames if f["type"] == "message"] == ["message"] * 2
            cursor = outs[-1]["cursor"]
            await ws.close()
        assert seen == sent
        # the long-poll fallback from the start holds the whole conversation, in order
        status, feed, _ = await call(svc, "GET", "feed?after=0", token=s["visitor_token"])
        assert status == 200
        assert [i["id"] for i in feed["items"] if i["direction"] == "out"] == sent


async def test_the_long_poll_returns_when_a_reply_arrives(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s, conv, op = await started_chat(svc)
        status, first, _ = await call(svc, "GET", "feed?after=0", token=s["visitor_token"])
        assert status == 200
        assert [i["direction"] for i in first["items"]] == ["in"]
        poll = asyncio.create_task(
            call(svc, "GET", f"feed?after={first['cursor']}&wait=20", token=s["visitor_token"])
        )
        await asyncio.sleep(0)  # let the poll reach the server first (not required)
        reply = await operator(
            svc, "POST", f"/api/v1/conversations/{conv}/messages", {"text": "Here"}, op
        )
        status, later, _ = await poll
        assert status == 200
        # whichever came first, the reply is in this answer or right after its cursor
        items = later["items"]
        if not items:
            status, later, _ = await call(
                svc, "GET", f"feed?after={later['cursor']}&wait=20", token=s["visitor_token"]
            )
            items = later["items"]
        assert [i["id"] for i in items] == [reply["id"]]


async def test_a_websocket_needs_a_genuine_token(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s = await session(svc)
        forged = s["visitor_token"][:-4] + "AAAA"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await visitor_ws(svc, forged)
        assert refused.value.status == 401


@pytest.mark.slow
async def test_two_processes_session_on_one_socket_on_the_other(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """The visitor token works on every process (one key in the store), and a reply sent
    through one process reaches a socket held by another (each hub reads the log)."""
    first, second = (proc(mongo_uri, db_name, tmp_path) for _ in range(2))
    store = Store.open(mongo_uri, db_name)
    try:
        await asyncio.gather(first.start(), second.start())
        async with aiohttp.ClientSession() as http:
            one = InProcessLike(first.base, http, store)
            two = InProcessLike(second.base, http, store)
            s = await session(one, name="Olga")
            status, body, _ = await send(two, s["visitor_token"], "hello-1")
            assert status == 200, body

            async def routed() -> bool:
                return await store.intake.count_documents({"status": "pending"}) == 0

            await wait_for(routed, timeout=20)
            conv = visitor_conversation(ACCOUNT, s["visitor_id"])
            op, _ = await tokens.issue(store, ANNA)
            ws = await visitor_ws(two, s["visitor_token"], after="0")
            await frames_until(ws, lambda f: f["type"] == "message")
            reply = await operator(
                one,
                "POST",
                f"/api/v1/conversations/{conv}/messages",
                {"text": "from the other process"},
                op,
            )
            got = await frames_until(ws, is_out)
            assert got[-1]["id"] == reply["id"]
            await ws.close()
    finally:
        await asyncio.gather(first.stop(), second.stop())
        await store.close()


@dataclass
class InProcessLike:
    """What the helpers above use of :class:`InProcess`, for a child process."""

    base: str
    http: aiohttp.ClientSession
    store: Store

    @property
    def client(self) -> Client:
        return Client(self.base, self.http)
