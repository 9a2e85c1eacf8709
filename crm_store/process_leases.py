"""One lease per process for the intake records it holds.

A process accepting intake writes each record with its owner token and a lease
(crm_store/intake.py) and routes it from memory. While the process lives it keeps one
document alive — ``leases`` ``{_id: "process:<owner>", owner, until}``, renewed every
``lease_s / 3`` by its recovery sweep (:func:`heartbeat`) — instead of renewing every
record it still has queued: a long backlog (a mailbox's initial sync, a burst of new leads)
costs one small write per renewal, not a rewrite of each waiting record.

A record's own ``lease_until`` still runs out after ``lease_s``; the recovery sweep of any
process then claims it only if its owner is not alive (:func:`claim_orphaned`): no owner
(a failed attempt), an owner whose process lease ran out or was released at shutdown, or
an owner with no process lease at all (a process of an older version, which renews its
records itself). A dead process's pending records are first handed back at once
(:func:`orphan`: owner cleared, lease at the epoch — the oldest in the claim scan, so a
live process's long backlog of expired record leases never hides them).
"""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime, timedelta

from crm_store.documents import IntakeDoc, IntakeStatus
from crm_store.store import Store, claim

LEASES = "leases"
PREFIX = "process:"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# intake: pending records by owner (partial: only pending records are in it); hinted.
OWNER_INDEX = "pending_owner"
# Expired records looked at per claim round (live owners' ones skipped in the process).
CLAIM_SCAN = 4


def lease_id(owner: str) -> str:
    return PREFIX + owner


def _now() -> datetime:
    return datetime.now(UTC)


async def heartbeat(store: Store, owner: str, lease_s: float) -> None:
    """Keep ``owner`` alive for ``lease_s`` more seconds (one upsert of its own document)."""
    until = _now() + timedelta(seconds=lease_s)
    await store[LEASES].update_one(
        {"_id": lease_id(owner)}, {"$set": {"owner": owner, "until": until}}, upsert=True
    )


async def owners(store: Store) -> tuple[set[str], list[str]]:
    """(live owners, dead owners) by their process leases."""
    t = _now()
    live: set[str] = set()
    dead: list[str] = []
    async for d in store[LEASES].find({"_id": {"$regex": f"^{PREFIX}"}}, {"owner": 1, "until": 1}):
        owner, until = d.get("owner"), d.get("until")
        if not isinstance(owner, str):
            continue
        if isinstance(until, datetime) and until.replace(tzinfo=until.tzinfo or UTC) > t:
            live.add(owner)
        else:
            dead.append(owner)
    return live, dead


async def orphan(store: Store, dead: str) -> int:
    """Hand the pending records of a dead process to any claimer, then forget its lease
    (only if it is still expired: a process that came back keeps it). How many."""
    t = _now()
    result = await store.intake.update_many(
        {"owner": dead, "status": IntakeStatus.PENDING.value},
        {"$set": {"lease_until": EPOCH}, "$unset": {"owner": ""}},
        hint=OWNER_INDEX,
    )
    await store[LEASES].delete_one({"_id": lease_id(dead), "until": {"$lte": t}})
    return result.modified_count


def _expired(until: object, t: datetime) -> bool:
    if not isinstance(until, datetime):
        return True
    return until.replace(tzinfo=until.tzinfo or UTC) < t


def claimable(
    holder: object, me: str, live: Container[str], queued: Container[str], id_: str
) -> bool:
    """May ``me`` claim an expired record held by ``holder``?"""
    if holder is None:
        return True
    if holder == me:  # ours: unless it still waits in our queue (a write whose request failed)
        return id_ not in queued
    return holder not in live


async def claim_orphaned(
    store: Store,
    owner: str,
    lease_s: float,
    limit: int,
    queued: Container[str],
    live: Container[str],
) -> list[IntakeDoc]:
    """Claim pending records whose lease ran out and whose owner is not alive (see the
    module doc). Unowned records come from the owner index; the others from the
    ``status_lease`` index alone (a third condition makes the embedded server scan), at
    most ``CLAIM_SCAN × limit`` of them, their owners checked here — so an expired record
    of an owner without a process lease can wait behind a longer live backlog. The claim
    names the candidates by ``_id`` with the whole condition again."""
    t = _now()
    pending = IntakeStatus.PENDING.value
    # Records nobody holds (handed back by orphan, failed attempts): straight from the
    # owner index, however many live records' leases ran out meanwhile.
    candidates = [
        d["_id"]
        async for d in store.intake.find(
            {"owner": None, "status": pending},
            {"_id": 1, "lease_until": 1},
            limit=max(limit, 1),
            hint=OWNER_INDEX,
        )
        if _expired(d.get("lease_until"), t)
    ]
    if len(candidates) < limit:
        # Ours in no queue, and owners without a process lease: the expired range.
        candidates += [
            d["_id"]
            async for d in store.intake.find(
                {"status": pending, "lease_until": {"$lt": t}},
                {"_id": 1, "owner": 1},
                limit=max(limit, 1) * CLAIM_SCAN,
            )
            if d.get("owner") is not None
            and claimable(d.get("owner"), owner, live, queued, d["_id"])
        ]
    candidates = list(dict.fromkeys(candidates))[:limit]
    if not candidates:
        return []
    claimed = await claim(
        store.intake,
        {"_id": {"$in": candidates}, "status": pending, "lease_until": {"$lt": t}},
        {"owner": owner, "lease_until": t + timedelta(seconds=lease_s)},
        {"owner": owner, "status": pending},
        limit,
        {"raw": 0},
    )
    return [IntakeDoc.model_validate(d) for d in claimed]
