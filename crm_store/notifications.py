"""Notifications: a short text for one user about a lead/deal, stored (listed per user,
marked read) and announced as ``notification.created`` in the event log — the inbox
pushes it from there.

Document: ``_id`` (automation: derived from its idempotency key and the user), ``user_id``,
``text``, ``entity`` {kind, id}, ``contact_id``, ``rule_id``, ``created_at``, ``read_at``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from crm_store import routing_store as rs
from crm_store.events import append, event
from crm_store.store import Collection, Document, Store


def notifications(store: Store) -> Collection:
    return store["notifications"]


def created_event(doc: Document) -> Document:
    entity = doc.get("entity") or {}
    refs: dict[str, str | None] = {
        "notification_id": doc["_id"],
        "contact_id": doc.get("contact_id"),
    }
    if entity.get("kind") in ("lead", "deal"):
        refs[f"{entity['kind']}_id"] = entity.get("id")
    return event(
        "notification.created",
        refs,
        {"user_id": doc["user_id"], "text": doc["text"], "rule_id": doc.get("rule_id")},
        key=[doc["_id"]],
        at=doc["created_at"],
    )


async def store_many(store: Store, docs: list[Document]) -> set[str]:
    """Store notifications (an existing ``_id`` is skipped) without announcing them — the
    caller appends their :func:`created_event` s with its own events; returns the ids
    stored by this call."""
    return await rs.insert_new(store, "notifications", docs) if docs else set()


async def create_many(store: Store, docs: list[Document]) -> set[str]:
    """Store notifications (an existing ``_id`` is skipped) and announce them; returns the
    ids stored by this call."""
    inserted = await store_many(store, docs)
    if docs:
        events = [created_event(d) for d in docs]
        await append(store, events, maybe_written=len(inserted) < len(docs))
    return inserted


async def list_for(
    store: Store, user_id: str, *, unread: bool = False, limit: int = 100
) -> list[Document]:
    query: Document = {"user_id": user_id}
    if unread:
        query["read_at"] = None
    cursor = notifications(store).find(query, sort=[("created_at", -1)], limit=limit)
    return [d async for d in cursor]


async def mark_read(store: Store, notification_id: str, user_id: str) -> Document | None:
    """Mark one of ``user_id``'s notifications read (None: no such notification of theirs)."""
    await notifications(store).update_one(
        {"_id": notification_id, "user_id": user_id, "read_at": None},
        {"$set": {"read_at": datetime.now(UTC)}},
    )
    doc: Document | None = await notifications(store).find_one(
        {"_id": notification_id, "user_id": user_id}
    )
    return doc
