"""The webhook delivery worker: pushes events to consumers' URLs, signed, in order.

Each claimed subscription is worked on by one task: its next events (contiguous, see
crm_store/feed.py) are POSTed one by one; the cursor moves after each 2xx. Anything else
(non-2xx, timeout, refused connection) stops that subscription until its backoff has
passed — other subscriptions go on. Delivery is at least once: a crash between the POST
and the cursor update repeats the event with the same id (consumers dedupe on
``X-Omniroute-Event-Id``).

Request::

    POST <url>
    Content-Type: application/json
    X-Omniroute-Event-Id: <event id>
    X-Omniroute-Event-Type: <type>
    X-Omniroute-Timestamp: <unix seconds>
    X-Omniroute-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

    <the event envelope, docs/events.md>
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import structlog
from pymongo.errors import PyMongoError

from channels.signing import sign
from crm_store import feed
from crm_store import subscriptions as subs
from crm_store.store import Document, Store
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.deliveries")


def retry_delay_s(attempt: int, base_s: float = 1.0, cap_s: float = 3600.0) -> float:
    """Exponential backoff with full jitter between half and the whole step."""
    step = min(base_s * 2.0 ** (attempt - 1), cap_s)
    return step * (0.5 + random.random() / 2)


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        timeout_s: float = 10.0,
        retry_base_s: float = 1.0,
        batch: int = 100,
        concurrency: int = 16,
        gap_grace_s: float = feed.GAP_GRACE_S,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.retry_base_s = retry_base_s
        self.batch = batch
        self.concurrency = concurrency
        self.gap_grace_s = gap_grace_s
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": "omniroute-webhooks/1"},
        )
        self._task = asyncio.create_task(self._run(), name="deliveries")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        """Keep up to ``concurrency`` subscriptions in flight; claim more as soon as one
        finishes, so a slow consumer only ever holds its own slot."""
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                free = self.concurrency - len(running)
                claimed: list[Document] = []
                if free > 0:
                    try:
                        claimed = await subs.claim_due(self.store, self.owner, self.lease_s, free)
                    except PyMongoError as exc:
                        log.warning("deliveries.store_unavailable", error=type(exc).__name__)
                for sub in claimed:
                    running.add(asyncio.create_task(self.work(sub)))
                if running:
                    done, running = await asyncio.wait(
                        running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        if not task.cancelled() and task.exception() is not None:
                            log.error("deliveries.task_failed", error=repr(task.exception()))
                else:
                    await asyncio.sleep(self.poll_s)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def work(self, sub: Document) -> None:
        """Deliver what is due for one claimed subscription, then release it.

        Every POST starts only while the lease still covers it (``timeout_s`` to spare),
        so no other worker can have claimed the subscription meanwhile; a stop
        (cancellation) hands the subscription back at once.
        """
        started = time.monotonic()
        cursor = int(sub["cursor"])
        due_in = self.poll_s
        try:
            while True:
                page = await feed.read(
                    self.store,
                    cursor,
                    limit=self.batch,
                    types=sub["types"] or None,
                    until=sub.get("until_seq"),
                    gap_grace_s=self.gap_grace_s,
                )
                if page.next_after == cursor:
                    break  # nothing new
                for event in page.events:
                    if time.monotonic() - started + self.timeout_s >= self.lease_s:
                        due_in = 0.0  # more to do, but the lease is nearly spent
                        break
                    outcome = await self._deliver(sub, event)
                    if outcome is not True:
                        return  # released with a backoff (False) or the lease was lost
                    cursor = int(event["seq"])
                else:
                    cursor = page.next_after  # also past events of other types
                    if not await subs.advance(self.store, sub, self.owner, cursor):
                        return
                    if sub.get("until_seq") is not None and cursor >= int(sub["until_seq"]):
                        return
                    continue
                break
            await subs.release(
                self.store, sub, self.owner, datetime.now(UTC) + timedelta(seconds=due_in), None
            )
        except PyMongoError as exc:
            log.warning(
                "deliveries.store_unavailable", subscription=sub["_id"], error=type(exc).__name__
            )
        except asyncio.CancelledError:
            # Stopping: let another process take the subscription now, not after the lease.
            with contextlib.suppress(PyMongoError):
                await asyncio.shield(
                    subs.release(self.store, sub, self.owner, datetime.now(UTC), sub.get("head"))
                )
            raise

    async def _deliver(self, sub: Document, event: Document) -> bool | None:
        """POST one event. True: the consumer took it (or it was dead-lettered) and the
        cursor moved; False: it failed and the subscription was released with a backoff;
        None: our lease was gone — stop."""
        assert self._http is not None
        body = orjson.dumps(feed.envelope(event))
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Omniroute-Event-Id": event["_id"],
            "X-Omniroute-Event-Type": event["type"],
            "X-Omniroute-Timestamp": ts,
            "X-Omniroute-Signature": sign(sub["secret"], ts, body),
        }
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._http.post(sub["url"], data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        ms = (time.perf_counter() - t0) * 1000
        if status is not None and 200 <= status < 300:
            await subs.record_attempt(
                self.store, sub, event, ok=True, status=status, error=None, duration_ms=ms
            )
            return await subs.advance(self.store, sub, self.owner, int(event["seq"])) or None
        error = error or f"HTTP {status}"
        head = sub.get("head") or {}
        first = (
            head.get("first_attempt_at") if head.get("event_id") == event["_id"] else None
        ) or datetime.now(UTC)
        attempts = (head.get("attempts", 0) if head.get("event_id") == event["_id"] else 0) + 1
        if (datetime.now(UTC) - first).total_seconds() >= float(sub["max_age_s"]):
            log.warning(
                "deliveries.dead_letter",
                subscription=sub["_id"],
                event_id=event["_id"],
                attempts=attempts,
                error=error,
            )
            await subs.record_attempt(
                self.store,
                sub,
                event,
                ok=False,
                status=status,
                error=error,
                duration_ms=ms,
                dead=True,
            )
            return await subs.advance(self.store, sub, self.owner, int(event["seq"])) or None
        await subs.record_attempt(
            self.store, sub, event, ok=False, status=status, error=error, duration_ms=ms
        )
        delay = retry_delay_s(attempts, self.retry_base_s)
        log.info(
            "deliveries.retry",
            subscription=sub["_id"],
            event_id=event["_id"],
            attempt=attempts,
            status=status,
            delay_s=round(delay, 2),
        )
        await subs.release(
            self.store,
            sub,
            self.owner,
            datetime.now(UTC) + timedelta(seconds=delay),
            {
                "event_id": event["_id"],
                "seq": event["seq"],
                "attempts": attempts,
                "first_attempt_at": first,
                "last_error": error,
            },
        )
        return False
