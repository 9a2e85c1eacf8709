"""Raw webhook bodies are kept for a while after routing, then dropped (docs/security.md).

A routed intake record gets ``raw_since`` (crm_store/intake.py ``mark_routed``; a
reparsed unparsed record when it is marked ``reparsed``). The sweeper unsets ``raw`` and
``raw_since`` of records whose ``raw_since`` lies more than ``raw_retention_days`` back;
the parsed message and everything routing made of it stay. Unparsed records have no
``raw_since``: they keep their body until a reparse reads it.

A sweeper rather than a TTL index, because a TTL index deletes the whole document and
the record (message, status, decision trail) must stay. ``raw_since`` has a sparse index,
so each sweep reads only the bodies that are due; any number of processes may sweep
(the update is idempotent).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from pymongo.errors import PyMongoError

from crm_store.intake import id_chunks
from crm_store.store import Store
from ingest.metrics import Metrics
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.retention")

SWEEP_BATCH = 1000


async def drop_raw_before(store: Store, cutoff: datetime, batch: int = SWEEP_BATCH) -> int:
    """Drop the raw bodies whose retention started before ``cutoff``; how many."""
    dropped = 0
    while True:
        due = [
            d["_id"]
            async for d in store.intake.find(
                {"raw_since": {"$lt": cutoff}}, {"_id": 1}, limit=batch
            )
        ]
        if not due:
            return dropped
        for chunk in id_chunks(due):
            result = await store.intake.update_many(
                {"_id": {"$in": chunk}, "raw_since": {"$lt": cutoff}},
                {"$unset": {"raw": "", "raw_since": ""}},
            )
            dropped += result.modified_count
        if len(due) < batch:
            return dropped


class RawRetention:
    """The background sweeper of one service process."""

    def __init__(
        self, store: Store, metrics: Metrics, *, retention_days: float, interval_s: float
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.retention = timedelta(days=retention_days)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="raw-retention")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def sweep(self) -> int:
        dropped = await drop_raw_before(self.store, datetime.now(UTC) - self.retention)
        if dropped:
            self.metrics.raw_dropped.inc(dropped)
            log.info("retention.raw_dropped", count=dropped)
        return dropped

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except PyMongoError as exc:
                self.metrics.store_errors.labels("retention").inc()
                log.warning("retention.store_unavailable", error=type(exc).__name__)
            await asyncio.sleep(self.interval_s)
