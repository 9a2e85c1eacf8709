"""Tasks: work for a person, with a deadline, a checklist and watchers — created by
automation (or anyone), listed per user, completed and reopened.

Document: ``_id`` (automation: its idempotency key, so a re-run creates nothing twice),
``title``, ``description``, ``template`` (the task's kind, what rules test), ``entity``
{kind, id}, ``entity_id``, ``contact_id``, ``assignee_id``, ``watchers``, ``checklist``
[{text, done}], ``deadline``, ``status`` (open | done), ``round`` (completions so far),
``rule_id``, ``created_at``, ``completed_at``/``completed_by``, ``cancelled_at``/``cancel_reason``.
Each completion and reopening appends ``task.completed`` / ``task.reopened`` with its own id;
a cancellation (:func:`cancel_for_entity`) ``task.cancelled``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from crm_store.events import append, event
from crm_store.store import Collection, Document, Store

OPEN = "open"
DONE = "done"
# Closed without being done: its lead or deal closed, was converted or deleted
# (automation/worker.py); ``cancel_reason`` says which.
CANCELLED = "cancelled"


def tasks(store: Store) -> Collection:
    return store["tasks"]


def refs(doc: Document) -> dict[str, str | None]:
    entity = doc.get("entity") or {}
    out: dict[str, str | None] = {"task_id": doc["_id"], "contact_id": doc.get("contact_id")}
    if entity.get("kind") in ("lead", "deal"):
        out[f"{entity['kind']}_id"] = entity.get("id")
    return out


def created_event(doc: Document) -> Document:
    return event(
        "task.created",
        refs(doc),
        {
            "title": doc["title"],
            "template": doc.get("template"),
            "assignee_id": doc.get("assignee_id"),
            "watchers": doc.get("watchers", []),
            "deadline": doc.get("deadline"),
            "rule_id": doc.get("rule_id"),
        },
        key=[doc["_id"]],
        at=doc["created_at"],
    )


async def create(store: Store, doc: Document) -> tuple[Document, bool]:
    """Insert a task (``status`` open) and announce it; an existing ``_id`` is the same
    task created before (returned, announced again harmlessly)."""
    doc = {"status": OPEN, "round": 0, "watchers": [], "checklist": [], **doc}
    created = True
    try:
        await tasks(store).insert_one(doc)
    except DuplicateKeyError:
        existing = await tasks(store).find_one({"_id": doc["_id"]})
        if existing is None:
            raise
        doc, created = existing, False
    await append(store, [created_event(doc)], maybe_written=not created)
    return doc, created


async def get(store: Store, task_id: str) -> Document | None:
    doc: Document | None = await tasks(store).find_one({"_id": task_id})
    return doc


async def list_for(
    store: Store,
    user_id: str,
    *,
    status: str | None = None,
    watching: bool = False,
    limit: int = 100,
) -> list[Document]:
    """A user's tasks (or those they watch), open ones by deadline, then the rest newest
    first."""
    query: Document = {"watchers": user_id} if watching else {"assignee_id": user_id}
    if status is not None:
        query["status"] = status
    sort = [("status", DESCENDING), ("deadline", ASCENDING), ("created_at", DESCENDING)]
    return [d async for d in tasks(store).find(query, sort=sort, limit=limit)]


async def for_entity(store: Store, entity_id: str) -> list[Document]:
    cursor = tasks(store).find({"entity_id": entity_id}, sort=[("created_at", ASCENDING)])
    return [d async for d in cursor]


async def states(store: Store, entity_id: str) -> dict[str, str]:
    """The status of the latest task of each template on an entity."""
    out: dict[str, str] = {}
    cursor = tasks(store).find(
        {"entity_id": entity_id}, {"template": 1, "status": 1}, sort=[("created_at", 1)]
    )
    async for d in cursor:
        if d.get("template"):
            out[d["template"]] = d["status"]
    return out


async def _transition(
    store: Store, task_id: str, frm: str, to: str, by: str | None, at: datetime | None
) -> tuple[Document | None, bool]:
    at = at or datetime.now(UTC)
    sets: dict[str, Any] = {"status": to, "updated_at": at}
    update: Document = {"$set": sets}
    if to == DONE:
        sets.update(completed_at=at, completed_by=by)
        update["$inc"] = {"round": 1}
    else:
        sets.update(reopened_at=at, reopened_by=by)
        update["$unset"] = {"completed_at": "", "completed_by": ""}
    result = await tasks(store).update_one({"_id": task_id, "status": frm}, update)
    doc = await get(store, task_id)
    if doc is None or not result.modified_count:
        return doc, False
    type_ = "task.completed" if to == DONE else "task.reopened"
    data = {"template": doc.get("template"), "assignee_id": doc.get("assignee_id"), "by": by}
    # One event per completion (round) and per reopening after it.
    key = [task_id, to, str(doc.get("round", 0))]
    await append(store, [event(type_, refs(doc), data, key=key, at=at)])
    return doc, True


async def complete(
    store: Store, task_id: str, *, by: str | None = None, at: datetime | None = None
) -> tuple[Document | None, bool]:
    """Mark a task done; (task, changed) — completing a done task changes nothing."""
    return await _transition(store, task_id, OPEN, DONE, by, at)


async def reopen(
    store: Store, task_id: str, *, by: str | None = None, at: datetime | None = None
) -> tuple[Document | None, bool]:
    return await _transition(store, task_id, DONE, OPEN, by, at)


async def cancel_for_entity(
    store: Store, entity_id: str, reason: str, *, at: datetime | None = None
) -> list[Document]:
    """Cancel the open tasks of a lead/deal that closed, was converted or deleted (status
    ``cancelled`` with the reason; not done): each announced once by ``task.cancelled``.
    Idempotent: a re-run finds them cancelled and announces them again harmlessly."""
    at = at or datetime.now(UTC)
    found = [
        d
        async for d in tasks(store).find(
            {"entity_id": entity_id, "status": {"$in": [OPEN, CANCELLED]}}
        )
        if d["status"] == OPEN or d.get("cancel_reason") == reason
    ]
    if not found:
        return []
    await tasks(store).update_many(
        {"_id": {"$in": [d["_id"] for d in found]}, "status": OPEN},
        {"$set": {"status": CANCELLED, "cancel_reason": reason, "cancelled_at": at}},
    )
    evs = [
        event(
            "task.cancelled",
            refs(d),
            {"template": d.get("template"), "assignee_id": d.get("assignee_id"), "reason": reason},
            key=[d["_id"], CANCELLED],
            at=d.get("cancelled_at") or at,
        )
        for d in found
    ]
    await append(store, evs, maybe_written=True)
    return found


# The reminder still to send: ``remind_at`` while it is not sent (set with it, removed by
# the claim). The reminder pass reads open tasks by it (index ``reminders_due``), a range
# that holds only the reminders still to send — on ``remind_at`` it would also hold every
# reminder already sent (they stay on open tasks), and the embedded server answers a null
# equality (``reminded_at: None``) or a range without a lower bound by a scan: 370 ms a
# pass at 20k tasks, every poll (docs/automation.md "Task reminders").
REMIND_DUE = "remind_due_at"
EVER = datetime(1, 1, 1, tzinfo=UTC)  # the lower bound that keeps the range on the index


def arm_reminder(remind_at: datetime) -> Document:
    """The fields of a task whose reminder is (again) due at ``remind_at``."""
    return {"remind_at": remind_at, REMIND_DUE: remind_at, "reminded_at": None}


async def due_reminders(store: Store, now: datetime, limit: int = 100) -> list[Document]:
    """Open tasks whose reminder (``remind_at``: the deadline minus the rule's
    ``remind_before``) is due and not sent yet."""
    query = {"status": OPEN, REMIND_DUE: {"$gte": EVER, "$lte": now}}
    found = await tasks(store).find(query, sort=[(REMIND_DUE, ASCENDING)], limit=limit).to_list()
    # Sent by a process of an older version, which left the mark: cleared, not sent again.
    sent = [d["_id"] for d in found if d.get("reminded_at") is not None]
    if sent:
        await tasks(store).update_many(
            {"_id": {"$in": sent}, "reminded_at": {"$ne": None}}, {"$unset": {REMIND_DUE: ""}}
        )
    return [d for d in found if d.get("reminded_at") is None]


async def claim_reminder(store: Store, task_id: str, at: datetime) -> bool:
    """Mark the reminder of an open task sent; True for the one caller that did."""
    result = await tasks(store).update_one(
        {"_id": task_id, "status": OPEN, "reminded_at": None},
        {"$set": {"reminded_at": at}, "$unset": {REMIND_DUE: ""}},
    )
    return bool(result.modified_count)


async def arm_earlier_reminders(store: Store, *, dry_run: bool = False) -> int:
    """Make ``remind_due_at`` equal ``remind_at`` on the open tasks whose reminder is not
    sent: those an older version armed (or re-armed: a deadline that followed its field)
    without it. At start and by ``omniroute db migrate`` — run it again once the last
    process of an older version has stopped (docs/scaling.md); idempotent, safe while other
    processes run. Returns how many were armed (``dry_run``: would be)."""
    armed = 0
    query: Document = {"status": OPEN, "reminded_at": None, "remind_at": {"$type": "date"}}
    async for d in tasks(store).find(query, {"remind_at": 1, REMIND_DUE: 1}):
        if d.get(REMIND_DUE) == d["remind_at"]:
            continue
        if dry_run:
            armed += 1
            continue
        done = await tasks(store).update_one(
            {"_id": d["_id"], "status": OPEN, "reminded_at": None, "remind_at": d["remind_at"]},
            {"$set": {REMIND_DUE: d["remind_at"]}},
        )
        armed += done.modified_count
    return armed
