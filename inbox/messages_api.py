"""Messages of a conversation: history, replies, internal notes, read marks, files.

- ``GET /api/v1/conversations/{id}/messages?before=<cursor>&limit=N`` — history, a page
  of the newest messages before the cursor, oldest first in the page; ``next_cursor``
  pages further back. Calls carry their record (duration, recording link).
- ``POST …/{id}/messages`` ``{"text", "attachments": [{"file_id"}]}`` — a reply through
  the conversation's channel: checked at once (inbox/replies.py), queued, answered 201
  with its delivery state (``queued``; then ``sent``/``delivered``/``read``/``failed``
  as the outbox and the provider's receipts move it — visible here and on the WebSocket).
- ``POST …/{id}/notes`` ``{"text"}`` — an internal note, never sent.
- ``POST …/{id}/read`` — everything read (unread 0).
- ``POST /api/v1/files`` (multipart, field ``file``) — upload an attachment; ``GET
  /api/v1/files/{id}`` downloads a stored file (uploads and e-mail attachments). A reply's
  attachment goes out with a link that needs no token (``/files/{id}/{key}``), since the
  provider fetches it, not the operator.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, Field

from channels.calls import CallRecord
from crm_store import calls as call_store
from crm_store import conversations as convs
from crm_store import files
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.conversations_api import view, visible_conversation
from inbox.paging import cursor_of, older_than
from inbox.replies import ReplyError, reply
from inbox.views import ConversationView, MessageView
from ingest.context import SERVICE, Service

TAG = "messages"
MAX_TEXT = 20000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
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


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT)


class FileView(BaseModel):
    file_id: str
    name: str | None
    mime_type: str
    size: int
    url: str = Field(description="a link that needs no token (what a provider fetches)")


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


def _download_url(request: web.Request, meta: Document) -> str:
    key = (meta.get("origin") or {}).get("key", "")
    return f"{request.url.origin()}/files/{meta['_id']}/{key}"


async def _attachments(call: Call, refs: list[AttachmentRef]) -> list[dict[str, Any]]:
    out = []
    for i, ref in enumerate(refs):
        meta = await call.svc.store["files"].find_one({"_id": ref.file_id})
        if meta is None or not meta.get("stored") or not (meta.get("origin") or {}).get("key"):
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
                "url": _download_url(call.request, meta),
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
    errors=(404, 422),
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
    try:
        doc = await reply(
            call.svc.store,
            call.svc.config,
            conv["_id"],
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
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                data = await part.read(decode=True)
                if len(data) > MAX_UPLOAD_BYTES:
                    raise ApiError(413, "file_too_large", f"over {MAX_UPLOAD_BYTES} bytes")
                mime = part.headers.get("Content-Type", "application/octet-stream")
                return bytes(data), part.filename, mime.split(";")[0].strip()[:255] or "x/x"
    except ApiError:
        raise
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
    origin = {"uploaded_by": call.principal.user.id, "key": secrets.token_urlsafe(24)}
    stored = await files.put(
        call.svc.store,
        file_id,
        data,
        name=(name or "")[:255] or None,
        mime_type=mime,
        origin=origin,
        max_bytes=MAX_UPLOAD_BYTES,
    )
    meta = {"_id": file_id, "origin": origin}
    return FileView(
        file_id=stored.id,
        name=stored.name,
        mime_type=stored.mime_type,
        size=stored.size,
        url=_download_url(call.request, meta),
    )


async def _may_read(call: Call, meta: Document) -> bool:
    """A file is the uploader's, and visible to whoever sees a message carrying it."""
    origin = meta.get("origin") or {}
    if origin.get("uploaded_by") == call.principal.user.id:
        return True
    message_ids = [origin.get("intake_id"), *origin.get("message_ids", [])]
    for mid in [m for m in message_ids if isinstance(m, str)][:20]:
        msg = await call.svc.store.messages.find_one({"_id": mid}, {"conversation_id": 1})
        if msg is None or not msg.get("conversation_id"):
            continue
        conv = await call.svc.store.conversations.find_one(
            {"_id": msg["conversation_id"]}, {"department": 1}
        )
        if access.sees_conversation(call.principal, conv):
            return True
    return False


async def _file_response(svc: Service, meta: Document) -> web.Response:
    """The bytes of the file ``meta`` describes; 404 when they are not stored."""
    data = await files.read(svc.store, meta["_id"])
    if data is None:
        raise ApiError(404, "not_found", f"no stored file {meta['_id']}")
    name = str(meta.get("name") or meta["_id"]).replace('"', "")
    return web.Response(
        body=data,
        content_type=str(meta.get("mime_type") or "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
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
    if meta is None or not await _may_read(call, meta):
        raise ApiError(404, "not_found", f"no stored file {file_id}")
    return await _file_response(call.svc, meta)


async def public_file(request: web.Request) -> web.StreamResponse:
    """``GET /files/{id}/{key}``: an uploaded file for the provider that sends it."""
    svc = request.app[SERVICE]
    meta = await svc.store["files"].find_one({"_id": request.match_info["id"]})
    key = (meta or {}).get("origin", {}).get("key")
    if meta is None or not key or not secrets.compare_digest(str(key), request.match_info["key"]):
        raise web.HTTPNotFound()
    try:
        return await _file_response(svc, meta)
    except ApiError:
        raise web.HTTPNotFound() from None


def setup_public(app: web.Application) -> None:
    app.router.add_get("/files/{id}/{key}", public_file)
