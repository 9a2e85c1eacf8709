"""The intake write path: durable, idempotent acceptance and the routing claims.

A record is inserted with ``status: pending`` and a lease held by the accepting process.
That process routes it from memory; if it dies, the lease runs out and any process's
recovery sweep claims the record (``update_one`` on the expired lease, then read back by
owner token — the portable claim, see docs/store.md) and routes it again. Routing is
idempotent, so a second run changes nothing that the first one finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from crm_store.documents import IntakeDoc, IntakeStatus
from crm_store.store import Document, Store

DUPLICATE_KEY = 11000
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
            return Accepted([], [docs[0]["_id"]])
        return Accepted([IntakeDoc.model_validate(docs[0])], [])
    failed: set[int] = set()
    try:
        await store.intake.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        failed = {int(e["index"]) for e in errors}
    new = [IntakeDoc.model_validate(d) for i, d in enumerate(docs) if i not in failed]
    dups = [str(docs[i]["_id"]) for i in sorted(failed)]
    return Accepted(new, dups)


async def mark_routed(store: Store, ids: Sequence[str]) -> None:
    if ids:
        await store.intake.update_many(
            {"_id": {"$in": list(ids)}},
            {
                "$set": {"status": IntakeStatus.ROUTED.value, "routed_at": now()},
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
        {"$set": {"error": error[:2000], "lease_until": now()},
         "$unset": {"owner": ""}, "$inc": {"attempts": 1}},
    )


async def claim_expired(store: Store, owner: str, lease_s: float, limit: int) -> list[IntakeDoc]:
    """Claim pending records whose lease has run out (their process died or gave up)."""
    t = now()
    candidates = [
        d["_id"]
        async for d in store.intake.find(
            # Our own records are still in our queue: never route them a second time.
            {
                "status": IntakeStatus.PENDING.value,
                "lease_until": {"$lt": t},
                "owner": {"$ne": owner},
            },
            {"_id": 1},
            limit=limit,
        )
    ]
    if not candidates:
        return []
    await store.intake.update_many(
        {
            "_id": {"$in": candidates},
            "status": IntakeStatus.PENDING.value,
            "lease_until": {"$lt": t},
        },
        {"$set": {"owner": owner, "lease_until": t + timedelta(seconds=lease_s)}},
    )
    claimed = store.intake.find(
        {"_id": {"$in": candidates}, "owner": owner, "status": IntakeStatus.PENDING.value},
        {"raw": 0},
    )
    return [IntakeDoc.model_validate(d) async for d in claimed]


async def release(store: Store, ids: Sequence[str], owner: str) -> None:
    """Give records back at once (e.g. on shutdown) so another process may claim them."""
    if ids:
        await store.intake.update_many(
            {"_id": {"$in": list(ids)}, "owner": owner, "status": IntakeStatus.PENDING.value},
            {"$set": {"lease_until": now()}},
        )


async def renew(store: Store, ids: Sequence[str], owner: str, lease_s: float) -> None:
    """Extend our lease on records still waiting in our queue (a long backlog must not
    let other processes take them over while we are alive)."""
    if ids:
        await store.intake.update_many(
            {"_id": {"$in": list(ids)}, "owner": owner, "status": IntakeStatus.PENDING.value},
            {"$set": {"lease_until": now() + timedelta(seconds=lease_s)}},
        )
