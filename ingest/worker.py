"""The work loop that hands accepted intake to routing, and the recovery sweep.

Records accepted by this process are routed from memory right after the 2xx, in batches
(whatever has queued up while the previous batch was written, up to ``batch_size``).
While it lives, the process renews one lease of its own, not one per queued record
(crm_store/process_leases.py). Records whose owner is gone — its process died, or it gave
up after store errors — are claimed by the recovery sweep of any process and routed again
(idempotently).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import traceback
from collections.abc import Sequence

import structlog
from pymongo.errors import PyMongoError

from crm_store import intake, process_leases
from crm_store.documents import IntakeDoc
from crm_store.store import Store
from ingest.metrics import Metrics
from ingest.tasks import cancel
from routing.router import Router

log = structlog.get_logger("omniroute.worker")


class RoutingWorker:
    def __init__(
        self,
        store: Store,
        router: Router,
        metrics: Metrics,
        *,
        owner: str,
        batch_size: int = 64,
        workers: int = 2,
        lease_s: float = 30.0,
        recovery_interval_s: float = 5.0,
    ) -> None:
        self.store = store
        self.router = router
        self.metrics = metrics
        self.owner = owner
        self.batch_size = batch_size
        self.workers = workers
        self.lease_s = lease_s
        self.recovery_interval_s = recovery_interval_s
        self.queue: asyncio.Queue[IntakeDoc] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepted_at: dict[str, float] = {}
        self._interrupted: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(self, docs: Sequence[IntakeDoc]) -> None:
        t = time.perf_counter()
        for d in docs:
            self._accepted_at[d.id] = t
            self.queue.put_nowait(d)
        if docs:
            self.idle.clear()

    async def start(self) -> None:
        with contextlib.suppress(PyMongoError):  # else the sweep's first round renews it
            await process_leases.heartbeat(self.store, self.owner, self.lease_s)
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"route-{i}"))
        self._tasks.append(asyncio.create_task(self._recover(), name="recovery"))

    async def stop(self) -> None:
        await cancel(*self._tasks)
        self._tasks.clear()
        left = []
        while not self.queue.empty():
            left.append(self.queue.get_nowait().id)
        with contextlib.suppress(PyMongoError):
            await intake.release(self.store, left, self.owner)

    async def _take_batch(self) -> list[IntakeDoc]:
        first = await self.queue.get()
        batch = [first]
        while len(batch) < self.batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _work(self) -> None:
        backoff = 0.1
        while True:
            batch = await self._take_batch()
            # A batch that failed half-way may have written part of its work: route it
            # as a re-run (reads everything, re-emits what it created).
            rerun = any(d.id in self._interrupted for d in batch)
            try:
                await self.route(batch, rerun=rerun)
                self._interrupted.difference_update(d.id for d in batch)
                backoff = 0.1
            except PyMongoError as exc:
                # The store is away: keep the records (they are ours) and retry later.
                self.metrics.store_errors.labels("route").inc()
                log.warning("routing.store_unavailable", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 10.0)
                for d in batch:
                    self._interrupted.add(d.id)
                    self.queue.put_nowait(d)
            finally:
                if self.queue.empty():
                    self.idle.set()

    async def route(self, batch: list[IntakeDoc], *, rerun: bool = False) -> None:
        try:
            routed = await self.router.route(batch, rerun=rerun)
        except PyMongoError:
            raise
        except Exception:
            if len(batch) == 1:
                await self._failed(batch[0])
                return
            # Isolate the record that fails: route the batch one by one.
            for d in batch:
                await self.route([d], rerun=True)
            return
        t = time.perf_counter()
        for r in routed:
            self.metrics.routed.labels(r.decision.rule.value).inc()
            started = self._accepted_at.pop(r.intake_id, None)
            if started is not None:
                self.metrics.routing_latency.observe(t - started)
        log.debug("routing.batch", size=len(batch), rerun=rerun)

    async def _failed(self, doc: IntakeDoc) -> None:
        self.metrics.routing_failures.inc()
        log.exception("routing.failed", intake_id=doc.id)
        with contextlib.suppress(PyMongoError):
            await intake.mark_attempt_failed(self.store, doc.id, traceback.format_exc())
        self._accepted_at.pop(doc.id, None)

    async def _recover(self) -> None:
        last_renewal = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_renewal > self.lease_s / 3:
                    # One lease for everything this process holds (not per record).
                    await process_leases.heartbeat(self.store, self.owner, self.lease_s)
                    last_renewal = time.monotonic()
                live, dead = await process_leases.owners(self.store)
                for gone in dead:
                    if gone != self.owner and (n := await process_leases.orphan(self.store, gone)):
                        log.info("routing.owner_gone", owner=gone, records=n)
                claimed = await process_leases.claim_orphaned(
                    self.store,
                    self.owner,
                    self.lease_s,
                    self.batch_size,
                    self._accepted_at,
                    live | {self.owner},
                )
                if claimed:
                    log.info("routing.recovered", count=len(claimed))
                    await self.route(claimed, rerun=True)
                    continue  # there may be more
            except PyMongoError as exc:
                self.metrics.store_errors.labels("recovery").inc()
                log.warning("recovery.store_unavailable", error=str(exc))
            await asyncio.sleep(self.recovery_interval_s)
