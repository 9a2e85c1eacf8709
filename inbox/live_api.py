"""Live updates: ``GET /api/v1/ws`` — a WebSocket of the events an operator may see.

Connect with ``?token=<API token>`` (browsers cannot set headers on a WebSocket; an
``Authorization: Bearer`` header works too) and optionally ``&after=<cursor>``. A bad
token is refused before the upgrade (401 problem+json), a plain GET without the upgrade
is 426. Frames, JSON:

- ``{"type": "event", "event": <feed envelope>, "cursor": <sequence>}`` — in feed order;
- ``{"type": "cursor", "cursor": N}`` — nothing for you up to N: remember it;
- ``{"type": "resync", "cursor": N}`` — you were away too long (more than
  ``MAX_CATCHUP`` events): reload what you show, then carry on from N.

Resume: reconnect with ``after`` = the last cursor you got; every event you may see after
it arrives, none twice. Without ``after`` the stream starts now.

One reader per process (:class:`Hub`) polls the feed (crm_store/feed.py: ordered and
gap-safe) and fans each page out to the process's sockets, filtered per user by
inbox/live.py; a socket that cannot keep up (``QUEUE_LIMIT`` frames behind) is closed with
4008 and reconnects with its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from config.models import Role
from crm_store import feed, tokens
from crm_store.store import Document
from inbox.api import Call, route
from inbox.auth import ApiError, Principal, authenticate, visible_departments
from inbox.live import Facts, visible
from ingest.context import SERVICE, Service

log = structlog.get_logger("omniroute.live")

POLL_S = 0.3
PAGE = 500
MAX_CATCHUP = 10_000
QUEUE_LIMIT = 2000
CURSOR_EVERY_S = 5.0
TOO_SLOW = 4008


class WsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(default=None, max_length=200, description="the API token")
    after: int | None = Field(default=None, ge=0, description="resume after this cursor")


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    ws: web.WebSocketResponse
    cursor: int
    queue: asyncio.Queue[Document] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    last_frame: float = field(default_factory=time.monotonic)

    def push(self, frame: Document) -> bool:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        self.last_frame = time.monotonic()
        return True


async def facts_for(svc: Service, events: list[Document]) -> Facts:
    """Everything :func:`inbox.live.visible` needs for a page, read once."""
    conv_ids = {
        e["refs"]["conversation_id"] for e in events if e.get("refs", {}).get("conversation_id")
    }
    departments: dict[str, str | None] = {}
    for cid in conv_ids:  # point reads: cheap on every store
        doc = await svc.store.conversations.find_one({"_id": cid}, {"department": 1})
        if doc is not None:
            departments[cid] = doc.get("department")
    user_department = {u.id: u.department for u in svc.config.users.users}
    rest = [e for e in events if e.get("refs", {}).get("conversation_id") not in departments]
    entity = await feed.responsible_departments(svc.store, rest, user_department) if rest else {}
    return Facts(departments, entity, user_department)


class Hub:
    """The process's one feed reader and its subscribers."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self.subscribers):
            with contextlib.suppress(Exception):
                await sub.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def _start_cursor(self) -> int:
        last = await self.svc.store.events.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return int(last["seq"]) if last else 0

    async def _run(self) -> None:
        while True:
            try:
                async with self.lock:
                    if self.cursor is None:
                        self.cursor = await self._start_cursor()
                    if self.subscribers:
                        await self._step()
            except PyMongoError as exc:
                log.warning("live.store_unavailable", error=type(exc).__name__)
            await asyncio.sleep(POLL_S)

    async def _step(self) -> None:
        assert self.cursor is not None
        while True:
            page = await feed.read(self.svc.store, self.cursor, limit=PAGE)
            if page.next_after == self.cursor:
                break
            facts = await facts_for(self.svc, page.events)
            for sub in list(self.subscribers):
                self._deliver(sub, page.events, facts, page.next_after)
            self.cursor = page.next_after
            if len(page.events) < PAGE:
                break
        now = time.monotonic()
        for sub in list(self.subscribers):
            if now - sub.last_frame > CURSOR_EVERY_S and sub.cursor < self.cursor:
                sub.cursor = self.cursor
                self._push(sub, {"type": "cursor", "cursor": self.cursor})

    def _deliver(self, sub: Subscriber, events: list[Document], facts: Facts, upto: int) -> None:
        for e in events:
            if e["seq"] <= sub.cursor or not visible(e, sub.principal, facts):
                continue
            frame = {"type": "event", "event": feed.envelope(e), "cursor": e["seq"]}
            if not self._push(sub, frame):
                return
        sub.cursor = max(sub.cursor, upto)

    def _push(self, sub: Subscriber, frame: Document) -> bool:
        if sub.push(frame):
            return True
        log.info("live.too_slow", user=sub.principal.user.id)
        self.subscribers.discard(sub)
        asyncio.get_running_loop().create_task(
            sub.ws.close(code=TOO_SLOW, message=b"too slow: reconnect with your cursor")
        )
        return False

    async def join(self, sub: Subscriber, after: int | None) -> None:
        """Catch ``sub`` up from ``after`` to the hub's cursor, then stream live."""
        async with self.lock:
            if self.cursor is None:
                self.cursor = await self._start_cursor()
            if after is None or after >= self.cursor:
                sub.cursor = self.cursor if after is None else after
            elif self.cursor - after > MAX_CATCHUP:
                sub.cursor = self.cursor
                sub.push({"type": "resync", "cursor": self.cursor})
            else:
                sub.cursor = after
                while sub.cursor < self.cursor:
                    page = await feed.read(
                        self.svc.store, sub.cursor, limit=PAGE, until=self.cursor
                    )
                    if page.next_after == sub.cursor:
                        break
                    facts = await facts_for(self.svc, page.events)
                    self._deliver(sub, page.events, facts, page.next_after)
            self.subscribers.add(sub)

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)


HUB: web.AppKey[Hub] = web.AppKey("live_hub", Hub)


async def _principal(request: web.Request, svc: Service, token: str | None) -> Principal:
    if token and "Authorization" not in request.headers:
        record = await tokens.lookup(svc.store, token)
        user = svc.config.user(record["user_id"]) if record else None
        if record is None or user is None or not user.active:
            raise ApiError(401, "unauthenticated", "unknown, revoked or inactive token")
        if user.role is Role.NO_ACCESS:
            raise ApiError(403, "forbidden", "this user has no access to the CRM")
        return Principal(user, visible_departments(svc.config, user))
    return await authenticate(request, svc.store, svc.config)


async def _writer(sub: Subscriber) -> None:
    while True:
        frame = await sub.queue.get()
        await sub.ws.send_str(orjson.dumps(frame).decode())


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
    writer = asyncio.create_task(_writer(sub))
    try:
        await hub.join(sub, q.after)
        async for msg in ws:  # the client only pings; anything else is ignored
            if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        hub.leave(sub)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


def setup(app: web.Application) -> None:
    """The hub of this app (its service must be set); started and stopped with it."""
    hub = Hub(app[SERVICE])
    app[HUB] = hub

    async def start(_: web.Application) -> None:
        await hub.start()

    async def stop(_: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
