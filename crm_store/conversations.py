"""Conversation state an operator changes: assignment, open/closed/snoozed, read, notes.

Each change is one conditional update plus its event (inbox/event_catalogue.py), so two
operators acting at once never both "win": the second sees the state the first left.
A snooze needs no timer: a snoozed conversation whose ``snoozed_until`` has passed *is*
open (:func:`status_filter`), and routing reopens a closed or snoozed conversation when
a new message arrives (routing/router.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from crm_store.events import append, event
from crm_store.store import Document, Store

Status = Literal["open", "closed", "snoozed"]


def _now() -> datetime:
    return datetime.now(UTC)


def status_filter(status: Status, now: datetime | None = None) -> Document:
    """The store filter of conversations that are ``status`` at ``now``."""
    t = now or _now()
    if status == "open":
        return {
            "$or": [
                {"status": "open"},
                {"status": {"$exists": False}},
                {"status": "snoozed", "snoozed_until": {"$lte": t}},
            ]
        }
    if status == "snoozed":
        return {"status": "snoozed", "snoozed_until": {"$gt": t}}
    return {"status": "closed"}


def effective_status(doc: Document, now: datetime | None = None) -> Status:
    status = doc.get("status")
    until = doc.get("snoozed_until")
    if status == "closed":
        return "closed"
    if status == "snoozed" and until is not None and until > (now or _now()):
        return "snoozed"
    return "open"


def _refs(conv: Document) -> dict[str, str | None]:
    target = conv.get("target") or {}
    refs: dict[str, str | None] = {
        "conversation_id": conv["_id"],
        "contact_id": conv.get("contact_id"),
    }
    if target.get("kind") in ("lead", "deal") and target.get("id"):
        refs[f"{target['kind']}_id"] = target["id"]
    return refs


async def _announce(
    store: Store, type_: str, conv: Document, data: Document, message_id: str | None = None
) -> None:
    """Append one event about ``conv`` (and one of its messages). An event about a message
    is keyed by it (announcing it again is a no-op); any other is a new event each time."""
    refs = _refs(conv)
    if message_id is not None:
        refs["message_id"] = message_id
    key = [message_id] if message_id is not None else [conv["_id"], uuid.uuid4().hex]
    await append(store, [event(type_, refs, data, key=key)])


async def _changed(
    store: Store, conv_id: str, expect: Document, change: Document
) -> Document | None:
    """Apply ``change`` if the conversation still matches ``expect``; the new document,
    or None when it moved meanwhile."""
    change.setdefault("$set", {})["updated_at"] = _now()
    result = await store.conversations.update_one({"_id": conv_id, **expect}, change)
    if result.matched_count == 0:
        return None
    return await store.conversations.find_one({"_id": conv_id})


async def assign(
    store: Store,
    conv: Document,
    assignee_id: str | None,
    department: str | None,
    by: str,
) -> Document | None:
    """Assign (or with None, unassign) ``conv``; None when another change came first.
    Assigning to the current assignee changes nothing and appends no event."""
    previous = conv.get("assignee_id")
    if previous == assignee_id and (assignee_id is None or conv.get("department") == department):
        return conv
    fields: Document = {"assignee_id": assignee_id}
    if department is not None:
        fields["department"] = department
    doc = await _changed(store, conv["_id"], {"assignee_id": previous}, {"$set": fields})
    if doc is not None:
        data = {
            "assignee_id": assignee_id,
            "previous_assignee_id": previous,
            "department": doc.get("department"),
            "by": by,
        }
        await _announce(store, "conversation.assigned", doc, data)
    return doc


async def set_status(
    store: Store,
    conv: Document,
    status: Status,
    by: str,
    until: datetime | None = None,
) -> Document | None:
    """Close, reopen or snooze ``conv``; None when another change came first."""
    now = _now()
    current = effective_status(conv, now)
    if current == status and status != "snoozed":
        return conv
    fields: Document = {"status": status, "snoozed_until": until if status == "snoozed" else None}
    if status == "closed":
        fields["closed_at"] = now
        fields["closed_by"] = by
    expect = {"status": conv.get("status"), "snoozed_until": conv.get("snoozed_until")}
    doc = await _changed(store, conv["_id"], expect, {"$set": fields})
    if doc is not None:
        kind = {"open": "conversation.reopened", "closed": "conversation.closed"}.get(
            status, "conversation.snoozed"
        )
        data: dict[str, Any] = {
            "status": status,
            "snoozed_until": until if status == "snoozed" else None,
            "department": doc.get("department"),
            "by": by,
        }
        await _announce(store, kind, doc, data)
    return doc


async def mark_read(store: Store, conv: Document, by: str) -> Document:
    """Everything in ``conv`` read (unread 0). Idempotent: nothing unread, no event."""
    if not conv.get("unread"):
        return conv
    now = _now()
    await store.conversations.update_one(
        {"_id": conv["_id"]}, {"$set": {"unread": 0, "read_at": now, "read_by": by}}
    )
    data = {"department": conv.get("department"), "by": by}
    await _announce(store, "conversation.read", conv, data)
    return {**conv, "unread": 0, "read_at": now, "read_by": by}


async def add_note(store: Store, conv: Document, text: str, by: str) -> Document:
    """An internal note: a message of direction ``note``, never sent anywhere."""
    now = _now()
    doc: Document = {
        "_id": uuid.uuid4().hex,
        "direction": "note",
        "channel": conv["channel"],
        "account": conv["account"],
        "conversation_id": conv["_id"],
        "contact_id": conv.get("contact_id"),
        "target": conv.get("target"),
        "text": text,
        "attachments": [],
        "author_id": by,
        "received_at": now,
    }
    await store.messages.insert_one(doc)
    await store.conversations.update_one({"_id": conv["_id"]}, {"$set": {"updated_at": now}})
    data = {"channel": conv["channel"], "author_id": by, "department": conv.get("department")}
    await _announce(store, "message.note_added", conv, data, doc["_id"])
    return doc


async def queued(store: Store, conv: Document, message: Document) -> None:
    """Announce an operator's reply that the outbox will send."""
    data = {
        "channel": conv["channel"],
        "author_id": message.get("author_id"),
        "department": conv.get("department"),
    }
    await _announce(store, "message.queued", conv, data, message["_id"])
