"""Webchat presence across processes (crm_store/presence.py): an operator connected to
one process makes the widget on another say ``online`` (and ``offline`` once they leave,
or once their process dies and its heartbeat lapses); a visitor's socket and typing on one
process show on the operator API of another; an operator's typing sent to one process
reaches the visitor's socket held by another.

One service runs as a child process (``omniroute serve``), the other in this process;
both share the store over TCP. The presence TTL is 3 s (heartbeat every second)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from crm_store import tokens
from inbox.webchat_http import CLOCK_ENV
from inbox.webchat_hub import visitor_conversation
from tests.helpers import wait_for
from tests.service import InProcess, Proc, in_process, proc
from tests.test_webchat_api import call, send, session
from tests.test_webchat_ws import ANNA, InProcessLike, frames_until, operator, visitor_ws

pytestmark = pytest.mark.slow

TTL_S = "3"
MONDAY_10 = "2025-05-19T10:00:00+03:00"  # working hours of the example calendar


@asynccontextmanager
async def two_processes(
    mongo_uri: str, db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Proc, InProcessLike, InProcess]]:
    """Process A (a child) and process B (this one), both in working hours."""
    monkeypatch.setenv(CLOCK_ENV, MONDAY_10)
    monkeypatch.setenv("OMNIROUTE_PRESENCE_TTL_S", TTL_S)
    child = proc(mongo_uri, db_name, tmp_path)
    await child.start()
    try:
        async with in_process(mongo_uri, db_name) as b:
            yield child, InProcessLike(child.base, b.client.http, b.store), b
    finally:
        await child.stop()


async def online(svc: InProcess) -> bool:
    """The widget's ``online`` (config is limited to 60 a minute per address: poll it
    every half second)."""
    status, cfg, _ = await call(svc, "GET", "config")
    assert status == 200, cfg
    return bool(cfg["online"])


async def test_an_operator_on_one_process_makes_the_widget_on_another_online(
    mongo_uri: str, db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_processes(mongo_uri, db_name, tmp_path, monkeypatch) as (child, a, b):
        assert not await online(b)
        token, _ = await tokens.issue(b.store, ANNA)  # on the sales line
        url = f"{a.base}/api/v1/ws?token={token}"
        async with b.client.http.ws_connect(url) as ws:
            await ws.receive(timeout=10)  # the first cursor frame: joined
            assert await online(b)
        # a clean close: offline on the other process at once
        await wait_for(
            lambda: _not(online(b)), interval=0.5, message="still online after the close"
        )

        # the operator's process dies: offline once its last heartbeat lapses
        live = await b.client.http.ws_connect(url)
        await live.receive(timeout=10)
        assert await online(b)
        child.kill()
        await wait_for(
            lambda: _not(online(b)), timeout=15, interval=0.5, message="online after the crash"
        )
        # the row is still there (the TTL index is slow): `until` decided
        assert await b.store["presence"].count_documents({"kind": "operator"}) == 1
        await live.close()


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_visitor_presence_and_typing_both_ways_across_processes(
    mongo_uri: str, db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_processes(mongo_uri, db_name, tmp_path, monkeypatch) as (_, a, b):
        s = await session(b, name="Olga")
        status, body, _ = await send(b, s["visitor_token"], "hello-1")
        assert status == 200, body
        await b.routed()
        conv = visitor_conversation("main-site", s["visitor_id"])
        op, _ = await tokens.issue(b.store, ANNA)
        path = f"/api/v1/conversations/{conv}/visitor"

        before = await operator(a, "GET", path, {}, op)
        assert (before["online"], before["typing"]) == (False, False)

        # the visitor's socket is on B; A's operator API sees them online, then typing
        ws = await visitor_ws(b, s["visitor_token"], after="0")
        await frames_until(ws, lambda f: f["type"] == "message")
        view = await operator(a, "GET", path, {}, op)
        assert (view["online"], view["typing"]) == (True, False)
        await ws.send_str(orjson.dumps({"type": "typing", "on": True}).decode())

        async def typing_on_a() -> bool:
            return bool((await operator(a, "GET", path, {}, op))["typing"])

        await wait_for(typing_on_a, message="A never saw the visitor typing on B")
        await ws.send_str(orjson.dumps({"type": "typing", "on": False}).decode())
        await wait_for(lambda: _not(typing_on_a()), message="A still shows the visitor typing")

        # the operator types on A: the visitor's socket on B hears it, on and off
        told = await operator(a, "POST", f"/api/v1/conversations/{conv}/typing", {"on": True}, op)
        assert told == {"visitors": 1}  # the socket on B, counted from A
        got = await frames_until(ws, lambda f: f["type"] == "typing")
        assert got[-1] == {"type": "typing", "on": True}
        await operator(a, "POST", f"/api/v1/conversations/{conv}/typing", {"on": False}, op)
        got = await frames_until(ws, lambda f: f["type"] == "typing")
        assert got[-1] == {"type": "typing", "on": False}

        # the visitor leaves B: offline on A
        await ws.close()

        async def gone() -> bool:
            view = await operator(a, "GET", path, {}, op)
            return not view["online"] and not view["typing"]

        await wait_for(gone, message="A still shows the visitor online")
