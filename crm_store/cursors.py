"""Named cursors into the event log, each held by one process at a time (a lease).

A follower (the automation engine) keeps its place in the log here: ``seq`` is the last
event it has handled. One process holds the cursor while it works; when it dies, the lease
runs out and another process goes on from the stored ``seq`` — events after it are
handled again, which is why what a follower does must be idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_store.store import Collection, Document, Store, claim

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cursors(store: Store) -> Collection:
    return store["automation_cursors"]


async def ensure(store: Store, name: str, start_seq: int) -> int:
    """Create the cursor at ``start_seq`` unless it exists; returns its position."""
    await cursors(store).update_one(
        {"_id": name},
        {"$setOnInsert": {"seq": start_seq, "owner": None, "lease_until": EPOCH}},
        upsert=True,
    )
    doc = await cursors(store).find_one({"_id": name})
    return int(doc["seq"]) if doc else start_seq


async def hold(store: Store, name: str, owner: str, lease_s: float) -> Document | None:
    """Renew our lease on the cursor, or take it if nobody holds it; None if another
    process does."""
    t = datetime.now(UTC)
    until = t + timedelta(seconds=lease_s)
    renewed = await cursors(store).update_one(
        {"_id": name, "owner": owner, "lease_until": {"$gt": t}},
        {"$set": {"lease_until": until}},
    )
    if renewed.matched_count:
        doc: Document | None = await cursors(store).find_one({"_id": name})
        return doc
    taken = await claim(
        cursors(store),
        {"_id": name, "lease_until": {"$lt": t}},
        # ``taken_at`` changes only here: a holder tells a renewal from a fresh take.
        {"owner": owner, "lease_until": until, "taken_at": t},
        {"owner": owner, "lease_until": {"$gt": t}},
        1,
    )
    return taken[0] if taken else None


async def advance(store: Store, name: str, owner: str, seq: int) -> bool:
    """Move the cursor forward (only while we hold it)."""
    result = await cursors(store).update_one(
        {"_id": name, "owner": owner, "seq": {"$lte": seq}}, {"$set": {"seq": seq}}
    )
    return bool(result.matched_count)


async def release(store: Store, name: str, owner: str) -> None:
    await cursors(store).update_one(
        {"_id": name, "owner": owner}, {"$set": {"lease_until": EPOCH, "owner": None}}
    )
