"""Wakes this process's live hubs when any process appends events.

A change stream on ``events`` (inserts only, nothing of the documents but the resume
token) where the store offers one — a replica set, Atlas, the embedded store; each insert
notifies :data:`crm_store.wake.EVENTS`, so an event written by another process reaches
this process's operator and visitor sockets without waiting for the hubs' poll. A store
without change streams (a standalone ``mongod``) says so once, and the hubs keep
polling (inbox/live_api.py ``POLL_S``, inbox/webchat_hub.py ``POLL_S``). Events of this
process wake the hubs anyway, directly from crm_store/events.append.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from pymongo.errors import OperationFailure, PyMongoError

from crm_store.store import Store
from crm_store.wake import EVENTS, notify
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.event_watch")

# "$changeStream is only supported on replica sets" (and its older wording).
NOT_OFFERED = frozenset({40573, 40324})
PIPELINE: list[dict[str, Any]] = [{"$match": {"operationType": "insert"}}, {"$project": {"_id": 1}}]


class EventWatch:
    def __init__(self, store: Store, *, retry_max_s: float = 30.0) -> None:
        self.store = store
        self.retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-watch")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                async with await self.store.events.watch(PIPELINE) as stream:
                    backoff = 1.0
                    async for _ in stream:
                        notify(EVENTS)
            except OperationFailure as exc:
                if exc.code in NOT_OFFERED:
                    log.info("events.no_change_stream", detail="the live hubs poll")
                    return
                log.warning("events.watch_failed", error=type(exc).__name__, code=exc.code)
            except PyMongoError as exc:
                log.warning("events.watch_interrupted", error=type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.retry_max_s)
