"""Webchat visitors: what a visitor told us in their sessions (``webchat_visitors``).

One document per visitor id (the id inside their visitor token): the account, the
pre-chat name / e-mail / phone, a verified identifier (identity validation) and the last
page. A message's sender is built from it (inbox/webchat_api.py). Fields are only ever
set, never cleared by a later session that leaves them out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from crm_store.store import Document, Store

COLLECTION = "webchat_visitors"


async def remember(store: Store, visitor_id: str, account: str, fields: Document) -> Document:
    """Record a session of ``visitor_id``; the visitor's document as it is now."""
    now = datetime.now(UTC)
    given = {k: v for k, v in fields.items() if v is not None}
    await store[COLLECTION].update_one(
        {"_id": visitor_id},
        {
            "$set": {**given, "account": account, "seen_at": now},
            "$setOnInsert": {"created_at": now},
        },
        upsert=True,
    )
    return await visitor(store, visitor_id) or {"_id": visitor_id, "account": account}


async def visitor(store: Store, visitor_id: str) -> Document | None:
    return await store[COLLECTION].find_one({"_id": visitor_id})
