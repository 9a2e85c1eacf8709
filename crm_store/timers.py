"""Timers of automation rules: documents in MongoDB, claimed with a lease by any worker.

Document: ``_id`` (derived from the rule, the entity and what set the timer off, so
scheduling twice is a no-op), ``rule_id``, ``entity`` {kind, id}, ``entity_id``,
``contact_id``, ``state``, ``due_at`` (business time, the engine's clock), ``fired`` (how
many times it has fired), ``times`` (at most), ``in_stage`` with ``stage_id``/
``stage_since`` (the stage visit it belongs to), ``field``/``field_value`` (the date it
was set from), ``event_id``, and the lease: ``owner``, ``lease_until`` (real time — leases
are about processes being alive), ``attempts``, ``last_error``.

States: ``pending`` (waiting for ``due_at``) → ``running`` (claimed: ``owner`` holds it
until ``lease_until``) → ``pending`` again (a repeat) or ``done`` | ``cancelled`` |
``failed``. A ``running`` timer whose lease ran out — its worker died, or a failed firing
waits for its retry time — is claimable again, with ``fresh: false`` so the next firing
looks up what the first one did.

A claim is the portable one (docs/store.md) in two steps: the oldest due timers are read
by ``state`` and ``due_at`` only (the ``due`` index; the 100,000 timers of the future cost
nothing), then each chosen one is taken with a conditional update by ``_id``
(``state: pending`` → ``running`` with a fresh owner token) and read back by token — each
timer goes to one worker. Claimed timers leave ``pending``, so they never crowd the oldest
due ones. Finishing a firing is conditional on the owner, the firing count and
``running``: a worker whose lease ran out (another took the timer over) or a timer
cancelled meanwhile changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from crm_store.store import Collection, Document, Store, claim

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PENDING = "pending"
RUNNING = "running"
DONE = "done"
CANCELLED = "cancelled"
FAILED = "failed"
SPREAD = 4


def timers(store: Store) -> Collection:
    return store["timers"]


def real_now() -> datetime:
    return datetime.now(UTC)


async def schedule(store: Store, doc: Document) -> bool:
    """Create a pending timer unless its ``_id`` exists; True if this call created it."""
    doc = {
        "state": PENDING,
        "fired": 0,
        "attempts": 0,
        "owner": None,
        "lease_until": EPOCH,
        **doc,
    }
    try:
        result = await timers(store).update_one(
            {"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True
        )
    except DuplicateKeyError:  # a concurrent upsert of the same timer won
        return False
    return result.upserted_id is not None


async def _end(
    store: Store,
    entity_id: str,
    reason: str,
    at: datetime,
    which: Callable[[Document], bool] = lambda _: True,
) -> int:
    """Cancel the entity's live (pending or running) timers that ``which`` picks.

    Read by ``entity_id`` (its index), decided here, ended one by one by ``_id`` in one
    round trip: the embedded server plans a multi-predicate ``update_many`` over this
    collection as a scan (a second per call at 20,000 timers)."""
    live = [PENDING, RUNNING]
    cursor = timers(store).find(
        {"entity_id": entity_id},
        {"state": 1, "rule_id": 1, "in_stage": 1, "stage_id": 1, "stage_since": 1},
    )
    ids = [d["_id"] async for d in cursor if d.get("state") in live and which(d)]
    if not ids:
        return 0
    sets: Document = {"state": CANCELLED, "end_reason": reason, "ended_at": at, "owner": None}
    result = await timers(store).bulk_write(
        [UpdateOne({"_id": i, "state": {"$in": live}}, {"$set": sets}) for i in ids],
        ordered=False,
    )
    return int(result.modified_count)


async def cancel_left_stage(
    store: Store, entity_id: str, stage_id: str | None, stage_since: datetime | None, at: datetime
) -> int:
    """Cancel the entity's stage-bound timers of any stage visit but the current one."""

    def other_visit(d: Document) -> bool:
        return bool(d.get("in_stage")) and (
            d.get("stage_id") != stage_id or d.get("stage_since") != stage_since
        )

    return await _end(store, entity_id, "left the stage", at, other_visit)


async def cancel_others(
    store: Store, rule_id: str, entity_id: str, keep_id: str, reason: str, at: datetime
) -> int:
    """Cancel a rule's other live timers on an entity (a date field changed)."""
    return await _end(
        store, entity_id, reason, at, lambda d: d.get("rule_id") == rule_id and d["_id"] != keep_id
    )


async def cancel_entity(store: Store, entity_id: str, reason: str, at: datetime) -> int:
    return await _end(store, entity_id, reason, at)


async def claim_due(
    store: Store,
    owner: str,
    due_before: datetime,
    lease_s: float,
    limit: int,
    *,
    now: datetime | None = None,
) -> list[Document]:
    """Claim up to ``limit`` timers due at ``due_before`` (business time), oldest due first,
    and any whose worker's lease ran out (real time ``now``)."""
    t = now or real_now()
    take: Document = {
        "state": RUNNING,
        "owner": owner,
        "lease_until": t + timedelta(seconds=lease_s),
    }
    held: Document = {"owner": owner, "state": RUNNING, "lease_until": {"$gt": t}}
    coll = timers(store)
    # Workers claiming at once would all go for the same oldest timers and all but one
    # would come away empty: each takes a random ``limit`` of the oldest ``SPREAD × limit``.
    due: Document = {"state": PENDING, "due_at": {"$lte": due_before}}
    oldest = coll.find(due, {"_id": 1}, sort=[("state", 1), ("due_at", 1)], limit=limit * SPREAD)
    candidates = [d["_id"] async for d in oldest]
    claimed: list[Document] = []
    if candidates:
        chosen = random.sample(candidates, min(limit, len(candidates)))
        # One conditional update per timer, by _id, in one round trip: only one claimer's
        # update of a pending timer matches. (A pending timer's due_at never moves, so
        # the state is the whole condition. The embedded server plans ``_id: {$in}``
        # combined with the due range badly — seconds at 100,000 timers — while these
        # point updates stay fast on both servers.)
        fresh = {**take, "fresh": True}
        await coll.bulk_write(
            [UpdateOne({"_id": i, "state": PENDING}, {"$set": fresh}) for i in chosen],
            ordered=False,
        )
        claimed = [d async for d in coll.find({"_id": {"$in": chosen}, **held})]
    if len(claimed) < limit:
        # Timers of a worker that died (or a failed firing whose retry time has come).
        # ``fresh: false`` tells the firing to look up what the first try did.
        orphaned: Document = {"state": RUNNING, "lease_until": {"$lt": t}}
        recovered = {**take, "fresh": False}
        claimed += await claim(coll, orphaned, recovered, held, limit - len(claimed))
    return sorted(claimed, key=lambda d: d["due_at"])


def _held(timer: Document, owner: str) -> Document:
    return {"_id": timer["_id"], "owner": owner, "state": RUNNING, "fired": timer["fired"]}


async def fired(
    store: Store, timer: Document, owner: str, *, next_due: datetime | None, at: datetime
) -> bool:
    """Record one firing: pending again at ``next_due``, or done. False if the timer was
    no longer ours (lease lost, cancelled meanwhile)."""
    return await fired_many(store, [(timer, next_due)], owner, at=at) == 1


async def fired_many(
    store: Store,
    firings: list[tuple[Document, datetime | None]],
    owner: str,
    *,
    at: datetime,
) -> int:
    """:func:`fired` for a batch of (timer, next due) in one round trip; returns how many
    were still ours."""
    if not firings:
        return 0
    ops = []
    for timer, nxt in firings:
        sets: Document = {"owner": None, "lease_until": EPOCH, "attempts": 0, "last_fired_at": at}
        if nxt is None:
            sets.update(state=DONE, ended_at=at, end_reason="fired")
        else:
            sets.update(state=PENDING, due_at=nxt)
        ops.append(
            UpdateOne(
                _held(timer, owner),
                {"$set": sets, "$inc": {"fired": 1}, "$unset": {"last_error": ""}},
            )
        )
    result = await timers(store).bulk_write(ops, ordered=False)
    return int(result.modified_count)


async def cancel(store: Store, timer: Document, owner: str, reason: str, at: datetime) -> bool:
    """End a claimed timer whose condition no longer holds (it does not fire)."""
    result = await timers(store).update_one(
        _held(timer, owner),
        {"$set": {"state": CANCELLED, "end_reason": reason, "ended_at": at, "owner": None}},
    )
    return bool(result.modified_count)


async def retry_later(
    store: Store,
    timer: Document,
    owner: str,
    error: str,
    *,
    retry_in_s: float,
    max_attempts: int,
    at: datetime,
    now: datetime | None = None,
) -> bool:
    """A firing failed midway: try again after ``retry_in_s`` (real time), or give up
    after ``max_attempts``. Returns True when it will be retried."""
    attempts = int(timer.get("attempts", 0)) + 1
    sets: Document = {"attempts": attempts, "last_error": error[:1000], "owner": None}
    if attempts >= max_attempts:
        sets.update(state=FAILED, ended_at=at, end_reason="failed", lease_until=EPOCH)
    else:
        # Left running with nobody's lease, ending at the retry time: claimable then.
        sets["lease_until"] = (now or real_now()) + timedelta(seconds=retry_in_s)
    await timers(store).update_one(_held(timer, owner), {"$set": sets})
    return attempts < max_attempts


async def for_entity(store: Store, entity_id: str) -> list[Document]:
    cursor = timers(store).find({"entity_id": entity_id}, sort=[("due_at", 1)])
    return [d async for d in cursor]


async def next_due(store: Store) -> datetime | None:
    """When the earliest pending timer is due."""
    doc = await timers(store).find_one(
        {"state": PENDING}, {"due_at": 1}, sort=[("state", 1), ("due_at", 1)]
    )
    return doc["due_at"] if doc else None
