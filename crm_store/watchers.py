"""Watchers of a lead or deal: users who follow it without working it (the forensic
bureau's head on a laboratory project). ``watchers`` [user ids] on the document; rules
address them as ``to: watchers`` (automation/people.py). Each change appends
``<kind>.watchers_changed`` {user, added, by}."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from crm_store.events import append, event
from crm_store.store import Store

Kind = Literal["lead", "deal"]


async def change(
    store: Store,
    kind: Kind,
    entity_id: str,
    user_id: str,
    *,
    add: bool,
    by: str | None,
    at: datetime | None = None,
) -> bool:
    """Add (or remove) ``user_id``; True if the list changed."""
    at = at or datetime.now(UTC)
    coll = store[f"{kind}s"]
    if add:
        result = await coll.update_one(
            {"_id": entity_id, "watchers": {"$ne": user_id}},
            {"$addToSet": {"watchers": user_id}, "$set": {"updated_at": at}},
        )
    else:
        result = await coll.update_one(
            {"_id": entity_id, "watchers": user_id},
            {"$pull": {"watchers": user_id}, "$set": {"updated_at": at}},
        )
    if not result.modified_count:
        return False
    doc = await coll.find_one({"_id": entity_id}, {"contact_id": 1})
    refs: dict[str, str | None] = {
        f"{kind}_id": entity_id,
        "contact_id": (doc or {}).get("contact_id"),
    }
    data = {"user": user_id, "added": add, "by": by}
    key = ["watchers", entity_id, user_id, uuid.uuid4().hex]
    await append(store, [event(f"{kind}.watchers_changed", refs, data, key=key, at=at)])
    return True
