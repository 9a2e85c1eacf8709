"""The intake write path: durable, idempotent acceptance and the routing claims.

A record is inserted with ``status: pending`` and a lease held by the accepting process.
That process routes it from memory; if it dies, the lease runs out and any process's
recovery sweep claims the record (``update_one`` on the expired lease, then read back by
owner token — the portable claim, see docs/store.md) and routes it again. Routing is
idempotent, so a second run changes nothing that the first one finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from crm_store.documents import IntakeDoc, IntakeStatus
from crm_store.store import Document, Store, claim

DUPLICATE_KEY = 11000
# Writes naming many records by ``_id`` go in groups of at most this many: the embedded
# server answers an ``_id`` ``$in`` with point lookups but then re-checks every record
# against the whole list, so one write over k ids costs k² comparisons (a renewal of a
# 1,500-record backlog held the server for 8 s; in groups of 100 it is linear).
ID_CHUNK = 100
# After this many failed routing attempts a record is parked as ``failed`` (visible in
# metrics and ``omniroute explain``) instead of being retried forever.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Accepted:
    new: list[IntakeDoc]
    duplicates: list[str]


def now() -> datetime:
    return datetime.now(UTC)


async def accept(store: Store, docs: Sequence[Document], owner: str, lease_s: float) -> Accepted:
    """Insert intake documents; a document whose ``_id`` is already stored is a duplicate.

    Returns only after the write is durable (the collection's write concern). Raises the
    driver's error when the store is unreachable — the caller answers 503.
    """
    return _outcome(docs, await _insert(store, docs, owner, lease_s))


def _outcome(docs: Sequence[Document], inserted: Sequence[bool]) -> Accepted:
    return Accepted(
        [IntakeDoc.model_validate(d) for d, ok in zip(docs, inserted, strict=True) if ok],
        [str(d["_id"]) for d, ok in zip(docs, inserted, strict=True) if not ok],
    )


async def _insert(store: Store, docs: Sequence[Document], owner: str, lease_s: float) -> list[bool]:
    """Insert; per document, True if it was new (False: its ``_id`` was stored before,
    also by an earlier document of the same call)."""
    lease_until = now() + timedelta(seconds=lease_s)
    for d in docs:
        d.setdefault("status", IntakeStatus.PENDING.value)
        d["owner"] = owner
        d["lease_until"] = lease_until
        d.setdefault("attempts", 0)
    if len(docs) == 1:
        try:
            await store.intake.insert_one(docs[0])
        except DuplicateKeyError:
            return [False]
        return [True]
    failed: set[int] = set()
    try:
        await store.intake.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        failed = {int(e["index"]) for e in errors}
    return [i not in failed for i in range(len(docs))]


def id_chunks(ids: Sequence[str]) -> list[list[str]]:
    """``ids`` (duplicates dropped) in groups of at most ``ID_CHUNK``."""
    unique = list(dict.fromkeys(ids))
    return [unique[i : i + ID_CHUNK] for i in range(0, len(unique), ID_CHUNK)]


async def mark_routed(store: Store, ids: Sequence[str]) -> None:
    at = now()
    for chunk in id_chunks(ids):
        await store.intake.update_many(
            {"_id": {"$in": chunk}},
            {
                # raw_since: when the retention period of the raw body starts
                # (ingest/retention.py drops it Settings.raw_retention_days later).
                "$set": {"status": IntakeStatus.ROUTED.value, "routed_at": at, "raw_since": at},
                "$unset": {"lease_until": "", "owner": ""},
            },
        )


async def mark_attempt_failed(store: Store, doc_id: str, error: str) -> None:
    """Count a failed routing attempt; park the record after MAX_ATTEMPTS."""
    await store.intake.update_one(
        {"_id": doc_id, "attempts": {"$gte": MAX_ATTEMPTS - 1}},
        {
            "$set": {"status": IntakeStatus.FAILED.value, "error": error[:2000]},
            "$inc": {"attempts": 1},
        },
    )
    # Still pending: give it up so the next recovery sweep (ours too) tries again.
    await store.intake.update_one(
        {"_id": doc_id, "status": IntakeStatus.PENDING.value},
        {
            "$set": {"error": error[:2000], "lease_until": now()},
            "$unset": {"owner": ""},
            "$inc": {"attempts": 1},
        },
    )


# Expired records looked at per claim round, ours included (skipped): the candidates
# are read from the (status, lease_until) index alone.
CLAIM_SCAN = 4


async def claim_expired(
    store: Store, owner: str, lease_s: float, limit: int, queued: Container[str] = ()
) -> list[IntakeDoc]:
    """Claim pending records whose lease has run out (their process died or gave up, or
    this process wrote them and then failed before queueing them for routing).

    The expired records are found with a query on exactly the ``status_lease`` index's
    fields (with a third condition the embedded server scans the whole collection, and
    the recovery sweep runs every few seconds); records this process holds that are
    still waiting in its queue (``queued``) are dropped here — never routed a second
    time — and the claim itself names the rest by ``_id`` with the full condition. A
    record of ours that is in no queue is claimed like any other: a write whose request
    then failed never leaves its records stuck while the process lives. (A record in our
    queue that another process took over meanwhile is that process's: claimed too.)"""
    t = now()
    pending = IntakeStatus.PENDING.value
    candidates = [
        d["_id"]
        async for d in store.intake.find(
            {"status": pending, "lease_until": {"$lt": t}},
            {"_id": 1, "owner": 1},
            limit=max(limit, 1) * CLAIM_SCAN,
        )
        # Ours and still in our queue: never route it a second time.
        if not (d.get("owner") == owner and d["_id"] in queued)
    ][:limit]
    if not candidates:
        return []
    claimed = await claim(
        store.intake,
        {
            "_id": {"$in": candidates},
            "status": pending,
            "lease_until": {"$lt": t},
        },
        {"owner": owner, "lease_until": t + timedelta(seconds=lease_s)},
        {"owner": owner, "status": pending},
        limit,
        {"raw": 0},
    )
    return [IntakeDoc.model_validate(d) for d in claimed]


async def release(store: Store, ids: Sequence[str], owner: str) -> None:
    """Give records back at once (e.g. on shutdown) so another process may claim them."""
    at = now()
    for chunk in id_chunks(ids):
        await store.intake.update_many(
            {"_id": {"$in": chunk}, "owner": owner, "status": IntakeStatus.PENDING.value},
            {"$set": {"lease_until": at}},
        )


async def renew(store: Store, ids: Sequence[str], owner: str, lease_s: float) -> None:
    """Extend our lease on records still waiting in our queue (a long backlog must not
    let other processes take them over while we are alive)."""
    until = now() + timedelta(seconds=lease_s)
    for chunk in id_chunks(ids):
        await store.intake.update_many(
            {"_id": {"$in": chunk}, "owner": owner, "status": IntakeStatus.PENDING.value},
            {"$set": {"lease_until": until}},
        )


COMMIT_TASK = "intake-commit"


class GroupCommit:
    """Accepts intake for concurrent requests in shared writes.

    Requests that arrive while a write is in flight are written together by the next
    ``insert_many`` (one durable commit instead of one per request); each request is
    answered from its own documents' outcome. Under load this cuts the store's work per
    message and the acknowledgement latency; a lone request is written at once.
    """

    def __init__(self, store: Store, owner: str, lease_s: float, max_docs: int = 512) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.max_docs = max_docs
        self._waiting: list[tuple[list[Document], asyncio.Future[Accepted]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def accept(self, docs: list[Document]) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((docs, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name=COMMIT_TASK)
        return await future

    async def _write_all(self) -> None:
        while self._waiting:
            group: list[tuple[list[Document], asyncio.Future[Accepted]]] = []
            count = 0
            while self._waiting and (
                not group or count + len(self._waiting[0][0]) <= self.max_docs
            ):
                docs, future = self._waiting.pop(0)
                group.append((docs, future))
                count += len(docs)
            flat = [d for docs, _ in group for d in docs]
            try:
                inserted = await _insert(self.store, flat, self.owner, self.lease_s)
            except Exception as exc:  # every request of the group fails (503)
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            at = 0
            for docs, future in group:
                if not future.done():
                    future.set_result(_outcome(docs, inserted[at : at + len(docs)]))
                at += len(docs)
