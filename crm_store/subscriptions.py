"""Webhook subscriptions of downstream consumers, their cursors, and the delivery log.

A subscription is the unit of work and of ordering: one worker at a time holds it (a
lease), delivers its next events in sequence order, and moves its ``cursor`` forward
after each success. A failing event blocks only its own subscription: the subscription
is released with ``due_at`` pushed back (exponential backoff with jitter) and retried
until ``max_age_s`` has passed since the first attempt; then the event is dead-lettered
and the cursor moves past it. A replay is a finite subscription (``replay_of``) that runs
from ``cursor`` to ``until_seq`` with the parent's URL, secret and types.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_store.store import Document, Store, claim

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_MAX_AGE_S = 24 * 3600.0


def _now() -> datetime:
    return datetime.now(UTC)


def _coll(store: Store) -> Any:
    return store.db["subscriptions"]


async def current_seq(store: Store) -> int:
    doc = await store.counters.find_one({"_id": "events"})
    return int(doc["value"]) if doc else 0


async def create(
    store: Store,
    url: str,
    types: list[str],
    *,
    secret: str | None = None,
    from_seq: int | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> Document:
    """A live subscription; it starts after the current end of the log unless
    ``from_seq`` says where (0: from the beginning)."""
    start = await current_seq(store) if from_seq is None else max(from_seq - 1, 0)
    doc: Document = {
        "_id": "sub_" + secrets.token_hex(8),
        "kind": "live",
        "url": url,
        "types": sorted(set(types)),
        "secret": secret or "whsec_" + secrets.token_urlsafe(24),
        "active": True,
        "cursor": start,
        "max_age_s": max_age_s,
        "created_at": _now(),
        "due_at": _now(),
        "lease_until": EPOCH,
        "head": None,
    }
    await _coll(store).insert_one(doc)
    return doc


async def create_replay(store: Store, parent: Document, from_seq: int, to_seq: int) -> Document:
    doc: Document = {
        "_id": "rpl_" + secrets.token_hex(8),
        "kind": "replay",
        "replay_of": parent["_id"],
        "url": parent["url"],
        "types": parent["types"],
        "secret": parent["secret"],
        "active": True,
        "cursor": max(from_seq - 1, 0),
        "until_seq": to_seq,
        "max_age_s": parent.get("max_age_s", DEFAULT_MAX_AGE_S),
        "created_at": _now(),
        "due_at": _now(),
        "lease_until": EPOCH,
        "head": None,
    }
    await _coll(store).insert_one(doc)
    return doc


async def get(store: Store, sub_id: str) -> Document | None:
    doc: Document | None = await _coll(store).find_one({"_id": sub_id})
    return doc


async def list_all(store: Store, *, include_replays: bool = False) -> list[Document]:
    query: Document = {} if include_replays else {"kind": "live"}
    return [d async for d in _coll(store).find(query, sort=[("created_at", 1)])]


async def deactivate(store: Store, sub_id: str) -> bool:
    result = await _coll(store).update_one(
        {"_id": sub_id, "active": True}, {"$set": {"active": False}, "$unset": {"due_at": ""}}
    )
    return bool(result.modified_count)


async def claim_due(store: Store, owner: str, lease_s: float, limit: int) -> list[Document]:
    t = _now()
    return await claim(
        _coll(store),
        {"active": True, "due_at": {"$lte": t}, "lease_until": {"$lt": t}},
        {"owner": owner, "lease_until": t + timedelta(seconds=lease_s)},
        {"owner": owner, "lease_until": {"$gt": t}},
        limit,
    )


async def advance(store: Store, sub: Document, owner: str, cursor: int) -> bool:
    """Move the cursor forward (only while we hold the lease); finish a replay at its end."""
    update: Document = {"$set": {"cursor": cursor, "head": None}}
    if sub.get("until_seq") is not None and cursor >= int(sub["until_seq"]):
        update = {
            "$set": {"cursor": cursor, "head": None, "active": False, "finished_at": _now()},
            "$unset": {"due_at": ""},
        }
    result = await _coll(store).update_one(
        {"_id": sub["_id"], "owner": owner, "cursor": {"$lte": cursor}}, update
    )
    return bool(result.matched_count)


async def release(
    store: Store, sub: Document, owner: str, due_at: datetime, head: Document | None
) -> None:
    await _coll(store).update_one(
        {"_id": sub["_id"], "owner": owner},
        {"$set": {"due_at": due_at, "lease_until": EPOCH, "head": head}},
    )


async def record_attempt(
    store: Store,
    sub: Document,
    event: Document,
    *,
    ok: bool,
    status: int | None,
    error: str | None,
    duration_ms: float,
    dead: bool = False,
) -> None:
    """Log one delivery attempt of ``event`` to ``sub`` (the delivery log / dead letters)."""
    t = _now()
    state = "delivered" if ok else ("dead" if dead else "failing")
    await store.db["deliveries"].update_one(
        {"_id": f"{sub['_id']}:{event['_id']}"},
        {
            "$setOnInsert": {
                "subscription_id": sub["_id"],
                "replay_of": sub.get("replay_of"),
                "event_id": event["_id"],
                "seq": event["seq"],
                "type": event["type"],
                "first_attempt_at": t,
            },
            "$set": {
                "status": state,
                "last_status": status,
                "last_error": error,
                "updated_at": t,
                **({"delivered_at": t} if ok else {}),
            },
            "$inc": {"attempts": 1},
            "$push": {
                "history": {
                    "$each": [
                        {"at": t, "status": status, "error": error, "ms": round(duration_ms, 1)}
                    ],
                    "$slice": -20,
                }
            },
        },
        upsert=True,
    )


async def deliveries(
    store: Store, sub_id: str, *, status: str | None = None, limit: int = 100
) -> list[Document]:
    query: Document = {"$or": [{"subscription_id": sub_id}, {"replay_of": sub_id}]}
    if status:
        query["status"] = status
    cursor = store.db["deliveries"].find(query, sort=[("seq", 1)], limit=limit)
    return [d async for d in cursor]


async def get_delivery(store: Store, delivery_id: str) -> Document | None:
    doc: Document | None = await store.db["deliveries"].find_one({"_id": delivery_id})
    return doc
