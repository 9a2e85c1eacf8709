"""Wakes this process's live hubs when any process appends events.

A change stream on ``events`` (inserts only, nothing of the documents but the resume
token) where the store offers one — a replica set, Atlas, the embedded store; each insert
notifies :data:`crm_store.wake.EVENTS`, so an event written by another process reaches
this process's operator and visitor sockets without waiting for the hubs' poll. A store
without change streams (a standalone ``mongod``) says so once, and the hubs keep
polling (inbox/live_api.py ``POLL_S``, inbox/webchat_hub.py ``POLL_S``). Events of this
process wake the hubs anyway, directly from crm_store/events.append.

The stream is followed only while a hub of this process has listeners (crm_store/wake.py
``wanted``: an open socket, a long poll, or one that closed less than the hubs' linger
ago): a process nobody watches live — a worker, a webhook-only node — reads nothing per
event for them. A hub that gets its first listener says :data:`crm_store.wake.WANTED`;
the stream is reopened then (what was appended meanwhile the hub reads from its cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from pymongo.errors import OperationFailure, PyMongoError

from crm_store import wake
from crm_store.store import Store
from crm_store.wake import EVENTS, PROCESS, notify
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.event_watch")

# "$changeStream is only supported on replica sets" (and its older wording).
NOT_OFFERED = frozenset({40573, 40324})
# Other processes' inserts: this process's own events woke its hubs already.
PIPELINE: list[dict[str, Any]] = [
    {"$match": {"operationType": "insert", "fullDocument.writer": {"$ne": PROCESS}}},
    {"$project": {"_id": 1}},
]
AWAIT_MS = 1000  # one getMore waits this long for a change; then the demand is looked at
# At most one getMore per this interval: a server may end an awaiting getMore on any write
# to any collection (the embedded one does, then filters), which would cost a round trip
# per write; another process's event waits this much longer at most.
GAP_S = 0.05
IDLE_CHECK_S = 5.0  # while nobody listens, look at the demand this often (WANTED wakes at once)


class EventWatch:
    def __init__(self, store: Store, *, retry_max_s: float = 30.0) -> None:
        self.store = store
        self.retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        self._unsubscribe = wake.subscribe(wake.WANTED, self._wanted.set)
        self._task = asyncio.create_task(self._run(), name="event-watch")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            self._wanted.clear()  # a WANTED from here on ends the wait below at once
            if not wake.wanted(EVENTS):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), IDLE_CHECK_S)
                continue
            try:
                stream = await self.store.events.watch(PIPELINE, max_await_time_ms=AWAIT_MS)
                async with stream:
                    backoff = 1.0
                    notify(EVENTS)  # what was appended before the stream opened
                    while wake.wanted(EVENTS):
                        asked = time.monotonic()
                        if await stream.try_next() is not None:
                            notify(EVENTS)
                        await asyncio.sleep(max(0.0, GAP_S - (time.monotonic() - asked)))
                continue
            except OperationFailure as exc:
                if exc.code in NOT_OFFERED:
                    log.info("events.no_change_stream", detail="the live hubs poll")
                    return
                log.warning("events.watch_failed", error=type(exc).__name__, code=exc.code)
            except PyMongoError as exc:
                log.warning("events.watch_interrupted", error=type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.retry_max_s)
