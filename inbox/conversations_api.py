"""Conversations for operators: list, counts, one with its context, assignment, status.

- ``GET /api/v1/conversations`` — filters: status, channel, assignee (a user id or
  ``me``), unassigned, pipeline/stage of the linked lead or deal, ``q`` (text), updated
  since; newest activity first; cursor pagination (``next_cursor``).
- ``GET /api/v1/conversations/counts`` — open and unread figures: mine, unassigned, all.
- ``GET /api/v1/conversations/{id}`` — the conversation, its contact, lead/deal and the
  latest messages; ``can_reply`` says whether a reply can go out through its channel now,
  and when not, ``reply_blocked`` (a code) and ``reply_blocked_reason`` (in operator words,
  never a configuration key) say why — before anyone types.
- ``POST …/{id}/assign`` ``{"user_id"}`` (assign or transfer), ``…/take``, ``…/unassign``,
  ``…/close``, ``…/reopen``, ``…/snooze`` ``{"until"}``.

Only conversations of the departments the caller sees exist for them (404 otherwise).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from channels import REGISTRY
from channels.base import SendError, SendingChannel
from config.models import AppConfig
from crm_store import conversations as convs
from crm_store.routing_store import find_in
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.bounds import Instant
from inbox.paging import cursor_time, decode_cursor, encode_cursor
from inbox.views import ContactView, ConversationView, EntityView, MessageView
from ingest.context import Service
from ingest.outbox import outbound_of

TAG = "conversations"
MAX_LIMIT = 200
MAX_LINKED = 5000
RECENT_MESSAGES = 50


class ConversationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "closed", "snoozed"] | None = None
    channel: str | None = Field(default=None, max_length=64)
    assignee: str | None = Field(default=None, max_length=128, description="a user id, or me")
    unassigned: bool | None = Field(default=None, description="true: only unassigned ones")
    pipeline: str | None = Field(default=None, max_length=128, description="of the lead/deal")
    stage: str | None = Field(default=None, max_length=128, description="of the lead/deal")
    q: str | None = Field(
        default=None, min_length=1, max_length=200, description="text in messages or names"
    )
    updated_since: Instant | None = None
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)


class ConversationItem(ConversationView):
    contact_name: str | None = None
    last_text: str | None = Field(default=None, description="the latest message, shortened")


class ConversationPage(BaseModel):
    items: list[ConversationItem]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: end")


class Counts(BaseModel):
    open: int
    unread: int = Field(description="open conversations with unread messages")


class ConversationCounts(BaseModel):
    mine: Counts
    unassigned: Counts
    all: Counts


class ConversationDetail(BaseModel):
    conversation: ConversationView
    contact: ContactView | None
    lead: EntityView | None
    deal: EntityView | None
    messages: list[MessageView] = Field(description=f"the latest {RECENT_MESSAGES}, oldest first")
    can_reply: bool = Field(description="a reply can go out through the conversation's channel")
    reply_blocked: str | None = Field(
        default=None,
        description="why not, as a code: channel_cannot_send, form_cannot_reply, not_set_up, "
        "channel_off, no_recipient, window_closed, unavailable",
    )
    reply_blocked_reason: str | None = Field(
        default=None, description="why not, in words for the operator (internal notes still work)"
    )


# What an operator reads when a conversation cannot be answered: what happened and what to
# do, in their words — never a configuration key (an administrator finds those in the
# docs: docs/channels.md).
REPLY_BLOCKED = {
    "channel_cannot_send": "This channel only brings messages in: replies cannot be sent "
    "from the inbox. Reach the customer another way, by phone or e-mail.",
    "form_cannot_reply": "This conversation came from a site form or another system that is "
    "not connected for answers: replies cannot be sent from the inbox. Reach the customer "
    "another way, by phone or e-mail, or ask your administrator to connect replies.",
    "not_set_up": "Replies through this channel are not set up yet. Ask your administrator; "
    "until then, reach the customer another way.",
    "channel_off": "This channel is switched off, so replies cannot be sent. Ask your "
    "administrator.",
    "no_recipient": "There is no address to answer to in this conversation. Reach the "
    "customer another way.",
    "window_closed": "The customer last wrote more than 24 hours ago: WhatsApp allows a "
    "reply only after the customer writes again.",
    "unavailable": "Replies through this channel are not possible right now. Ask your "
    "administrator.",
}
_SETUP_CODES = ("not_configured", "no_token", "bad_setting", "no_webhook_token")


def reply_blocked(config: AppConfig, conv: Document) -> str | None:
    """Why no reply can go out in ``conv`` now (a key of :data:`REPLY_BLOCKED`), or None —
    the checks an operator's reply meets (inbox/replies.py), made before anyone types."""
    channel = REGISTRY.get(conv.get("channel") or "")
    if not isinstance(channel, SendingChannel):
        return "channel_cannot_send"
    account = config.account(conv["channel"], conv["account"])
    if account is None:
        return "channel_off"
    if not conv.get("reply_to"):
        return "no_recipient"
    draft: Document = {
        "_id": "draft",
        "channel": conv["channel"],
        "account": conv["account"],
        "recipient": conv["reply_to"],
        "text": "?",
        "attachments": [],
    }
    try:
        channel.check_outbound(account, outbound_of(draft, conv))
    except SendError as exc:
        if exc.code == "channel_cannot_send":
            return "form_cannot_reply" if conv["channel"] == "api" else "channel_cannot_send"
        if exc.code in ("no_recipient", "window_closed"):
            return exc.code
        if any(exc.code.endswith(c) for c in _SETUP_CODES):
            return "not_set_up"
        return "unavailable"
    return None


class AssignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)


class SnoozeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: Instant = Field(description="when the conversation opens again")


def view(doc: Document, now: datetime | None = None) -> ConversationView:
    return ConversationView.of({**doc, "status": convs.effective_status(doc, now)})


def _after_cursor(raw: str) -> Document:
    at_raw, cid = decode_cursor(raw)
    at = cursor_time(at_raw) if at_raw else None
    if not isinstance(cid, str):
        raise ApiError(
            422,
            "invalid_request",
            "cursor is not one this API gave",
            errors=[{"in": "query", "field": "cursor", "message": "unknown cursor"}],
        )
    if at is None:
        return {"last_message_at": None, "_id": {"$lt": cid}}
    return {
        "$or": [
            {"last_message_at": {"$lt": at}},
            {"last_message_at": at, "_id": {"$lt": cid}},
            {"last_message_at": None},
        ]
    }


async def _linked_ids(svc: Service, q: ConversationQuery, principal_filter: Document) -> list[str]:
    found: list[str] = []
    query: Document = {}
    if q.pipeline:
        query["pipeline_id"] = q.pipeline
    if q.stage:
        query["stage_id"] = q.stage
    for coll in ("leads", "deals"):
        cursor = svc.store[coll].find({**query, **principal_filter}, {"_id": 1}, limit=MAX_LINKED)
        found += [d["_id"] async for d in cursor]
    return found


async def _search_ids(svc: Service, text: str) -> tuple[list[str], list[str]]:
    """Conversations whose messages, and contacts whose name or addresses, hold ``text``."""
    pattern = {"$regex": re.escape(text), "$options": "i"}
    conv_ids = {
        d["conversation_id"]
        async for d in svc.store.messages.find(
            {"text": pattern}, {"conversation_id": 1}, limit=MAX_LINKED
        )
        if d.get("conversation_id")
    }
    contact_ids = [
        d["_id"]
        async for d in svc.store.contacts.find(
            {"$or": [{"name": pattern}, {"identities": pattern}]}, {"_id": 1}, limit=MAX_LINKED
        )
    ]
    return sorted(conv_ids), contact_ids


async def _filter(call: Call, q: ConversationQuery) -> Document:
    svc, principal = call.svc, call.principal
    parts: list[Document] = [access.conversation_filter(principal)]
    if q.status:
        parts.append(convs.status_filter(q.status))
    if q.channel:
        parts.append({"channel": q.channel})
    if q.assignee:
        parts.append({"assignee_id": principal.user.id if q.assignee == "me" else q.assignee})
    if q.unassigned is not None:
        parts.append({"assignee_id": None} if q.unassigned else {"assignee_id": {"$ne": None}})
    if q.pipeline or q.stage:
        linked = await _linked_ids(svc, q, access.entity_filter(svc.config, principal))
        parts.append({"target.id": {"$in": linked}})
    if q.q:
        conv_ids, contact_ids = await _search_ids(svc, q.q)
        parts.append({"$or": [{"_id": {"$in": conv_ids}}, {"contact_id": {"$in": contact_ids}}]})
    if q.updated_since:
        since = q.updated_since
        parts.append(
            {"$or": [{"last_message_at": {"$gte": since}}, {"updated_at": {"$gte": since}}]}
        )
    if q.cursor:
        parts.append(_after_cursor(q.cursor))
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


async def _items(svc: Service, docs: list[Document]) -> list[ConversationItem]:
    contact_ids = {d["contact_id"] for d in docs if d.get("contact_id")}
    found = await find_in(svc.store.contacts, "_id", contact_ids, {"name": 1})
    names: dict[str, str | None] = {c["_id"]: c.get("name") for c in found}
    now = datetime.now(UTC)
    items = []
    for d in docs:
        last = d.get("last_inbound") or {}
        text = last.get("text") if isinstance(last, dict) else None
        items.append(
            ConversationItem.model_validate(
                {
                    **view(d, now).model_dump(),
                    "contact_name": names.get(d.get("contact_id") or ""),
                    "last_text": (text or "")[:200] or None,
                }
            )
        )
    return items


@route(
    "GET",
    "/api/v1/conversations",
    summary="Conversations the caller may see, newest activity first",
    tag=TAG,
    query=ConversationQuery,
    response=ConversationPage,
)
async def list_conversations(call: Call) -> ConversationPage:
    q = call.q(ConversationQuery)
    query = await _filter(call, q)
    docs = [
        d
        async for d in call.svc.store.conversations.find(
            query, sort=[("last_message_at", -1), ("_id", -1)], limit=q.limit + 1
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    next_cursor = None
    if more and docs:
        last_at = docs[-1].get("last_message_at")
        next_cursor = encode_cursor(last_at.isoformat() if last_at else None, docs[-1]["_id"])
    return ConversationPage(items=await _items(call.svc, docs), next_cursor=next_cursor)


@route(
    "GET",
    "/api/v1/conversations/counts",
    summary="Open and unread conversations: mine, unassigned, all the caller sees",
    tag=TAG,
    response=ConversationCounts,
)
async def conversation_counts(call: Call) -> ConversationCounts:
    base = {"$and": [access.conversation_filter(call.principal), convs.status_filter("open")]}
    coll = call.svc.store.conversations

    async def counts(extra: Document) -> Counts:
        query = {"$and": [base, extra]}
        unread = {"$and": [base, extra, {"unread": {"$gt": 0}}]}
        return Counts(
            open=await coll.count_documents(query), unread=await coll.count_documents(unread)
        )

    return ConversationCounts(
        mine=await counts({"assignee_id": call.principal.user.id}),
        unassigned=await counts({"assignee_id": None}),
        all=await counts({}),
    )


async def visible_conversation(call: Call, conv_id: str | None = None) -> Document:
    """The conversation of the path, if the caller sees it; 404 otherwise."""
    cid = conv_id or call.path("id")
    doc = await call.svc.store.conversations.find_one({"_id": cid})
    if not access.sees_conversation(call.principal, doc):
        raise ApiError(404, "not_found", f"no conversation {cid}")
    assert doc is not None
    return doc


async def recent_messages(svc: Service, conv_id: str, limit: int) -> list[MessageView]:
    docs = [
        d
        async for d in svc.store.messages.find(
            {"conversation_id": conv_id},
            {"raw": 0, "meta": 0, "decision": 0, "identities": 0},
            sort=[("received_at", -1), ("_id", -1)],
            limit=limit,
        )
    ]
    return [MessageView.of(d) for d in reversed(docs)]


@route(
    "GET",
    "/api/v1/conversations/{id}",
    summary="One conversation with its contact, lead or deal and latest messages",
    tag=TAG,
    response=ConversationDetail,
    errors=(404,),
)
async def get_conversation(call: Call) -> ConversationDetail:
    doc = await visible_conversation(call)
    store = call.svc.store
    contact = None
    if doc.get("contact_id"):
        contact = await store.contacts.find_one({"_id": doc["contact_id"]})
    target = doc.get("target") or {}
    entities: dict[str, EntityView | None] = {"lead": None, "deal": None}
    if target.get("kind") in ("lead", "deal") and target.get("id"):
        kind = target["kind"]
        found = await store[f"{kind}s"].find_one({"_id": target["id"]})
        if found is not None:
            entities[kind] = EntityView.of_kind(kind, found)
    blocked = reply_blocked(call.svc.config, doc)
    return ConversationDetail(
        conversation=view(doc),
        contact=ContactView.of(contact) if contact else None,
        lead=entities["lead"],
        deal=entities["deal"],
        messages=await recent_messages(call.svc, doc["_id"], RECENT_MESSAGES),
        can_reply=blocked is None,
        reply_blocked=blocked,
        reply_blocked_reason=REPLY_BLOCKED[blocked] if blocked else None,
    )


def _conflict(conv_id: str) -> ApiError:
    return ApiError(409, "conflict", f"conversation {conv_id} changed meanwhile; read it again")


async def _assign(call: Call, user_id: str | None) -> ConversationView:
    doc = await visible_conversation(call)
    department = (
        access.require_assignable(call.svc.config, call.principal, user_id) if user_id else None
    )
    changed = await convs.assign(call.svc.store, doc, user_id, department, call.principal.user.id)
    if changed is None:
        raise _conflict(doc["_id"])
    return view(changed)


ACTION_ERRORS = (404, 409)


@route(
    "POST",
    "/api/v1/conversations/{id}/assign",
    summary="Assign or transfer a conversation to a user",
    tag=TAG,
    body=AssignBody,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def assign_conversation(call: Call) -> ConversationView:
    return await _assign(call, call.b(AssignBody).user_id)


@route(
    "POST",
    "/api/v1/conversations/{id}/take",
    summary="Take a conversation (assign it to yourself)",
    tag=TAG,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def take_conversation(call: Call) -> ConversationView:
    return await _assign(call, call.principal.user.id)


@route(
    "POST",
    "/api/v1/conversations/{id}/unassign",
    summary="Unassign a conversation (it stays in its department)",
    tag=TAG,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def unassign_conversation(call: Call) -> ConversationView:
    return await _assign(call, None)


async def _status(
    call: Call, status: convs.Status, until: datetime | None = None
) -> ConversationView:
    doc = await visible_conversation(call)
    changed = await convs.set_status(call.svc.store, doc, status, call.principal.user.id, until)
    if changed is None:
        raise _conflict(doc["_id"])
    return view(changed)


@route(
    "POST",
    "/api/v1/conversations/{id}/close",
    summary="Close a conversation (a new message from the customer opens it again)",
    tag=TAG,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def close_conversation(call: Call) -> ConversationView:
    return await _status(call, "closed")


@route(
    "POST",
    "/api/v1/conversations/{id}/reopen",
    summary="Reopen a closed or snoozed conversation",
    tag=TAG,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def reopen_conversation(call: Call) -> ConversationView:
    return await _status(call, "open")


@route(
    "POST",
    "/api/v1/conversations/{id}/snooze",
    summary="Snooze a conversation until a time (it opens then, or at a new message)",
    tag=TAG,
    body=SnoozeBody,
    response=ConversationView,
    errors=ACTION_ERRORS,
)
async def snooze_conversation(call: Call) -> ConversationView:
    until = call.b(SnoozeBody).until.astimezone(UTC)
    if until <= datetime.now(UTC):
        raise ApiError(
            422,
            "invalid_request",
            "until must be in the future",
            errors=[{"in": "body", "field": "until", "message": "must be in the future"}],
        )
    return await _status(call, "snoozed", until)
