"""Messages of a conversation: history, replies, internal notes, read marks, files.

- ``GET /api/v1/conversations/{id}/messages?before=<cursor>&limit=N`` — history, a page
  of the newest messages before the cursor, oldest first in the page; ``next_cursor``
  pages further back. Calls carry their record (duration, recording link).
- ``POST …/{id}/messages`` ``{"text", "attachments": [{"file_id"}]}`` — a reply through
  the conversation's channel: checked at once (inbox/replies.py), queued, answered 201
  with its delivery state (``queued``; then ``sent``/``delivered``/``read``/``failed``
  as the outbox and the provider's receipts move it — visible here and on the WebSocket).
  In a conversation of comments under a post, ``mode`` ("public": under the comment,
  the default; "private": a direct message to the commenter) and ``comment_id`` (default:
  the latest customer comment) choose how (inbox/comments_api.py).
- ``POST …/{id}/notes`` ``{"text"}`` — an internal note, never sent.
- ``POST …/{id}/read`` — everything read (unread 0).
- ``POST /api/v1/files`` (multipart, field ``file``) — upload an attachment; ``GET
  /api/v1/files/{id}`` downloads a stored file (uploads and e-mail attachments) for a
  caller who may read it (inbox/access.py). A reply may attach only such a file; it goes
  out with a signed, expiring link that needs no token (inbox/file_links.py), since the
  provider fetches it, not the operator.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, Field

from channels.calls import CallRecord
from crm_store import calls as call_store
from crm_store import conversations as convs
from crm_store import files
from crm_store.store import Document
from inbox import access, comments_api
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.conversations_api import view, visible_conversation
from inbox.file_links import REPLY_LINK_TTL, UPLOAD_LINK_TTL, download, signed_url
from inbox.paging import cursor_of, older_than
from inbox.replies import ReplyError, reply
from inbox.views import ConversationView, MessageView
from ingest.context import Service

TAG = "messages"
MAX_TEXT = 20000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Room for the multipart form around the file (boundaries, part headers, other fields).
UPLOAD_FORM_OVERHEAD = 64 * 1024
CALL_KEYS = (
    "call_id",
    "direction",
    "customer",
    "line",
    "agent",
    "disposition",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "talk_s",
    "recording_url",
)


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before: str | None = Field(default=None, max_length=500, description="a next_cursor")
    limit: int = Field(default=50, ge=1, le=200)


class MessagePage(BaseModel):
    items: list[MessageView] = Field(description="oldest first")
    next_cursor: str | None = Field(description="older messages: pass as before; null: none")


class AttachmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=128, description="from POST /api/v1/files")


class ReplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(default="", max_length=MAX_TEXT)
    attachments: list[AttachmentRef] = Field(default_factory=list, max_length=10)
    mode: Literal["public", "private"] | None = Field(
        default=None,
        description="comment conversations only: public (under the comment; the default) "
        "or private (a direct message to the commenter)",
    )
    comment_id: str | None = Field(
        default=None,
        max_length=128,
        description="comment conversations only: the message id of the customer comment "
        "to answer (default: the latest)",
    )


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT)


class FileView(BaseModel):
    file_id: str
    name: str | None
    mime_type: str
    size: int
    url: str = Field(
        description="a signed link that needs no token, valid for an hour (a reply's "
        "attachment carries its own, valid 30 days)"
    )


class UploadForm(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary"})


async def _with_calls(svc: Service, docs: list[Document]) -> list[MessageView]:
    out = []
    for d in docs:
        meta = d.get("meta") or {}
        if isinstance(meta, dict) and meta.get("kind") == "call":
            rec = await call_store.calls(svc.store).find_one({"message_id": d["_id"]})
            if rec is not None:
                plain = CallRecord.model_validate(rec).model_dump(mode="json")
                d = {**d, "call": {k: plain.get(k) for k in CALL_KEYS}}
        out.append(MessageView.of(d))
    return out


@route(
    "GET",
    "/api/v1/conversations/{id}/messages",
    summary="Message history of a conversation, newest page first",
    tag=TAG,
    query=HistoryQuery,
    response=MessagePage,
    errors=(404,),
)
async def list_messages(call: Call) -> MessagePage:
    q = call.q(HistoryQuery)
    conv = await visible_conversation(call)
    query: Document = {"conversation_id": conv["_id"]}
    if q.before:
        query = {"$and": [query, older_than(q.before, "received_at", "before")]}
    docs = [
        d
        async for d in call.svc.store.messages.find(
            query,
            {"raw": 0, "decision": 0, "identities": 0},
            sort=[("received_at", -1), ("_id", -1)],
            limit=q.limit + 1,
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    cursor = cursor_of(docs[-1], "received_at") if more and docs else None
    return MessagePage(items=await _with_calls(call.svc, list(reversed(docs))), next_cursor=cursor)


async def _attachments(call: Call, refs: list[AttachmentRef]) -> list[dict[str, Any]]:
    out = []
    for i, ref in enumerate(refs):
        meta = await call.svc.store["files"].find_one({"_id": ref.file_id})
        # A file the caller may not read answers as one that does not exist.
        readable = await access.may_read_file(call.svc.store, call.principal, meta)
        if meta is None or not meta.get("stored") or not readable:
            raise ApiError(
                422,
                "unknown_file",
                f"no uploaded file {ref.file_id}",
                errors=[
                    {"in": "body", "field": f"attachments.{i}.file_id", "message": "unknown file"}
                ],
            )
        mime = str(meta.get("mime_type") or "application/octet-stream")
        kind = (
            mime.split("/", 1)[0]
            if mime.split("/", 1)[0] in ("image", "video", "audio")
            else "file"
        )
        out.append(
            {
                "kind": kind,
                # No file_id: to a channel that is the provider's own file id.
                "url": await signed_url(call.request, meta["_id"], REPLY_LINK_TTL),
                # Ours: e-mail attaches the file itself (ingest/outbox.py).
                "stored_file_id": meta["_id"],
                "name": meta.get("name"),
                "mime_type": mime,
                "size": meta.get("size"),
            }
        )
    return out


@route(
    "POST",
    "/api/v1/conversations/{id}/messages",
    summary="Reply through the conversation's channel",
    tag=TAG,
    body=ReplyBody,
    response=MessageView,
    status=201,
    errors=(404, 409, 422),
)
async def reply_message(call: Call) -> MessageView:
    body = call.b(ReplyBody)
    conv = await visible_conversation(call)
    if not body.text.strip() and not body.attachments:
        raise ApiError(
            422,
            "empty_message",
            "a reply needs text or an attachment",
            errors=[{"in": "body", "field": "text", "message": "empty"}],
        )
    attachments = await _attachments(call, body.attachments)
    comment = await comments_api.answer(
        call, conv, body.text, attachments, body.mode, body.comment_id
    )
    try:
        doc = comment or await reply(
            call.svc.store,
            call.svc.config,
            conv,  # as just read for the access check: not read again
            body.text,
            attachments=attachments,
            author_id=call.principal.user.id,
        )
    except ReplyError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from None
    if body.attachments:  # who may download them: whoever sees this message (_may_read)
        await call.svc.store["files"].update_many(
            {"_id": {"$in": [a.file_id for a in body.attachments]}},
            {"$addToSet": {"origin.message_ids": doc["_id"]}},
        )
    await convs.queued(call.svc.store, conv, doc)
    if call.svc.outbox is not None:
        call.svc.outbox.wake.set()
    return MessageView.of(doc)


@route(
    "POST",
    "/api/v1/conversations/{id}/notes",
    summary="Add an internal note (never sent to the customer)",
    tag=TAG,
    body=NoteBody,
    response=MessageView,
    status=201,
    errors=(404,),
)
async def add_note(call: Call) -> MessageView:
    conv = await visible_conversation(call)
    doc = await convs.add_note(call.svc.store, conv, call.b(NoteBody).text, call.principal.user.id)
    return MessageView.of(doc)


@route(
    "POST",
    "/api/v1/conversations/{id}/read",
    summary="Mark everything in a conversation read",
    tag=TAG,
    response=ConversationView,
    errors=(404,),
)
async def mark_read(call: Call) -> ConversationView:
    conv = await visible_conversation(call)
    return view(await convs.mark_read(call.svc.store, conv, call.principal.user.id))


async def _read_upload(request: web.Request) -> tuple[bytes, str | None, str]:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(
            422,
            "invalid_request",
            "send the file as multipart/form-data, field file",
            errors=[{"in": "body", "field": "file", "message": "missing"}],
        )
    too_large = ApiError(413, "file_too_large", f"over {MAX_UPLOAD_BYTES} bytes")
    # A declared size far over the limit is refused before a byte of it is read.
    if (request.content_length or 0) > MAX_UPLOAD_BYTES + UPLOAD_FORM_OVERHEAD:
        raise too_large
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                data = await part.read(decode=True)
                if len(data) > MAX_UPLOAD_BYTES:
                    raise too_large
                mime = part.headers.get("Content-Type", "application/octet-stream")
                return bytes(data), part.filename, mime.split(";")[0].strip()[:255] or "x/x"
    except ApiError:
        raise
    except web.HTTPRequestEntityTooLarge:  # over the application's client_max_size
        raise too_large from None
    except Exception:  # aiohttp's parser raises a zoo of types for a broken form
        raise ApiError(400, "invalid_multipart", "the multipart body is malformed") from None
    raise ApiError(
        422,
        "invalid_request",
        "no file field in the form",
        errors=[{"in": "body", "field": "file", "message": "missing"}],
    )


@route(
    "POST",
    "/api/v1/files",
    summary="Upload a file to attach to a reply",
    tag=TAG,
    body=UploadForm,
    body_content_type="multipart/form-data",
    response=FileView,
    status=201,
    errors=(400, 413, 422),
)
async def upload_file(call: Call) -> FileView:
    data, name, mime = await _read_upload(call.request)
    file_id = uuid.uuid4().hex
    stored = await files.put(
        call.svc.store,
        file_id,
        data,
        name=name,
        mime_type=mime,
        origin={"uploaded_by": call.principal.user.id},
        max_bytes=MAX_UPLOAD_BYTES,
    )
    return FileView(
        file_id=stored.id,
        name=stored.name,
        mime_type=stored.mime_type,
        size=stored.size,
        url=await signed_url(call.request, file_id, UPLOAD_LINK_TTL),
    )


@route(
    "GET",
    "/api/v1/files/{id}",
    summary="Download a stored file: your upload, or one in a message you can see",
    tag=TAG,
    raw={200: ("application/octet-stream", "the file's bytes")},
    errors=(404,),
)
async def download_file(call: Call) -> web.StreamResponse:
    file_id = call.path("id")
    meta = await call.svc.store["files"].find_one({"_id": file_id})
    data = None
    if await access.may_read_file(call.svc.store, call.principal, meta):
        data = await files.read(call.svc.store, file_id)
    if meta is None or data is None:
        raise ApiError(404, "not_found", f"no stored file {file_id}")
    return download(meta, data)
