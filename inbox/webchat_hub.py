"""The visitors' live side of the webchat: one feed reader per process, fanning the
visitor's own conversation out to their WebSockets and long polls.

The visitor feed is the event log (crm_store/feed.py) restricted to the visitor's one
conversation (``conversation_id("webchat", account, "thread:<visitor_id>")``) and to
three event types: ``message.attached`` (their message, stored and routed),
``message.sent`` (an operator's reply the outbox sent) and ``conversation.read`` (an
operator read it). The cursor is the event ``seq``: gap-safe (the hub's cursor only
moves over events that are written), so a client resuming from its last cursor misses
nothing and gets nothing twice. Notes, other conversations of the contact and anything
else never match the query.

A catch-up (WebSocket ``after``, or the long poll) reads the events of the conversation
up to the hub's cursor through the ``events.conversation_seq`` index, under the hub's
lock, so nothing falls between the catch-up and the live stream.

Presence and typing are not in the log but in the store (crm_store/presence.py), so every
process sees them: each visitor socket heartbeats its row every third of
``presence_ttl_s`` and deletes it on a clean close; the visitor's typing is a field of
that row (written on a change, at most every ``TYPING_S / 3`` while it stays on). An
operator's typing (POST /api/v1/conversations/{id}/typing) is one row per conversation:
this process tells its own sockets at once, and every hub's poll (each ``POLL_S`` while
it holds sockets, one indexed query for all their conversations) tells its sockets when
it changes — including ``on: false`` when it lapses unrenewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import PyMongoError

from channels.base import DeliveryState, StatusUpdate
from crm_store import feed, presence, updates, wake
from crm_store.documents import conversation_id, intake_id
from crm_store.routing_store import find_in
from crm_store.store import Document, Store
from inbox.file_links import LinkKeys
from inbox.socket_writer import write_frames
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.webchat")

FEED_TYPES = ("message.attached", "message.sent", "conversation.read")
POLL_S = 0.2
IDLE_POLL_S = 1.0  # no visitor connected to this process
LINGER_S = 30.0  # keep following the feed this long after the last visitor or long poll
PAGE = 500
QUEUE_LIMIT = 5000
LINK_TTL = timedelta(days=1)
# Typing lapses this long after its last report (the widget and the web inbox repeat it
# every 2.5 s while typing).
TYPING_S = 6.0

# (file id) → a signed path /files/… (inbox/file_links.py)
LinkMaker = Callable[[str], str]


def visitor_conversation(account: str, visitor_id: str) -> str:
    return conversation_id("webchat", account, f"thread:{visitor_id}")


@dataclass(frozen=True, slots=True)
class Item:
    """One feed event with what its frame needs (the message, or the read mark)."""

    seq: int
    type: str
    conversation_id: str
    message: Document | None = None
    up_to: str | None = None


def frame(item: Item, base: str, link: LinkMaker) -> Document:
    """The JSON frame a visitor gets for ``item`` (pure)."""
    cursor = str(item.seq)
    if item.type == "conversation.read":
        return {"type": "read", "up_to": item.up_to, "cursor": cursor}
    msg = item.message or {}
    inbound = msg.get("direction") != "out"
    provider_id = str(msg.get("provider_id") or "")
    client_id = provider_id.split(":", 1)[1] if inbound and ":" in provider_id else None
    attachments = []
    for a in msg.get("attachments") or []:
        url = a.get("url")
        if a.get("file_id"):
            url = base + link(str(a["file_id"]))
        attachments.append(
            {
                "name": a.get("name"),
                "url": url,
                "mime_type": a.get("mime_type"),
                "size": a.get("size"),
            }
        )
    at = msg.get("sent_at") if not inbound else msg.get("received_at")
    at = at or msg.get("received_at")
    return {
        "type": "message",
        "id": msg.get("_id"),
        "client_id": client_id,
        "direction": "in" if inbound else "out",
        "text": msg.get("text") or "",
        "attachments": attachments,
        "at": at.isoformat() if at is not None else None,
        "cursor": cursor,
    }


async def items_of(store: Store, events: list[Document]) -> list[Item]:
    """The feed events as items: their messages and read marks looked up once."""
    msg_ids = [
        e["refs"]["message_id"]
        for e in events
        if e["type"] != "conversation.read" and e.get("refs", {}).get("message_id")
    ]
    found = await find_in(store.messages, "_id", msg_ids) if msg_ids else []
    messages = {d["_id"]: d for d in found}
    read_convs = [e["refs"]["conversation_id"] for e in events if e["type"] == "conversation.read"]
    convs: dict[str, Document] = {}
    if read_convs:
        docs = await find_in(
            store.conversations, "_id", read_convs, {"last_inbound": 1, "account": 1}
        )
        convs = {d["_id"]: d for d in docs}
    out: list[Item] = []
    for e in events:
        conv = e.get("refs", {}).get("conversation_id")
        if e["type"] == "conversation.read":
            c = convs.get(conv, {})
            last = (c.get("last_inbound") or {}).get("provider_id")
            up_to = intake_id("webchat", c["account"], last) if last and c.get("account") else None
            out.append(Item(int(e["seq"]), e["type"], conv, up_to=up_to))
            continue
        msg = messages.get(e.get("refs", {}).get("message_id"))
        if msg is None or msg.get("direction") == "note":
            continue
        out.append(Item(int(e["seq"]), e["type"], conv, message=msg))
    return out


@dataclass(eq=False)
class VisitorSocket:
    account: str
    visitor_id: str
    conversation_id: str
    ws: web.WebSocketResponse
    base: str
    cursor: int = 0
    queue: asyncio.Queue[Document] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    closed: bool = False
    socket_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # its presence row
    operator_typing: bool = False  # what the socket was last told
    typing: bool = False  # what the visitor last reported, and when it was written
    typing_written: float = 0.0


class WebchatHub:
    def __init__(self, store: Store, keys: LinkKeys, presence_ttl_s: float = 60.0) -> None:
        self.store = store
        self.keys = keys
        self.presence_ttl_s = presence_ttl_s
        self.cursor: int | None = None
        self.lock = asyncio.Lock()
        self.sockets: dict[str, set[VisitorSocket]] = {}
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        # Set when this process appends events (crm_store/wake.py) or the change stream
        # shows another's (ingest/event_watch.py): the reader looks at once; else it polls.
        self._woken = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._typing_read = 0.0
        self.interest = wake.Interest(
            wake.EVENTS, lambda: bool(self.sockets or self.waiters), LINGER_S
        )

    async def linker(self) -> LinkMaker:
        """Signed file paths valid for :data:`LINK_TTL` (the key is read once)."""
        signer = await self.keys.get(self.store)
        return lambda file_id: signer.path(file_id, int(time.time() + LINK_TTL.total_seconds()))

    # --- the reader -----------------------------------------------------------------

    async def start(self) -> None:
        self._unsubscribe = wake.subscribe(wake.EVENTS, self._woken.set)
        self.interest.start()
        self._task = asyncio.create_task(self._run(), name="webchat-hub")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.interest.stop()
        await cancel(self._task)
        for subs in list(self.sockets.values()):
            for sub in list(subs):
                with contextlib.suppress(Exception):
                    await sub.ws.close(code=1001, message=b"server shutdown")

    async def current(self) -> int:
        """Where the feed stands now (every event up to it is written): the hub reads
        up to the end first, so what was written before this call is covered."""
        async with self.lock:
            await self._ensure()
            await self._step()
            assert self.cursor is not None
            return self.cursor

    async def _ensure(self) -> int:
        if self.cursor is None:
            last = await self.store.events.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
            cursor = max(0, int(last["seq"]) - PAGE) if last is not None else 0
            while True:
                page = await feed.read(self.store, cursor, limit=PAGE)
                if page.next_after == cursor:
                    break
                cursor = page.next_after
            self.cursor = cursor
        return self.cursor

    async def _run(self) -> None:
        while True:
            self._woken.clear()  # an append from here on wakes the next round
            try:
                async with self.lock:
                    if not self.interest.active():
                        self.cursor = None  # nobody listens: read nothing until one comes
                    else:
                        await self._ensure()
                        await self._step()
                if self.sockets and time.monotonic() - self._typing_read >= POLL_S:
                    self._typing_read = time.monotonic()  # every POLL_S, not every wake
                    await self._operator_typing()
            except PyMongoError as exc:
                log.warning("webchat.store_unavailable", error=type(exc).__name__)
            except Exception:
                log.exception("webchat.hub_step_failed")
            with contextlib.suppress(TimeoutError):
                wait_s = POLL_S if self.sockets or self.waiters else IDLE_POLL_S
                await asyncio.wait_for(self._woken.wait(), wait_s)

    async def _step(self) -> None:
        assert self.cursor is not None
        while True:
            page = await feed.read(self.store, self.cursor, limit=PAGE, types=FEED_TYPES)
            if page.next_after == self.cursor:
                return
            mine = [
                e
                for e in page.events
                if e.get("refs", {}).get("conversation_id") in self.sockets
                or e.get("refs", {}).get("conversation_id") in self.waiters
            ]
            if mine:
                items = await items_of(self.store, mine)
                link = await self.linker()
                for item in items:
                    for sub in list(self.sockets.get(item.conversation_id, ())):
                        if item.seq > sub.cursor:
                            self._push(sub, frame(item, sub.base, link), item)
                    for event in self.waiters.get(item.conversation_id, ()):
                        event.set()
            for subs in self.sockets.values():
                for sub in subs:
                    sub.cursor = max(sub.cursor, page.next_after)
            self.cursor = page.next_after
            if len(page.events) < PAGE:
                return

    async def _operator_typing(self) -> None:
        """Tell each socket whose operator typing changed (on any process)."""
        typing = await presence.typing_operators(self.store, list(self.sockets))
        for conv, subs in list(self.sockets.items()):
            on = conv in typing
            for sub in list(subs):
                if sub.operator_typing != on:
                    sub.operator_typing = on
                    self._push(sub, {"type": "typing", "on": on})

    def _push(self, sub: VisitorSocket, data: Document, item: Item | None = None) -> None:
        if sub.closed:
            return
        try:
            sub.queue.put_nowait(data)
        except asyncio.QueueFull:
            sub.closed = True
            asyncio.get_running_loop().create_task(
                sub.ws.close(code=4008, message=b"too slow: reconnect with your cursor")
            )
            return
        if item is not None:
            sub.cursor = max(sub.cursor, item.seq)

    # --- reading one conversation ---------------------------------------------------

    async def history(self, conv_id: str, after: int, until: int) -> tuple[list[Item], int]:
        """The conversation's feed items with ``after < seq <= until``, at most a page
        of events, and how far they go (``until`` when the page is the last one)."""
        docs = self.store.events.find(
            {
                "refs.conversation_id": conv_id,
                "type": {"$in": list(FEED_TYPES)},
                "seq": {"$gt": after, "$lte": until},
            },
            {"seq": 1, "type": 1, "refs": 1},
            sort=[("seq", ASCENDING)],
            limit=PAGE,
        )
        events = [d async for d in docs]
        upto = int(events[-1]["seq"]) if len(events) >= PAGE else until
        return await items_of(self.store, events), upto

    async def join(self, sub: VisitorSocket, after: int) -> None:
        """Send everything after ``after`` (0: the whole conversation), then stream live."""
        self.interest.heard()
        async with self.lock:
            end = await self._ensure()
            start = after
            link = await self.linker()
            while start < end:
                items, start = await self.history(sub.conversation_id, start, end)
                for item in items:
                    self._push(sub, frame(item, sub.base, link), item)
            sub.cursor = max(end, start)
            self.sockets.setdefault(sub.conversation_id, set()).add(sub)

    def leave(self, sub: VisitorSocket) -> None:
        subs = self.sockets.get(sub.conversation_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.sockets[sub.conversation_id]

    async def poll(self, conv_id: str, after: int, wait_s: float) -> tuple[list[Item], int]:
        """The long poll: items after ``after`` and the new cursor, waiting up to
        ``wait_s`` for the first one."""
        event = asyncio.Event()
        self.interest.heard()
        self.waiters.setdefault(conv_id, set()).add(event)
        try:
            items, cursor = await self._read(conv_id, after)
            if items or wait_s <= 0:
                return items, cursor
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
            return await self._read(conv_id, max(after, 0))
        finally:
            waiting = self.waiters.get(conv_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self.waiters[conv_id]

    async def _read(self, conv_id: str, after: int) -> tuple[list[Item], int]:
        end = await self.current()
        if after >= end:
            return [], after
        return await self.history(conv_id, after, end)

    def send(self, sub: VisitorSocket, data: Document) -> None:
        """Queue a frame that is not in the feed (ping, pong, typing)."""
        self._push(sub, data)

    async def typing(self, conv_id: str, on: bool) -> int:
        """An operator types in ``conv_id``: record it for every process, tell this
        process's visitor sockets at once; how many visitor sockets are open anywhere."""
        await presence.operator_typing(self.store, conv_id, TYPING_S if on else None)
        for sub in list(self.sockets.get(conv_id, ())):
            sub.operator_typing = on
            self._push(sub, {"type": "typing", "on": on})
        return await presence.visitor_sockets(self.store, conv_id)

    async def visitor_typed(self, sub: VisitorSocket, on: bool) -> None:
        """The visitor on ``sub`` reported typing: written on a change, and while it
        stays on at most every ``TYPING_S / 3``."""
        now = time.monotonic()
        if on == sub.typing and (not on or now - sub.typing_written < TYPING_S / 3):
            return
        try:
            await presence.visitor_typing(
                self.store,
                sub.socket_id,
                sub.conversation_id,
                TYPING_S if on else None,
                self.presence_ttl_s,
            )
        except PyMongoError as exc:  # the next report tries again
            log.warning("webchat.presence_failed", error=type(exc).__name__)
            return
        sub.typing, sub.typing_written = on, now

    async def alive(self, sub: VisitorSocket) -> None:
        """``sub`` is open: its visitor counts as online on every process for
        ``presence_ttl_s`` from now."""
        try:
            await presence.visitor_alive(
                self.store, sub.socket_id, sub.conversation_id, self.presence_ttl_s
            )
        except PyMongoError as exc:
            log.warning("webchat.presence_failed", error=type(exc).__name__)

    async def heartbeat(self, sub: VisitorSocket) -> None:
        """Renew ``sub``'s presence every third of the TTL while it is open."""
        while True:
            await asyncio.sleep(self.presence_ttl_s / 3)
            await self.alive(sub)

    async def gone(self, sub: VisitorSocket) -> None:
        """``sub`` closed: its visitor no longer counts (a failure leaves it to lapse)."""
        with contextlib.suppress(PyMongoError):
            await presence.gone(self.store, presence.VISITOR, sub.socket_id)


async def writer(store: Store, sub: VisitorSocket) -> None:
    """Send the socket's frames in order; an operator reply that reached the socket is
    ``delivered``."""

    async def sent(data: Document) -> None:
        if data.get("type") == "message" and data.get("direction") == "out" and data.get("id"):
            await _mark(store, sub.account, [str(data["id"])], DeliveryState.DELIVERED)

    await write_frames(sub, sent)


async def mark_read(store: Store, account: str, conv_id: str, up_to: str) -> int:
    """The visitor read the conversation up to message ``up_to``: every operator reply
    up to it is ``read``; how many moved."""
    anchor = await store.messages.find_one(
        {"_id": up_to, "conversation_id": conv_id}, {"received_at": 1}
    )
    if anchor is None:
        return 0
    docs = store.messages.find(
        {
            "conversation_id": conv_id,
            "direction": "out",
            "received_at": {"$lte": anchor["received_at"]},
            "state_rank": {"$lt": 4},
            "provider_id": {"$exists": True},
        },
        {"_id": 1},
    )
    ids = [str(d["_id"]) async for d in docs]
    return await _mark(store, account, ids, DeliveryState.READ)


async def _mark(store: Store, account: str, ids: Iterable[str], state: DeliveryState) -> int:
    moved = 0
    for mid in ids:
        try:
            update = StatusUpdate(channel="webchat", account=account, provider_id=mid, state=state)
            moved += int(await updates.apply_status(store, update))
        except PyMongoError as exc:
            log.warning("webchat.mark_failed", state=state.value, error=type(exc).__name__)
    return moved


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
