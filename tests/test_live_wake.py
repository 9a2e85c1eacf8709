"""The live hubs look as soon as this process appends events (crm_store/wake.py), or the
change stream on ``events`` shows another process's (ingest/event_watch.py), not at their
next poll: with the polls set to an hour, a customer's message still reaches the
operator's WebSocket, an operator's reply the visitor's, and another process's event the
operator's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm_store import tokens, wake
from crm_store.routing_store import reserve_sequence
from crm_store.store import Document, Store
from inbox import live_api, webchat_hub
from tests.service import in_process
from tests.test_inbox_ws import connect, event_of, frames_until, write
from tests.test_webchat_api import CONFIG
from tests.test_webchat_ws import frames_until as visitor_frames_until
from tests.test_webchat_ws import is_out, operator, started_chat, visitor_ws

HOUR = 3600.0


async def from_another_process(
    mongo_uri: str, db_name: str, original: Document, event_id: str
) -> int:
    """A copy of ``original`` appended as another process would: its own client, its own
    writer, no in-process wake-up. Returns its sequence number."""
    other = Store.open(mongo_uri, db_name)
    try:
        seq = await reserve_sequence(other, 1)
        copy = {**original, "_id": event_id, "seq": seq, "writer": "another-process"}
        copy["written_at"] = datetime.now(UTC)
        await other.events.insert_one(copy)
    finally:
        await other.close()
    return seq


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_api, "POLL_S", HOUR)
    monkeypatch.setattr(webchat_hub, "POLL_S", HOUR)
    monkeypatch.setattr(webchat_hub, "IDLE_POLL_S", HOUR)


@pytest.mark.usefixtures("no_polling")
async def test_a_message_reaches_the_operator_without_a_poll(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        token, _ = await tokens.issue(svc.store, "anna.smirnova")
        ws = await connect(svc, token)
        conv = await write(svc, "wake-1", "+79001239001")
        frames = await frames_until(ws, lambda f: event_of(f, "message.attached"))
        assert frames[-1]["event"]["refs"]["conversation_id"] == conv["_id"]
        await ws.close()


@pytest.mark.usefixtures("no_polling")
async def test_a_reply_reaches_the_visitor_without_a_poll(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, CONFIG) as svc:
        s, conv, op = await started_chat(svc)
        ws = await visitor_ws(svc, s["visitor_token"], after="0")
        await visitor_frames_until(ws, lambda f: f["type"] == "message")  # the history
        path = f"/api/v1/conversations/{conv}/messages"
        reply = await operator(svc, "POST", path, {"text": "Yes, we deliver"}, op)
        got = await visitor_frames_until(ws, is_out)
        assert got[-1]["id"] == reply["id"]
        await ws.close()


@pytest.mark.usefixtures("no_polling")
async def test_another_process_event_arrives_through_the_change_stream(
    mongo_uri: str, db_name: str
) -> None:
    """An event another process wrote (inserted here behind the process's back: no
    in-process wake-up) reaches the socket through the change stream on ``events``."""
    async with in_process(mongo_uri, db_name) as svc:
        token, _ = await tokens.issue(svc.store, "anna.smirnova")
        ws = await connect(svc, token)
        await write(svc, "wake-2", "+79001239002")
        first = await frames_until(ws, lambda f: event_of(f, "message.attached"))
        original = await svc.store.events.find_one({"seq": first[-1]["cursor"]})
        assert original is not None
        seq = await from_another_process(mongo_uri, db_name, original, "from-another-process")
        got = await frames_until(ws, lambda f: f.get("cursor") == seq and f["type"] == "event")
        assert got[-1]["event"]["type"] == "message.attached"
        await ws.close()


@pytest.mark.usefixtures("no_polling")
async def test_nobody_listening_follows_nothing_until_a_socket_opens(
    mongo_uri: str, db_name: str
) -> None:
    """A process without sockets or long polls does not follow the feed for them (no
    change stream, no hub reads); the first socket starts both, and an event another
    process writes right after the socket opened still arrives."""
    async with in_process(mongo_uri, db_name) as svc:
        await write(svc, "wake-3", "+79001239003")
        assert not wake.wanted(wake.EVENTS)
        token, _ = await tokens.issue(svc.store, "anna.smirnova")
        ws = await connect(svc, token)  # returns once joined: its first frame says where
        assert wake.wanted(wake.EVENTS)
        original = await svc.store.events.find_one({"type": "message.attached"})
        assert original is not None
        seq = await from_another_process(mongo_uri, db_name, original, "while-the-stream-opens")
        got = await frames_until(ws, lambda f: f.get("cursor") == seq and f["type"] == "event")
        assert got[-1]["event"]["type"] == "message.attached"
        await ws.close()
