"""Live updates: ``GET /api/v1/ws`` — a WebSocket of the events an operator may see.

Connect with ``?token=<API token>`` (browsers cannot set headers on a WebSocket; an
``Authorization: Bearer`` header works too) and optionally ``&after=<cursor>``. A bad
token is refused before the upgrade (401 problem+json), a plain GET without the upgrade
is 426. Frames, JSON:

- ``{"type": "event", "event": <feed envelope>, "cursor": <sequence>}`` — in feed order;
- ``{"type": "cursor", "cursor": N}`` — nothing for you up to N: remember it;
- ``{"type": "resync", "cursor": N}`` — you were away too long (more than
  ``MAX_CATCHUP`` events): reload what you show, then carry on from N;
- ``{"type": "pong", "cursor": N}`` — the answer to ``{"type": "ping"}``;
- ``{"type": "error", "code": "invalid_command", …}`` — a message the server did not
  understand (the socket stays open).

Resume: reconnect with ``after`` = the last cursor you got (or send
``{"type": "resume", "after": N}`` on an open socket); every event you may see after it
arrives, none twice. Without ``after`` the stream starts now; the first frame is then a
``cursor`` frame saying where.

One reader per process (:class:`Hub`) reads the feed (crm_store/feed.py: ordered and
gap-safe) and fans each page out to the process's sockets, filtered per user by
inbox/live.py; a socket that cannot keep up (``QUEUE_LIMIT`` frames behind) is closed with
4008 and reconnects with its cursor. The reader looks as soon as this process appends
events (crm_store/wake.py) or the change stream on ``events`` shows another process's
(ingest/event_watch.py, where the store offers change streams), and every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from config.settings import get_settings
from crm_store import feed, presence, wake
from crm_store.routing_store import find_in
from crm_store.store import Document
from inbox.api import Call, route
from inbox.auth import ApiError, Principal, authenticate, principal_for_token
from inbox.bounds import INT64_MAX
from inbox.live import Facts, visible
from inbox.socket_writer import write_frames
from ingest.context import SERVICE, Service
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.live")

POLL_S = 0.3
PAGE = 500
MAX_CATCHUP = 10_000
QUEUE_LIMIT = 2000
CURSOR_EVERY_S = 5.0
LINGER_S = 30.0  # keep following the feed this long after the last socket closed
TOO_SLOW = 4008


class WsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(default=None, max_length=200, description="the API token")
    after: int | None = Field(
        default=None, ge=0, le=INT64_MAX, description="resume after this cursor"
    )


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    ws: web.WebSocketResponse
    cursor: int  # every event up to here has been considered for this socket
    queue: asyncio.Queue[Document] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    sent: int = -1  # the cursor of the last frame queued for the client
    last_frame: float = field(default_factory=time.monotonic)
    closed: bool = False

    def push(self, frame: Document) -> bool:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        self._sent(frame)
        return True

    async def put(self, frame: Document) -> None:
        """Queue ``frame``, waiting while the client is behind (catch-up only)."""
        await self.queue.put(frame)
        self._sent(frame)

    def _sent(self, frame: Document) -> None:
        self.sent = int(frame["cursor"])
        self.last_frame = time.monotonic()

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


async def facts_for(svc: Service, events: list[Document]) -> Facts:
    """Everything :func:`inbox.live.visible` needs for a page, read once."""
    conv_ids = {
        e["refs"]["conversation_id"] for e in events if e.get("refs", {}).get("conversation_id")
    }
    found = await find_in(svc.store.conversations, "_id", conv_ids, {"department": 1})
    departments: dict[str, str | None] = {d["_id"]: d.get("department") for d in found}
    user_department = {u.id: u.department for u in svc.config.users.users}
    rest = [e for e in events if e.get("refs", {}).get("conversation_id") not in departments]
    entity = await feed.responsible_departments(svc.store, rest, user_department) if rest else {}
    return Facts(departments, entity, user_department)


class Hub:
    """The process's one feed reader and its subscribers."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.subscribers: set[Subscriber] = set()  # streaming live
        self.sockets: set[Subscriber] = set()  # every open socket (some catching up)
        self.cursor: int | None = None
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.presence_ttl_s = 60.0  # setup() reads OMNIROUTE_PRESENCE_TTL_S
        self._woken = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self.interest = wake.Interest(wake.EVENTS, lambda: bool(self.sockets), LINGER_S)

    async def start(self) -> None:
        self._unsubscribe = wake.subscribe(wake.EVENTS, self._woken.set)
        self.interest.start()
        self._task = asyncio.create_task(self._run(), name="live-hub")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.interest.stop()
        await cancel(self._task)
        for sub in list(self.sockets):
            with contextlib.suppress(Exception):
                await sub.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def _start_cursor(self) -> int:
        """The current end of the feed, short of any event still being written."""
        last = await self.svc.store.events.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
        if last is None:
            return 0
        cursor = max(0, int(last["seq"]) - PAGE)
        while True:
            page = await feed.read(self.svc.store, cursor, limit=PAGE)
            if page.next_after == cursor:
                return cursor
            cursor = page.next_after

    async def _run(self) -> None:
        while True:
            self._woken.clear()  # an append from here on wakes the next round
            try:
                async with self.lock:
                    if not self.interest.active():
                        self.cursor = None  # nobody listens: read nothing until a socket opens
                    else:
                        if self.cursor is None:
                            self.cursor = await self._start_cursor()
                        await self._step()
            except PyMongoError as exc:
                log.warning("live.store_unavailable", error=type(exc).__name__)
            except Exception:  # keep serving the other sockets; the cursor did not move
                log.exception("live.step_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), POLL_S)

    async def _step(self) -> None:
        """Read what is new (also while sockets are catching up and for ``LINGER_S``
        after the last closed, so the cursor stays at the end and every event up to it is
        known to be written) and fan it out."""
        assert self.cursor is not None
        while True:
            page = await feed.read(self.svc.store, self.cursor, limit=PAGE)
            if page.next_after == self.cursor:
                break
            if self.subscribers and page.events:
                facts = await facts_for(self.svc, page.events)
                for sub in list(self.subscribers):
                    self._deliver(sub, page.events, facts, page.next_after)
            else:
                for sub in self.subscribers:
                    sub.cursor = max(sub.cursor, page.next_after)
            self.cursor = page.next_after
            if len(page.events) < PAGE:
                break
        now = time.monotonic()
        for sub in list(self.subscribers):
            if sub.sent < sub.cursor and now - sub.last_frame >= CURSOR_EVERY_S:
                self._push(sub, {"type": "cursor", "cursor": sub.cursor})

    @staticmethod
    def _frames(sub: Subscriber, events: list[Document], facts: Facts) -> list[Document]:
        return [
            {"type": "event", "event": feed.envelope(e), "cursor": e["seq"]}
            for e in events
            if e["seq"] > sub.cursor and visible(e, sub.principal, facts)
        ]

    def _deliver(self, sub: Subscriber, events: list[Document], facts: Facts, upto: int) -> None:
        for frame in self._frames(sub, events, facts):
            if not self._push(sub, frame):
                return
        sub.cursor = max(sub.cursor, upto)

    def _push(self, sub: Subscriber, frame: Document) -> bool:
        if sub.push(frame):
            return True
        log.info("live.too_slow", user=sub.principal.user.id)
        sub.closed = True
        self.subscribers.discard(sub)
        asyncio.get_running_loop().create_task(
            sub.ws.close(code=TOO_SLOW, message=b"too slow: reconnect with your cursor")
        )
        return False

    async def join(self, sub: Subscriber, after: int | None) -> None:
        """Catch ``sub`` up from ``after`` to the hub's cursor, then stream live. Also a
        resume on an open socket: what was queued and not yet sent is dropped first.

        The catch-up reads on its own, paced by the client, without holding up the hub;
        only the last stretch (at most a page behind) is read under the hub's lock, so
        nothing falls between the catch-up and the live stream."""
        async with self.lock:
            self.subscribers.discard(sub)
            sub.drain()
            if self.cursor is None:
                self.cursor = await self._start_cursor()
            if after is None or after >= self.cursor:
                sub.cursor = self.cursor if after is None else after
            elif self.cursor - after > MAX_CATCHUP:
                sub.cursor = self.cursor
                sub.push({"type": "resync", "cursor": self.cursor})
            else:
                sub.cursor = after
        while self._end() - sub.cursor > PAGE and not sub.closed:
            page = await feed.read(self.svc.store, sub.cursor, limit=PAGE, until=self._end())
            if page.next_after == sub.cursor:
                break
            facts = await facts_for(self.svc, page.events)
            for frame in self._frames(sub, page.events, facts):
                await sub.put(frame)
            sub.cursor = page.next_after
        async with self.lock:
            while sub.cursor < self.cursor and not sub.closed:
                page = await feed.read(self.svc.store, sub.cursor, limit=PAGE, until=self.cursor)
                if page.next_after == sub.cursor:
                    break
                facts = await facts_for(self.svc, page.events)
                self._deliver(sub, page.events, facts, page.next_after)
            if sub.closed:
                return
            # Where the stream stands now: a client that connected without a cursor
            # learns it, and one that resumed learns how far its catch-up went.
            if sub.sent < sub.cursor:
                self._push(sub, {"type": "cursor", "cursor": sub.cursor})
            self.subscribers.add(sub)

    def _end(self) -> int:
        assert self.cursor is not None, "set by the first join or poll"
        return self.cursor

    def open(self, sub: Subscriber) -> None:
        """A socket opened: follow the feed from now on (the first one wakes the reader)."""
        self.interest.heard()
        self.sockets.add(sub)
        self._woken.set()

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self.sockets.discard(sub)


HUB: web.AppKey[Hub] = web.AppKey("live_hub", Hub)


async def _principal(request: web.Request, svc: Service, token: str | None) -> Principal:
    if token and "Authorization" not in request.headers:
        return await principal_for_token(svc.store, svc.config, token)
    return await authenticate(request, svc.store, svc.config)


@route(
    "GET",
    "/api/v1/ws",
    summary="Live updates over a WebSocket (events the caller may see, resumable)",
    tag="live",
    query=WsQuery,
    public=True,
    raw={101: ("application/json", "the WebSocket upgrade; frames are JSON")},
    errors=(401, 403, 426),
)
async def live(call: Call) -> web.StreamResponse:
    request, svc = call.request, call.svc
    q = call.q(WsQuery)
    principal = await _principal(request, svc, q.token)
    ws = web.WebSocketResponse(heartbeat=30.0)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "connect with a WebSocket upgrade")
    await ws.prepare(request)
    hub = request.app[HUB]
    sub = Subscriber(principal, ws, cursor=0)
    writer = asyncio.create_task(write_frames(sub))
    socket_id = uuid.uuid4().hex
    await _alive(hub, socket_id, principal.user.id)
    beat = asyncio.create_task(_heartbeat(hub, socket_id, principal.user.id))
    hub.open(sub)
    try:
        await hub.join(sub, q.after)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue  # protocol pings are answered by aiohttp; binary is ignored
            command = _command(msg.data)
            if command is None:
                sub.push({**_BAD_COMMAND, "cursor": sub.cursor})
            elif command.type == "resume":
                await hub.join(sub, command.after)
            else:
                sub.push({"type": "pong", "cursor": sub.cursor})
    finally:
        hub.leave(sub)
        await cancel(beat)
        await cancel(writer)
        with contextlib.suppress(PyMongoError):
            await presence.gone(svc.store, presence.OPERATOR, socket_id)
    return ws


async def _alive(hub: Hub, socket_id: str, user: str) -> None:
    """The socket is open: its operator counts as online on every process for the
    presence TTL (crm_store/presence.py; the webchat config's ``online``)."""
    try:
        await presence.operator_alive(hub.svc.store, socket_id, user, hub.presence_ttl_s)
    except PyMongoError as exc:
        log.warning("live.presence_failed", error=type(exc).__name__)


async def _heartbeat(hub: Hub, socket_id: str, user: str) -> None:
    while True:
        await asyncio.sleep(hub.presence_ttl_s / 3)
        await _alive(hub, socket_id, user)


class Command(BaseModel):
    """What a client may send: ``{"type": "resume", "after": N}`` or ``{"type": "ping"}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["resume", "ping"]
    after: int | None = Field(default=None, ge=0, le=INT64_MAX)


_BAD_COMMAND = {
    "type": "error",
    "code": "invalid_command",
    "detail": 'send {"type": "resume", "after": N} or {"type": "ping"}',
}


def _command(text: str) -> Command | None:
    try:
        return Command.model_validate_json(text)
    except ValidationError:
        return None


def setup(app: web.Application) -> None:
    """The hub of this app (its service must be set); started and stopped with it."""
    hub = Hub(app[SERVICE])
    hub.presence_ttl_s = get_settings().presence_ttl_s
    app[HUB] = hub

    async def start(_: web.Application) -> None:
        await hub.start()

    async def stop(_: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
