"""Documents of deals for operators: generate, the registry, download, sign, send
(docs/documents.md).

- ``GET /api/v1/document-types`` — what can be generated (the configured templates).
- ``POST /api/v1/deals/{id}/documents`` ``{"type", "key"?}`` — fill the type's template
  for the deal: a new version each call; the same ``key`` (or ``Idempotency-Key``
  header) again answers the same document (a retried click numbers nothing twice).
- ``GET /api/v1/documents?deal_id=&contact_id=&company_id=&type=&number=&from=&to=`` —
  the registry, newest first, cursor pages; ``from``/``to`` are dates (the document's).
- ``GET /api/v1/documents/{id}`` — one, with signed links (no token, an hour) to its DOCX,
  PDF and signed scan; ``GET …/{id}/file?format=docx|pdf|signed`` downloads with the token.
- ``POST …/{id}/signed`` (multipart, field ``file``: PDF, JPEG, PNG, TIFF, ≤ 20 MiB,
  checked by content) — attach the signed scan: the status becomes ``signed``.
- ``POST …/{id}/sent`` — mark sent (handed over outside omniroute).
- ``POST …/{id}/send`` ``{"conversation_id"?, "text"?, "format"?}`` — send the file to
  the customer through a conversation's channel (an e-mail, a messenger that takes
  files); a channel that cannot carry files is refused (422, the channel's code).

A document is visible iff its deal is (inbox/access.py); anything else answers 404.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from automation.paperwork import make
from crm_store import conversations as convs
from crm_store import files
from crm_store.paperwork import PaperworkError, coll
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.bounds import storable_instant
from inbox.entities_api import visible_entity
from inbox.file_links import REPLY_LINK_TTL, UPLOAD_LINK_TTL, download, signed_url
from inbox.messages_api import _read_upload
from inbox.paging import cursor_of, older_than
from inbox.replies import ReplyError, reply

TAG = "documents"
# A signed scan: what a scanner or a phone camera makes, recognised by its first bytes.
SCAN_TYPES: dict[bytes, str] = {
    b"%PDF-": "application/pdf",
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"II*\x00": "image/tiff",
    b"MM\x00*": "image/tiff",
}
FORMATS = {"docx": "file_id", "pdf": "pdf_file_id", "signed": "signed_file_id"}


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="a template's type")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="idempotency key: the same key answers the same document",
    )


class DocumentQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    deal_id: str | None = Field(default=None, max_length=128)
    contact_id: str | None = Field(default=None, max_length=128)
    company_id: str | None = Field(default=None, max_length=128)
    type: str | None = Field(default=None, max_length=63)
    number: str | None = Field(default=None, max_length=100, description="exact number")
    from_: date | None = Field(default=None, alias="from", description="documents dated from")
    to: date | None = Field(default=None, description="documents dated up to (inclusive)")
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=200)


class FileQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["docx", "pdf", "signed"] = "docx"


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = Field(
        default=None, max_length=128, description="default: the deal's latest conversation"
    )
    text: str = Field(default="", max_length=4000)
    format: Literal["docx", "pdf"] = "docx"


class HistoryItem(BaseModel):
    status: str
    at: datetime
    by: str | None = None
    via: str | None = None
    file_id: str | None = None
    replaced: bool | None = None


class DocumentView(BaseModel):
    id: str
    deal_id: str
    contact_id: str | None
    company_id: str | None
    type: str
    title: str
    number: str | None = Field(
        description="null only while the document is being generated (status pending)"
    )
    date: datetime
    version: int
    template_version: int
    status: Literal["pending", "generated", "sent", "signed"]
    file_id: str | None
    pdf_file_id: str | None
    signed_file_id: str | None
    created_by: str | None
    created_at: datetime
    history: list[HistoryItem]
    links: dict[str, str] = Field(
        default_factory=dict,
        description="signed links (no token, an hour): docx, pdf, signed — those that exist",
    )

    @classmethod
    def of(cls, doc: Document, links: dict[str, str] | None = None) -> DocumentView:
        keys = [k for k in cls.model_fields if k not in ("id", "links")]
        return cls.model_validate(
            {"id": doc["_id"], **{k: doc.get(k) for k in keys}, "links": links or {}}
        )


class DocumentPage(BaseModel):
    items: list[DocumentView]
    next_cursor: str | None


class Sent(BaseModel):
    document: DocumentView
    message_id: str
    conversation_id: str


async def _visible(call: Call) -> Document:
    doc_id = call.path("id")
    doc = await access.visible_document(call.svc.store, call.svc.config, call.principal, doc_id)
    if doc is None:
        raise ApiError(404, "not_found", f"no document {doc_id}")
    return doc


async def _view(call: Call, doc: Document) -> DocumentView:
    links = {
        fmt: await signed_url(call.request, doc[key], UPLOAD_LINK_TTL)
        for fmt, key in FORMATS.items()
        if doc.get(key)
    }
    return DocumentView.of(doc, links)


def _refused(exc: PaperworkError, field: str = "type") -> ApiError:
    if exc.code == "unknown_type":
        return ApiError(
            422,
            "unknown_type",
            str(exc),
            errors=[{"in": "body", "field": field, "message": str(exc)}],
        )
    if exc.code == "not_found":
        return ApiError(404, "not_found", str(exc))
    if exc.code in ("conflict", "not_generated"):
        return ApiError(409, exc.code, str(exc))
    return ApiError(500, exc.code, str(exc))


class DocumentType(BaseModel):
    type: str
    title: str
    version: int


class DocumentTypes(BaseModel):
    items: list[DocumentType]


@route(
    "GET",
    "/api/v1/document-types",
    summary="The document types that can be generated (config/templates/templates.yaml)",
    tag=TAG,
    response=DocumentTypes,
)
async def document_types(call: Call) -> DocumentTypes:
    return DocumentTypes(
        items=[
            DocumentType(type=t.type, title=t.title, version=t.version)
            for t in call.svc.config.templates.templates
        ]
    )


@route(
    "POST",
    "/api/v1/deals/{id}/documents",
    summary="Generate a document of the deal from a template (a new version each time)",
    tag=TAG,
    body=GenerateBody,
    response=DocumentView,
    status=201,
    errors=(404, 409, 422),
)
async def generate_document(call: Call) -> DocumentView:
    body = call.b(GenerateBody)
    deal = await visible_entity(call, "deal")
    given = body.key or call.request.headers.get("Idempotency-Key", "")[:200]
    key = f"api:{deal['_id']}:{body.type}:{given or uuid.uuid4().hex}"
    try:
        doc = await make.generate(
            call.svc.store,
            call.svc.config,
            deal["_id"],
            body.type,
            key=key,
            by=call.principal.user.id,
            now=datetime.now(UTC),
        )
    except PaperworkError as exc:
        raise _refused(exc) from None
    return await _view(call, doc)


def _day(value: date, param: str) -> datetime:
    try:
        return storable_instant(datetime.combine(value, time(), tzinfo=UTC))
    except (ValueError, OverflowError):
        raise ApiError(
            422,
            "invalid_request",
            f"{param} is out of range",
            errors=[{"in": "query", "field": param, "message": "out of range"}],
        ) from None


@route(
    "GET",
    "/api/v1/documents",
    summary="The document registry: search by deal, contact, company, type, number, dates",
    tag=TAG,
    query=DocumentQuery,
    response=DocumentPage,
)
async def list_documents(call: Call) -> DocumentPage:
    q = call.q(DocumentQuery)
    store = call.svc.store
    parts: list[Document] = [await access.document_filter(store, call.svc.config, call.principal)]
    for name in ("deal_id", "contact_id", "company_id", "type", "number"):
        value = getattr(q, name)
        if value is not None:
            parts.append({name: value})
    if q.from_ is not None:
        parts.append({"date": {"$gte": _day(q.from_, "from")}})
    if q.to is not None:
        end = q.to + timedelta(days=1) if q.to < date.max else q.to
        parts.append({"date": {"$lt": _day(end, "to")}})
    if q.cursor:
        parts.append(older_than(q.cursor, "created_at"))
    query = {"$and": [p for p in parts if p]} if any(parts) else {}
    docs = [
        d
        async for d in coll(store).find(
            query, sort=[("created_at", -1), ("_id", -1)], limit=q.limit + 1
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    cursor = cursor_of(docs[-1], "created_at") if more and docs else None
    return DocumentPage(items=[DocumentView.of(d) for d in docs], next_cursor=cursor)


@route(
    "GET",
    "/api/v1/documents/{id}",
    summary="One document of a deal, with signed links to its files",
    tag=TAG,
    response=DocumentView,
    errors=(404,),
)
async def get_document(call: Call) -> DocumentView:
    return await _view(call, await _visible(call))


@route(
    "GET",
    "/api/v1/documents/{id}/file",
    summary="Download a document's DOCX, PDF or signed scan",
    tag=TAG,
    query=FileQuery,
    raw={200: ("application/octet-stream", "the file's bytes")},
    errors=(404,),
)
async def document_file(call: Call) -> web.StreamResponse:
    doc = await _visible(call)
    fmt = call.q(FileQuery).format
    file_id = doc.get(FORMATS[fmt])
    meta = await call.svc.store["files"].find_one({"_id": file_id}) if file_id else None
    data = await files.read(call.svc.store, str(file_id)) if meta is not None else None
    if meta is None or data is None:
        raise ApiError(404, "not_found", f"document {doc['_id']} has no {fmt} file")
    return download(meta, data)


def scan_type(data: bytes) -> str | None:
    """The MIME type of a signed scan by its first bytes; None: not a scan we take."""
    return next((mime for magic, mime in SCAN_TYPES.items() if data.startswith(magic)), None)


class ScanForm(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary"})


@route(
    "POST",
    "/api/v1/documents/{id}/signed",
    summary="Attach the signed scan (PDF, JPEG, PNG, TIFF): the document becomes signed",
    tag=TAG,
    body=ScanForm,
    body_content_type="multipart/form-data",
    response=DocumentView,
    errors=(400, 404, 409, 413, 415, 422),
)
async def upload_signed(call: Call) -> DocumentView:
    doc = await _visible(call)
    data, name, _declared = await _read_upload(call.request)
    mime = scan_type(data)
    if mime is None:
        raise ApiError(
            415,
            "unsupported_file_type",
            "a signed scan must be a PDF, JPEG, PNG or TIFF file",
            errors=[{"in": "body", "field": "file", "message": "not a PDF or an image"}],
        )
    user = call.principal.user.id
    stored = await files.put(
        call.svc.store,
        uuid.uuid4().hex,
        data,
        name=name or f"{doc.get('number')} signed",
        mime_type=mime,
        origin={"uploaded_by": user, "document_id": doc["_id"], "deal_id": doc["deal_id"]},
        max_bytes=make.MAX_FILE_BYTES,
    )
    try:
        fresh = await make.sign(
            call.svc.store, call.svc.config, doc, stored.id, by=user, now=datetime.now(UTC)
        )
    except PaperworkError as exc:
        raise _refused(exc) from None
    return await _view(call, fresh)


@route(
    "POST",
    "/api/v1/documents/{id}/sent",
    summary="Mark a document sent (handed over outside omniroute)",
    tag=TAG,
    response=DocumentView,
    errors=(404, 409),
)
async def mark_sent(call: Call) -> DocumentView:
    from crm_store import paperwork

    doc = await _visible(call)
    try:
        fresh = await paperwork.mark_sent(
            call.svc.store, doc, by=call.principal.user.id, now=datetime.now(UTC), via="manual"
        )
    except PaperworkError as exc:
        raise _refused(exc) from None
    return await _view(call, fresh)


async def _conversation(call: Call, doc: Document, wanted: str | None) -> Document:
    store = call.svc.store
    newest = [("last_inbound_at", -1), ("last_message_at", -1)]
    conv: Document | None
    if wanted is not None:
        conv = await store.conversations.find_one({"_id": wanted})
        mine = conv is not None and conv.get("contact_id") == doc.get("contact_id")
        if not mine or not access.sees_conversation(call.principal, conv):
            raise ApiError(
                422,
                "unknown_conversation",
                f"no conversation {wanted} with this document's customer",
                errors=[{"in": "body", "field": "conversation_id", "message": "unknown"}],
            )
        assert conv is not None
        return conv
    conv = await store.conversations.find_one({"target.id": doc["deal_id"]}, sort=newest)
    if conv is None and doc.get("contact_id"):
        conv = await store.conversations.find_one({"contact_id": doc["contact_id"]}, sort=newest)
    if conv is None:
        raise ApiError(422, "no_conversation", "the customer has no conversation to send to")
    return conv


@route(
    "POST",
    "/api/v1/documents/{id}/send",
    summary="Send the document to the customer through a conversation's channel",
    tag=TAG,
    body=SendBody,
    response=Sent,
    errors=(404, 409, 422),
)
async def send_document(call: Call) -> Sent:
    from crm_store import paperwork

    body = call.b(SendBody)
    doc = await _visible(call)
    file_id = doc.get(FORMATS[body.format])
    meta = await call.svc.store["files"].find_one({"_id": file_id}) if file_id else None
    if meta is None:
        raise ApiError(
            409 if doc.get("status") == paperwork.PENDING else 422,
            "no_file",
            f"document {doc['_id']} has no {body.format} file",
            errors=[{"in": "body", "field": "format", "message": "no such file"}],
        )
    conv = await _conversation(call, doc, body.conversation_id)
    attachment = {
        "kind": "file",
        "url": await signed_url(call.request, meta["_id"], REPLY_LINK_TTL),
        # E-mail attaches the file itself (ingest/outbox.py); messengers fetch the url.
        "stored_file_id": meta["_id"],
        "name": meta.get("name"),
        "mime_type": meta.get("mime_type"),
        "size": meta.get("size"),
    }
    text = body.text or f"{doc.get('title')} № {doc.get('number')}"
    user = call.principal.user.id
    try:
        message = await reply(
            call.svc.store,
            call.svc.config,
            conv["_id"],
            text,
            attachments=[attachment],
            author_id=user,
        )
    except ReplyError as exc:
        raise ApiError(
            exc.status,
            exc.code,
            f"{conv['channel']} cannot carry this document: {exc.detail}",
        ) from None
    await call.svc.store["files"].update_one(
        {"_id": meta["_id"]}, {"$addToSet": {"origin.message_ids": message["_id"]}}
    )
    await convs.queued(call.svc.store, conv, message)
    if call.svc.outbox is not None:
        call.svc.outbox.wake.set()
    fresh = await paperwork.mark_sent(
        call.svc.store, doc, by=user, now=datetime.now(UTC), via=str(conv["channel"])
    )
    return Sent(
        document=await _view(call, fresh),
        message_id=message["_id"],
        conversation_id=conv["_id"],
    )
