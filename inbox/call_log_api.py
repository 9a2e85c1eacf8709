"""The call log an operator needs: calls with their recordings.

- ``GET /api/v1/calls?contact_id=&phone=&disposition=&cursor=&limit=`` — newest first;
- ``GET /api/v1/calls/{id}`` — one call.

A call is visible through its message's conversation (the department that works the
customer); a call that routing did not attach to a customer (internal, hidden number) is
visible to admins only. (``POST /api/v1/calls`` — click-to-call — is inbox/calls_api.py.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from channels.calls import CallRecord
from channels.identity import normalize_phone
from crm_store import calls as call_store
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError, Principal
from inbox.paging import cursor_of, older_than
from ingest.context import Service

TAG = "calls"
SCAN_LIMIT = 2000


class CallQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: str | None = Field(default=None, max_length=128)
    phone: str | None = Field(default=None, max_length=64, description="the customer's number")
    disposition: Literal["answered", "missed", "busy", "failed"] | None = None
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=200)


class CallView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    channel: str
    account: str
    call_id: str
    direction: str | None = None
    customer: str | None = None
    line: str | None = None
    agent: str | None = None
    disposition: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: int | None = None
    talk_s: int | None = None
    recording_url: str | None = None
    message_id: str | None = None
    conversation_id: str | None = None
    contact_id: str | None = None


class CallPage(BaseModel):
    items: list[CallView]
    next_cursor: str | None


async def _placed(svc: Service, principal: Principal, doc: Document) -> CallView | None:
    """The call as the caller may see it, or None."""
    msg = None
    if doc.get("message_id"):
        msg = await svc.store.messages.find_one(
            {"_id": doc["message_id"]}, {"conversation_id": 1, "contact_id": 1}
        )
    conv = None
    if msg is not None and msg.get("conversation_id"):
        conv = await svc.store.conversations.find_one(
            {"_id": msg["conversation_id"]}, {"department": 1}
        )
    if not principal.is_admin and not access.sees_conversation(principal, conv):
        return None
    rec = CallRecord.model_validate(doc)  # ranked/merged fields read as plain values
    return CallView.model_validate(
        {
            **rec.model_dump(mode="json", exclude={"id"}),
            "id": doc["_id"],
            "conversation_id": (msg or {}).get("conversation_id"),
            "contact_id": (msg or {}).get("contact_id"),
        }
    )


@route(
    "GET",
    "/api/v1/calls",
    summary="Calls the caller may see, newest first, with their recordings",
    tag=TAG,
    query=CallQuery,
    response=CallPage,
)
async def list_calls(call: Call) -> CallPage:
    q = call.q(CallQuery)
    svc = call.svc
    query: Document = {}
    if q.phone:
        phone = normalize_phone(q.phone)
        if phone is None:
            raise ApiError(
                422,
                "invalid_request",
                "phone is not a phone number",
                errors=[{"in": "query", "field": "phone", "message": "not a phone number"}],
            )
        query["customer"] = phone
    if q.disposition:
        # Stored ranked ({rank, value}: channels/calls.py) — or plain, in older documents.
        query["$and"] = [
            {"$or": [{"disposition.value": q.disposition}, {"disposition": q.disposition}]}
        ]
    if q.contact_id:
        ids = [
            m["_id"]
            async for m in svc.store.messages.find(
                {"contact_id": q.contact_id, "meta.kind": "call"}, {"_id": 1}, limit=SCAN_LIMIT
            )
        ]
        query["message_id"] = {"$in": ids}
    if q.cursor:
        query["$or"] = older_than(q.cursor, "started_at")["$or"]
    items: list[CallView] = []
    last: Document | None = None
    more = False
    cursor = call_store.calls(svc.store).find(
        query, sort=[("started_at", -1), ("_id", -1)], limit=SCAN_LIMIT
    )
    scanned = 0
    async for doc in cursor:
        if len(items) == q.limit:
            more = True
            break
        last = doc
        scanned += 1
        seen = await _placed(svc, call.principal, doc)
        if seen is not None:
            items.append(seen)
    more = more or scanned == SCAN_LIMIT  # a page of others' calls: go on from there
    next_cursor = None
    if more and last is not None:
        next_cursor = cursor_of(last, "started_at")
    return CallPage(items=items, next_cursor=next_cursor)


@route(
    "GET",
    "/api/v1/calls/{id}",
    summary="One call with its recording link",
    tag=TAG,
    response=CallView,
    errors=(404,),
)
async def get_call(call: Call) -> CallView:
    doc = await call_store.calls(call.svc.store).find_one({"_id": call.path("id")})
    seen = await _placed(call.svc, call.principal, doc) if doc is not None else None
    if seen is None:
        raise ApiError(404, "not_found", f"no call {call.path('id')}")
    return seen
