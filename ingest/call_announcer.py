"""The call announcer: announces what calls reached, after the webhook's 2xx.

A PBX report is acknowledged once its call's upsert is durable (crm_store/calls.apply);
that upsert flags the call ``announce_due``. This worker finds due calls through the
partial index of that flag and announces each (crm_store/calls.announce_call:
``call.started`` / ``call.ended`` / ``call.missed``, once each, then the flag is cleared
unless another report came meanwhile). It is woken at once by this process's reports
(crm_store/wake.py) and otherwise looks every ``poll_s`` — which is how calls left due by
a process killed between its upsert and its announcement, or reported to another
process, are announced. Every process runs one; two announcing one call at once write
each event once (the events' ids derive from the call).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container

import structlog
from pymongo.errors import PyMongoError

from crm_store import calls
from crm_store.store import Store
from crm_store.wake import CALLS_DUE, subscribe
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.call_announcer")


class CallAnnouncer:
    def __init__(
        self,
        store: Store,
        service_pipelines: Container[str] = (),
        *,
        poll_s: float = 1.0,
        batch: int = 64,
    ) -> None:
        self.store = store
        self.service_pipelines = service_pipelines
        self.poll_s = poll_s
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe = subscribe(CALLS_DUE, self._wake.set)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-announcer")

    async def stop(self) -> None:
        self._unsubscribe()
        if self._task is not None:
            await cancel(self._task)
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            self._wake.clear()
            try:
                done = await self.sweep()
                backoff = 0.1
            except PyMongoError as exc:
                log.warning("calls.announce_store_unavailable", error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if done >= self.batch:
                continue  # there may be more
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def sweep(self) -> int:
        """Announce the due calls (at most ``batch``); how many were announced."""
        due = await calls.due_calls(self.store, self.batch)
        done = await asyncio.gather(*(self._one(doc_id) for doc_id in due))
        return sum(done)

    async def _one(self, doc_id: str) -> bool:
        try:
            await calls.announce_call(self.store, doc_id, self.service_pipelines)
            return True
        except PyMongoError:
            raise
        except Exception:  # one odd call must not stop the others; it stays due
            log.exception("calls.announce_failed", call_doc_id=doc_id)
            return False
