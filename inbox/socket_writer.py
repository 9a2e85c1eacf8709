"""The one loop that writes a socket's queued frames, shared by the operator hub
(inbox/live_api.py) and the visitor hub (inbox/webchat_hub.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

Frame = dict[str, Any]


class FrameSocket(Protocol):
    queue: asyncio.Queue[Frame]
    ws: web.WebSocketResponse
    closed: bool


async def write_frames(
    sub: FrameSocket, sent: Callable[[Frame], Awaitable[None]] | None = None
) -> None:
    """Send ``sub``'s frames in order, then call ``sent`` with each one that went out;
    once the client is gone, discard them (so a producer waiting for queue space never
    blocks)."""
    while True:
        frame = await sub.queue.get()
        if sub.closed or sub.ws.closed:
            sub.closed = True
            continue
        try:
            await sub.ws.send_str(orjson.dumps(frame).decode())
        except (ConnectionError, RuntimeError):
            sub.closed = True
            continue
        if sent is not None:
            await sent(frame)
