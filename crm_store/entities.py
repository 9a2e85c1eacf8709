"""Edits of leads, deals, contacts and companies that operators and automation make:
fields, the responsible, copies into another pipeline, removing a duplicate.

Each edit appends its event (``<kind>.field_changed``, ``<kind>.responsible_changed``,
``deal.created``, ``<kind>.deleted``) after the write, so whoever follows the event log
(automation, consumers) reads the entity already changed. A ``key`` makes the event id
deterministic: a re-run of the same automated edit writes nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError

from config.models import Pipeline
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Collection, Document, Store

Kind = Literal["lead", "deal", "contact", "company"]
COLLECTIONS: dict[str, str] = {
    "lead": "leads",
    "deal": "deals",
    "contact": "contacts",
    "company": "companies",
}


class EntityError(ValueError):
    """The edit cannot be made (no such entity, a deleted one)."""


def collection(store: Store, kind: str) -> Collection:
    return store[COLLECTIONS[kind]]


async def get(store: Store, kind: str, entity_id: str) -> Document | None:
    doc: Document | None = await collection(store, kind).find_one({"_id": entity_id})
    return doc


def _refs(kind: str, doc: Document) -> dict[str, str | None]:
    refs: dict[str, str | None] = {f"{kind}_id": doc["_id"]}
    if kind in ("lead", "deal"):
        refs["contact_id"] = doc.get("contact_id")
    return refs


def _event_key(key: str | None, *parts: str) -> list[str]:
    return [key] if key is not None else [*parts, uuid.uuid4().hex]


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


async def set_fields(
    store: Store,
    kind: Literal["lead", "deal"],
    entity_id: str,
    values: Mapping[str, Any],
    *,
    by: str | None = None,
    at: datetime | None = None,
    key: str | None = None,
    before: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Set fields (``None`` removes one) and announce what changed: ``{name: (old, new)}``.

    ``before``: the values an earlier, interrupted run of the same ``key`` saw — a field
    already at its new value but different there is announced (the first run may have
    died between the write and the event)."""
    at = at or datetime.now(UTC)
    doc = await collection(store, kind).find_one({"_id": entity_id})
    if doc is None or doc.get("deleted"):
        raise EntityError(f"no {kind} {entity_id}")
    current: dict[str, Any] = doc.get("fields") or {}
    changes: dict[str, tuple[Any, Any]] = {}
    for name, new in values.items():
        old = current.get(name)
        if not _same(old, new):
            changes[name] = (old, new)
        elif before is not None and name in before and not _same(before[name], new):
            changes[name] = (before[name], new)
    if not changes:
        return {}
    sets: Document = {f"fields.{n}": v for n, v in values.items() if v is not None}
    unsets: Document = {f"fields.{n}": "" for n, v in values.items() if v is None}
    update: Document = {"$set": {**sets, "updated_at": at}}
    if unsets:
        update["$unset"] = unsets
    await collection(store, kind).update_one({"_id": entity_id}, update)
    data = {
        "fields": {n: {"old": old, "new": new} for n, (old, new) in changes.items()},
        "by": by,
    }
    await append(
        store,
        [
            event(
                f"{kind}.field_changed",
                _refs(kind, doc),
                data,
                key=_event_key(key, kind, entity_id),
                at=at,
            )
        ],
    )
    return changes


async def set_responsible(
    store: Store,
    kind: Kind,
    entity_id: str,
    user_id: str | None,
    *,
    by: str | None = None,
    at: datetime | None = None,
    key: str | None = None,
    before: str | None = None,
) -> bool:
    """Make ``user_id`` responsible; True if that changed something (see ``before`` in
    :func:`set_fields`)."""
    at = at or datetime.now(UTC)
    doc = await collection(store, kind).find_one({"_id": entity_id})
    if doc is None or doc.get("deleted"):
        raise EntityError(f"no {kind} {entity_id}")
    old = doc.get("responsible_id")
    if old == user_id:
        if before is None or before == user_id:
            return False
        old = before
    await collection(store, kind).update_one(
        {"_id": entity_id}, {"$set": {"responsible_id": user_id, "updated_at": at}}
    )
    await append(
        store,
        [
            event(
                f"{kind}.responsible_changed",
                _refs(kind, doc),
                {"from": old, "to": user_id, "by": by},
                key=_event_key(key, kind, entity_id),
                at=at,
            )
        ],
    )
    return True


async def copy_to_pipeline(
    store: Store,
    source: Document,
    pipeline: Pipeline,
    stage_id: str,
    fields: Sequence[str] | None,
    *,
    key: str,
    by: str | None = None,
    at: datetime | None = None,
) -> tuple[Document, bool]:
    """A new deal in ``pipeline`` for the same contact, with ``fields`` of ``source`` (a
    lead or deal; None: all its fields). Its id derives from ``key``: a re-run returns the
    copy made before (and announces it again, harmlessly). Returns (deal, created)."""
    at = at or datetime.now(UTC)
    src_fields: dict[str, Any] = source.get("fields") or {}
    chosen = src_fields if fields is None else {f: src_fields[f] for f in fields if f in src_fields}
    doc: Document = {
        "_id": stable_id("deal", "copy", key),
        "contact_id": source.get("contact_id"),
        "pipeline_id": pipeline.id,
        "stage_id": stage_id,
        "open": True,
        "is_repeat": False,
        "source_id": source.get("source_id"),
        "responsible_id": source.get("responsible_id"),
        "identities": source.get("identities", []),
        "title": source.get("title"),
        "fields": dict(chosen),
        "meta": {},
        "copied_from": source["_id"],
        "origin": "automation",
        "created_at": at,
        "stage_entered_at": at,
        "last_activity_at": at,
    }
    created = True
    try:
        await store.deals.insert_one(doc)
    except DuplicateKeyError:
        existing = await store.deals.find_one({"_id": doc["_id"]})
        if existing is None:
            raise
        doc, created = existing, False
    refs: dict[str, str | None] = {
        "deal_id": doc["_id"],
        "contact_id": doc.get("contact_id"),
        "copied_from": source["_id"],
    }
    data = {
        "pipeline_id": pipeline.id,
        "stage_id": doc["stage_id"],
        "source_id": doc.get("source_id"),
        "responsible_id": doc.get("responsible_id"),
        "is_repeat": False,
    }
    await append(
        store,
        [event("deal.created", refs, data, key=["copy", key], at=doc["created_at"])],
        maybe_written=not created,
    )
    return doc, created


async def delete_duplicate(
    store: Store,
    kind: Literal["lead", "deal"],
    entity_id: str,
    *,
    by: str | None = None,
    at: datetime | None = None,
    key: str | None = None,
    reason: str = "duplicate",
) -> bool:
    """Remove a duplicate lead/deal from the pipeline: it is closed and marked
    ``deleted`` (kept for the history; lists and routing ignore it), its conversations
    learn their target is gone. True if this call deleted it."""
    at = at or datetime.now(UTC)
    coll = collection(store, kind)
    doc = await coll.find_one({"_id": entity_id})
    if doc is None:
        raise EntityError(f"no {kind} {entity_id}")
    guard = "open_contact" if kind == "lead" else "auto_open"
    result = await coll.update_one(
        {"_id": entity_id, "deleted": {"$ne": True}},
        {
            "$set": {
                "deleted": True,
                "deleted_at": at,
                "open": False,
                "closed_at": at,
                "outcome": "deleted",
                "updated_at": at,
            },
            "$unset": {guard: ""},
        },
    )
    if result.modified_count:
        await store.conversations.update_many(
            {"target.id": entity_id}, {"$set": {"target.open": False}}
        )
    elif key is None:
        return False
    await append(
        store,
        [
            event(
                f"{kind}.deleted",
                _refs(kind, doc),
                {"by": by, "reason": reason},
                key=_event_key(key, kind, entity_id),
                at=at,
            )
        ],
        maybe_written=not result.modified_count,
    )
    return bool(result.modified_count)
