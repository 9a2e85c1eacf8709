"""The ledger of automation actions that are not idempotent by themselves.

Each action of a rule firing has an idempotency key (rule, entity, occurrence, position).
Creating a task or a notification is idempotent through its id; setting a field, moving a
stage, numbering, cascading a responsible or calling a webhook is recorded here: ``begin``
stores what the action saw before acting (``memo``: the old value, the number reserved),
``finish`` marks it done. A re-run after a crash finds the key: done → skipped; started →
carried out again from the memo, so the outcome and its event are the first run's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from crm_store.store import Collection, Document, Store

STARTED = "started"
DONE = "done"
FAILED = "failed"


def ledger(store: Store) -> Collection:
    return store["automation_actions"]


async def begin(store: Store, key: str, memo: dict[str, Any], **info: Any) -> Document:
    """Record that the action ``key`` starts; if it was recorded before, return that
    record instead (with the first run's memo)."""
    doc: Document = {
        "_id": key,
        "state": STARTED,
        "memo": memo,
        "attempts": 1,
        "started_at": datetime.now(UTC),
        **info,
    }
    try:
        await ledger(store).insert_one(doc)
    except DuplicateKeyError:
        existing = await ledger(store).find_one({"_id": key})
        if existing is None:
            raise
        await ledger(store).update_one({"_id": key}, {"$inc": {"attempts": 1}})
        existing["attempts"] = int(existing.get("attempts", 1)) + 1
        return existing
    return doc


async def remember(store: Store, key: str, memo: dict[str, Any]) -> None:
    """Add to an action's memo (e.g. the number a counter handed out)."""
    await ledger(store).update_one(
        {"_id": key}, {"$set": {f"memo.{k}": v for k, v in memo.items()}}
    )


async def finish(store: Store, key: str, state: str = DONE, **result: Any) -> None:
    await ledger(store).update_one(
        {"_id": key}, {"$set": {"state": state, "finished_at": datetime.now(UTC), **result}}
    )


async def finished(store: Store, keys: Iterable[str]) -> set[str]:
    """The keys among ``keys`` whose action is done (or failed for good)."""
    wanted = list(keys)
    if not wanted:
        return set()
    cursor = ledger(store).find({"_id": {"$in": wanted}, "state": {"$ne": STARTED}}, {"_id": 1})
    return {d["_id"] async for d in cursor}
