"""Which events an operator's live connection receives — pure decisions, no I/O.

An event reaches a user when they may see what it is about (inbox/access.py):

- it names a **conversation**: the conversation's *current* department is one they see;
- a **notification**: it is theirs (``data.user_id``) — nobody else's, not even an admin's;
- a **task**: they are its assignee, a watcher, or see the assignee's department;
- else it names a **lead, deal or contact**: one of those entities' responsibles is in a
  department they see (the same rule as the event feed, inbox/events_api.py);
- a live event naming nothing of the above — admins only.

Event types an operator's screen does not use (timers, automation failures, …) are not
sent at all (:data:`LIVE_TYPES`). The facts are looked up per page of events by the hub
(inbox/live_api.py) and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crm_store.store import Document
from inbox.access import sees_conversation
from inbox.auth import Principal

# What an operator's screen needs; the rest of the feed is for downstream systems.
LIVE_TYPES = frozenset(
    {
        "message.attached",
        "message.queued",
        "message.sent",
        "message.delivery_changed",
        "message.edited",
        "message.deleted",
        "message.restored",
        "message.note_added",
        "comment.moderated",
        "document.generated",
        "document.sent",
        "document.signed",
        "conversation.opened",
        "conversation.retargeted",
        "conversation.assigned",
        "conversation.closed",
        "conversation.reopened",
        "conversation.snoozed",
        "conversation.read",
        "task.created",
        "task.completed",
        "task.reopened",
        "notification.created",
        "lead.created",
        "lead.converted",
        "contact.merged",
        "lead.repeat_created",
        "deal.created",
        "lead.stage_changed",
        "deal.stage_changed",
        "lead.field_changed",
        "deal.field_changed",
        "lead.responsible_changed",
        "deal.responsible_changed",
        "call.missed",
    }
)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the visibility of a page of events depends on, read once per page."""

    # conversation id → its department now (None: no department; absent: unknown id).
    conversation_department: Mapping[str, str | None] = field(default_factory=dict)
    # event id → the departments of the responsibles of the entities it names.
    entity_departments: Mapping[str, set[str]] = field(default_factory=dict)
    # user id → department (from the configuration).
    user_department: Mapping[str, str] = field(default_factory=dict)


def visible(event: Document, principal: Principal, facts: Facts) -> bool:
    """May ``principal`` receive ``event``?"""
    etype = str(event.get("type", ""))
    if etype not in LIVE_TYPES:
        return False
    refs: Mapping[str, str] = event.get("refs") or {}
    data: Mapping[str, object] = event.get("data") or {}
    me = principal.user.id
    if etype == "notification.created":
        return data.get("user_id") == me
    if etype.startswith("task."):
        assignee = data.get("assignee_id")
        watchers = data.get("watchers") or []
        if assignee == me or (isinstance(watchers, list) and me in watchers):
            return True
        dept = facts.user_department.get(str(assignee)) if assignee else None
        return dept is not None and principal.sees_department(dept)
    if principal.departments is None:
        return True
    conv_id = refs.get("conversation_id")
    if conv_id and conv_id in facts.conversation_department:
        department = facts.conversation_department[conv_id]
        return sees_conversation(principal, {"department": department})
    depts = facts.entity_departments.get(str(event.get("_id")), set())
    return bool(depts & principal.departments)
