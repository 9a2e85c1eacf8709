"""The call announcer: announces what calls reached, after the webhook's 2xx.

A PBX report is acknowledged once its call's upsert is durable (crm_store/calls.apply);
that upsert flags the call ``announce_due``. This worker finds due calls through the
partial index of that flag and announces each (crm_store/calls.announce_call:
``call.started`` / ``call.ended`` / ``call.missed``, once each, then the flag is cleared
unless another report came meanwhile). It is woken at once by this process's reports
(crm_store/wake.py) and then announces the calls this process reported
(crm_store/calls.take_reported) — not every due call: with several processes, each would
otherwise read and write every call the others are announcing, and every write of
``calls`` delays the webhooks' upserts. Every ``poll_s`` it also announces the calls due
for longer than ``stale_s`` — calls left due by a process killed between its upsert and
its announcement. Every process runs one; two announcing one call at once write each
event once (the events' ids derive from the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Container, Sequence
from datetime import UTC, datetime, timedelta

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
        stale_s: float = 2.0,
        batch: int = 64,
    ) -> None:
        self.store = store
        self.service_pipelines = service_pipelines
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.batch = batch
        self._mine: list[str] = []  # taken from crm_store/calls, not announced yet
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
        next_poll = 0.0  # at once: what an earlier run of the service left due
        while True:
            self._wake.clear()
            try:
                done = await self.announce_reported()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_s
                    done += await self.sweep(stale_s=self.stale_s)
                backoff = 0.1
            except PyMongoError as exc:
                log.warning("calls.announce_store_unavailable", error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if done >= self.batch or self._mine:
                continue  # there may be more
            with contextlib.suppress(TimeoutError):
                timeout = max(0.0, next_poll - time.monotonic())
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def announce_reported(self) -> int:
        """Announce the calls this process reported (at most ``batch`` at once; the rest
        next round); how many were announced."""
        self._mine.extend(calls.take_reported())
        mine, self._mine = self._mine[: self.batch], self._mine[self.batch :]
        try:
            return await self._announce(mine)
        except PyMongoError:
            self._mine[:0] = mine  # still due: again once the store answers
            raise

    async def sweep(self, *, stale_s: float | None = None) -> int:
        """Announce the due calls (at most ``batch``) — with ``stale_s``, only those whose
        last report is older than that; how many were announced."""
        before = datetime.now(UTC) - timedelta(seconds=stale_s) if stale_s is not None else None
        # Fresh ones are skipped here: more of the index than a batch is read for the rest.
        limit = self.batch if before is None else self.batch * 16
        due = await calls.due_calls(self.store, limit, seen_before=before)
        return await self._announce(due[: self.batch])

    async def _announce(self, doc_ids: Sequence[str]) -> int:
        done = await asyncio.gather(*(self._one(doc_id) for doc_id in doc_ids))
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
