"""The website live chat's HTTP side: the widget script, config, session, messages, the
offline form, uploads, the feed (long poll) and the visitors' WebSocket; plus the
operators' typing hook. The wire contract: docs/channels/webchat-protocol.md.

A visitor message takes the same write path as every webhook (ingest/accept.py): it is
durable in ``intake`` before the 2xx and then routed by the routing worker. Its provider
id is ``<visitor_id>:<client_id>``, so a retry after a network cut stores it once.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import BodyPartReader, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo.errors import PyMongoError

from automation.calendar import WorkingCalendar
from channels.base import Attachment, WebhookRequest
from channels.identity import normalize_email, normalize_phone
from channels.webchat import (
    CLIENT_ID,
    TEXT_MAX,
    UPLOAD_MAX_BYTES,
    Envelope,
    Page,
    WebchatChannel,
    WebchatSettings,
    identifier_verified,
)
from config.loader import resolve_secret
from config.settings import get_settings
from crm_store import files, presence
from crm_store import webchat as visitors
from crm_store.documents import intake_id
from inbox.api import Call
from inbox.auth import ApiError
from inbox.conversations_api import visible_conversation
from inbox.file_links import KEYS
from inbox.live_api import HUB
from inbox.webchat_http import (
    STATE,
    Refused,
    Site,
    WebchatState,
    answer_expected,
    clock_from_env,
    endpoint,
    limit,
    next_open,
    preflight,
    tokens,
    visitor_of,
)
from inbox.webchat_hub import VisitorSocket, WebchatHub, frame, mark_read, writer
from inbox.webchat_hub import visitor_conversation as conv_of
from ingest.accept import store_parsed
from ingest.context import SERVICE, json_response, problem
from ingest.limits import BodyTimeout, BodyTooLarge, read_body
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.webchat")

CHANNEL = WebchatChannel()
WIDGET = Path(__file__).resolve().parent / "web" / "widget.js"
BODY_MAX = 64 * 1024
WAIT_MAX_S = 25.0
PING_S = 25.0
UPLOAD_TYPES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
    "application/pdf": (b"%PDF-",),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (b"PK\x03\x04",),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (b"PK\x03\x04",),
    "text/plain": (),
}
WEBCHAT_HUB: web.AppKey[WebchatHub] = web.AppKey("webchat_hub", WebchatHub)


class Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SessionBody(Loose):
    visitor_token: str | None = Field(default=None, max_length=200)
    identifier: str | None = Field(default=None, min_length=1, max_length=200)
    identifier_hash: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    page: Page | None = None


class FileRef(Loose):
    file_id: str = Field(min_length=1, max_length=64)


class MessageBody(Loose):
    client_id: str = Field(pattern=CLIENT_ID)
    text: str = ""
    attachments: list[FileRef] = Field(default_factory=list, max_length=10)
    page: Page | None = None


class OfflineBody(MessageBody):
    name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)


class WsCommand(Loose):
    type: Literal["typing", "read", "pong", "ping"]
    on: bool = False
    up_to: str | None = Field(default=None, max_length=200)


# --- helpers ------------------------------------------------------------------------


async def _json(request: web.Request, site: Site, model: type[Any]) -> Any:
    try:
        raw = await read_body(request, BODY_MAX, site.svc.http.body_timeout_s)
    except BodyTooLarge:
        raise Refused(413, "body_too_large", f"the body is over {BODY_MAX} bytes") from None
    except BodyTimeout:
        raise Refused(408, "request_timeout", "the body came too slowly") from None
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        fields = [".".join(str(p) for p in e["loc"]) for e in exc.errors(include_url=False)]
        raise Refused(422, "invalid_request", f"invalid fields: {', '.join(fields)}") from None


def _contacts(name: str | None, email: str | None, phone: str | None) -> dict[str, str | None]:
    if phone and phone.strip() and normalize_phone(phone) is None:
        raise Refused(422, "invalid_phone", "phone: not a phone number")
    if email and email.strip() and normalize_email(email) is None:
        raise Refused(422, "invalid_email", "email: not an e-mail address")
    return {
        "name": (name or "").strip() or None,
        "email": (email or "").strip() or None,
        "phone": (phone or "").strip() or None,
    }


def _lang(request: web.Request) -> str:
    lang = request.query.get("lang")
    if lang in ("ru", "en"):
        return lang
    return "en" if request.headers.get("Accept-Language", "").lower().startswith("en") else "ru"


async def _operators_online(request: web.Request, site: Site) -> bool:
    """An operator of the source's line has /api/v1/ws open on some process (their
    presence rows, crm_store/presence.py)."""
    if request.app.get(HUB) is None:
        return True
    source = site.svc.config.source(site.account.source)
    line_users = {u.id for u in site.svc.config.line_users(source.line)} if source.line else set()
    if source.responsible:
        line_users.add(source.responsible)
    try:
        return await presence.any_operator(site.svc.store, line_users)
    except PyMongoError as exc:  # the form still works: the offline form is the safe side
        log.warning("webchat.presence_unavailable", error=type(exc).__name__)
        return False


# --- endpoints ------------------------------------------------------------------------


async def widget_js(request: web.Request) -> web.StreamResponse:
    account = request.app[SERVICE].config.account("webchat", request.match_info["account"])
    if account is None or not WIDGET.is_file():
        return problem(404, "unknown_account", "no such webchat account")
    return web.Response(
        body=WIDGET.read_bytes(),
        headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def config(request: web.Request, site: Site) -> web.StreamResponse:
    lang = _lang(request)
    s = site.settings
    reopen = next_open(site.state)
    online = reopen is None and await _operators_online(request, site)
    return json_response(
        {
            "account": site.account.account,
            "colour": s.colour,
            "position": s.position,
            "greeting": s.greeting(lang),
            "offline_text": s.offline_text(lang),
            "prechat": [p.model_dump() for p in s.prechat],
            "online": online,
            "next_open_at": reopen.isoformat() if reopen is not None else None,
            "limits": {"text_max": TEXT_MAX, "upload_max_bytes": UPLOAD_MAX_BYTES},
        }
    )


async def session(request: web.Request, site: Site) -> web.StreamResponse:
    body: SessionBody = await _json(request, site, SessionBody)
    signer = await tokens(request)
    visitor_id = signer.visitor(body.visitor_token)
    visitor_id, token = signer.issue(visitor_id)
    fields: dict[str, Any] = _contacts(body.name, body.email, body.phone)
    verified = body.identifier is not None and identifier_verified(
        resolve_secret(site.account), body.identifier, body.identifier_hash
    )
    if verified:
        fields.update(identifier=body.identifier, verified=True)
    if body.page is not None:
        fields["page"] = body.page.model_dump(exclude_none=True)
    doc = await visitors.remember(site.svc.store, visitor_id, site.account.account, fields)
    cursor = await request.app[WEBCHAT_HUB].current()
    return json_response(
        {
            "visitor_token": token,
            "visitor_id": visitor_id,
            "verified": bool(doc.get("verified")),
            "cursor": str(cursor),
        }
    )


async def messages(request: web.Request, site: Site) -> web.StreamResponse:
    visitor = await visitor_of(request, request.headers.get("X-Visitor-Token"))
    limit(site, f"token:{visitor}", site.settings.messages_per_minute)
    body: MessageBody = await _json(request, site, MessageBody)
    return json_response(await _accept(site, visitor, body, offline=False))


async def offline(request: web.Request, site: Site) -> web.StreamResponse:
    visitor = await visitor_of(request, request.headers.get("X-Visitor-Token"))
    limit(site, f"token:{visitor}", site.settings.messages_per_minute)
    body: OfflineBody = await _json(request, site, OfflineBody)
    fields = _contacts(body.name, body.email, body.phone)
    doc = await visitors.remember(site.svc.store, visitor, site.account.account, fields)
    if not (doc.get("phone") or doc.get("email") or doc.get("verified")):
        raise Refused(422, "contact_required", "leave a phone or an e-mail to be answered")
    answer = await _accept(site, visitor, body, offline=True, known=doc)
    answer["answer_expected_at"] = answer_expected(site.state).isoformat()
    return json_response(answer)


async def _accept(
    site: Site,
    visitor: str,
    body: MessageBody,
    *,
    offline: bool,
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store the visitor's message durably (then routed); the answer's fields."""
    if len(body.text) > TEXT_MAX:
        raise Refused(
            413, "text_too_long", f"text is at most {TEXT_MAX} characters (got {len(body.text)})"
        )
    if not body.text.strip() and not body.attachments:
        raise Refused(422, "empty_message", "a message needs text or an attachment")
    svc = site.svc
    doc = known or await visitors.visitor(svc.store, visitor) or {}
    attachments = await _attachments(site, visitor, [a.file_id for a in body.attachments])
    envelope = Envelope(
        visitor_id=visitor,
        client_id=body.client_id,
        text=body.text,
        attachments=attachments,
        page=body.page,
        name=doc.get("name"),
        email=doc.get("email"),
        phone=doc.get("phone"),
        identifier=doc.get("identifier") if doc.get("verified") else None,
        offline=offline,
    )
    raw = envelope.model_dump_json(exclude_none=True).encode()
    parsed = CHANNEL.read(site.account, WebhookRequest("POST", {}, {}, raw))
    try:
        accepted = await store_parsed(
            svc.writer, site.account.source, parsed, raw, svc.worker.submit
        )
    except PyMongoError as exc:
        svc.metrics.store_errors.labels("intake").inc()
        log.warning("webchat.store_unavailable", error=type(exc).__name__)
        raise Refused(503, "store_unavailable", "message not stored; retry later", 5) from None
    svc.metrics.intake.labels("webchat", "accepted").inc(len(accepted.new))
    svc.metrics.intake.labels("webchat", "duplicate").inc(len(accepted.duplicates))
    mid = intake_id("webchat", site.account.account, f"{visitor}:{body.client_id}")
    return {"ok": True, "id": mid, "client_id": body.client_id, "duplicate": not accepted.new}


async def _attachments(site: Site, visitor: str, ids: list[str]) -> list[Attachment]:
    if not ids:
        return []
    found = {
        d["_id"]: d
        async for d in site.svc.store["files"].find(
            {"_id": {"$in": ids}, "origin.visitor_id": visitor}
        )
    }
    out = []
    for fid in ids:
        meta = found.get(fid)
        if meta is None:
            raise Refused(422, "unknown_file", f"no upload {fid} of this visitor")
        kind = "image" if str(meta.get("mime_type", "")).startswith("image/") else "file"
        out.append(
            Attachment(
                kind=kind,
                file_id=fid,
                name=meta.get("name"),
                mime_type=meta.get("mime_type"),
                size=meta.get("size"),
            )
        )
    return out


async def uploads(request: web.Request, site: Site) -> web.StreamResponse:
    visitor = await visitor_of(request, request.headers.get("X-Visitor-Token"))
    limit(site, f"token:{visitor}", site.settings.messages_per_minute)
    too_large = Refused(413, "file_too_large", f"a file is at most {UPLOAD_MAX_BYTES} bytes")
    if (request.content_length or 0) > UPLOAD_MAX_BYTES + 64 * 1024:
        raise too_large
    if not request.content_type.startswith("multipart/"):
        raise Refused(422, "invalid_request", "send the file as multipart/form-data, field file")
    data, name, mime = b"", None, ""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                chunks = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    chunks += chunk
                    if len(chunks) > UPLOAD_MAX_BYTES:
                        raise too_large
                data, name = bytes(chunks), part.filename
                mime = part.headers.get("Content-Type", "").split(";")[0].strip().lower()
                break
    except Refused:
        raise
    except Exception:
        raise Refused(400, "invalid_multipart", "the multipart body is malformed") from None
    if not data:
        raise Refused(422, "invalid_request", "no file (or an empty one) in field file")
    if not _type_ok(mime, data):
        raise Refused(
            415, "unsupported_type", "images (png, jpeg, gif, webp), pdf, docx, xlsx or txt only"
        )
    fid = uuid.uuid4().hex
    origin = {"webchat": site.account.account, "visitor_id": visitor}
    stored = await files.put(
        site.svc.store,
        fid,
        data,
        name=name,
        mime_type=mime,
        origin=origin,
        max_bytes=UPLOAD_MAX_BYTES,
    )
    return json_response(
        {"file_id": fid, "name": stored.name, "size": stored.size, "mime_type": mime}
    )


def _type_ok(mime: str, data: bytes) -> bool:
    """The declared type is allowed and the bytes look like it."""
    if mime not in UPLOAD_TYPES:
        return False
    if mime == "text/plain":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return "\x00" not in text
    if mime == "image/webp" and data[8:12] != b"WEBP":
        return False
    return any(data.startswith(m) for m in UPLOAD_TYPES[mime])


def _after(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 18:
        raise Refused(422, "invalid_cursor", "after: a cursor the server gave")
    return int(value)


async def feed(request: web.Request, site: Site) -> web.StreamResponse:
    visitor = await visitor_of(request, request.headers.get("X-Visitor-Token"))
    after = _after(request.query.get("after"))
    try:
        wait = min(max(float(request.query.get("wait", "0")), 0.0), WAIT_MAX_S)
    except ValueError:
        raise Refused(422, "invalid_wait", "wait: seconds, 0 to 25") from None
    hub = request.app[WEBCHAT_HUB]
    items, cursor = await hub.poll(conv_of(site.account.account, visitor), after, wait)
    base = str(request.url.origin())
    link = await hub.linker()
    return json_response({"items": [frame(i, base, link) for i in items], "cursor": str(cursor)})


async def socket(request: web.Request, site: Site) -> web.StreamResponse:
    visitor = await visitor_of(request, request.query.get("token"))
    after = _after(request.query.get("after"))  # absent: the whole conversation
    ws = web.WebSocketResponse(heartbeat=30.0)
    if not ws.can_prepare(request).ok:
        raise Refused(426, "upgrade_required", "connect with a WebSocket upgrade")
    await ws.prepare(request)
    hub = request.app[WEBCHAT_HUB]
    account = site.account.account
    conv = conv_of(account, visitor)
    sub = VisitorSocket(account, visitor, conv, ws, str(request.url.origin()))
    send = asyncio.create_task(writer(site.svc.store, sub))
    pinger = asyncio.create_task(_ping(hub, sub))
    await hub.alive(sub)
    beat = asyncio.create_task(hub.heartbeat(sub))
    try:
        await hub.join(sub, after)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                command = WsCommand.model_validate_json(msg.data)
            except ValidationError:
                continue
            if command.type == "read" and command.up_to:
                await mark_read(site.svc.store, account, conv, command.up_to)
            elif command.type == "typing":
                await hub.visitor_typed(sub, command.on)
            elif command.type == "ping":
                hub.send(sub, {"type": "pong"})
    except PyMongoError as exc:  # the store went away: the client reconnects with its cursor
        log.warning("webchat.ws_store_unavailable", error=type(exc).__name__)
        await ws.close(code=1011, message=b"store unavailable: reconnect with your cursor")
    finally:
        hub.leave(sub)
        await cancel(beat)
        await cancel(pinger)
        await cancel(send)
        await hub.gone(sub)
    return ws


async def _ping(hub: WebchatHub, sub: VisitorSocket) -> None:
    while True:
        await asyncio.sleep(PING_S)
        hub.send(sub, {"type": "ping"})


# --- the operators' side ------------------------------------------------------------


class TypingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on: bool = Field(description="the operator is typing (true) or stopped (false)")


class TypingView(BaseModel):
    visitors: int = Field(description="visitor connections open (webchat; on every process)")


async def operator_typing(call: Call) -> TypingView:
    conv = await visible_conversation(call)
    hub = call.request.app.get(WEBCHAT_HUB)
    told = await hub.typing(conv["_id"], call.b(TypingBody).on) if hub is not None else 0
    return TypingView(visitors=told)


class VisitorView(BaseModel):
    online: bool = Field(description="a visitor socket is open (on any process)")
    typing: bool = Field(description="the visitor reported typing (on any process)")
    verified: bool
    page: dict[str, Any] | None = Field(description="the page of the visitor's last session")


async def visitor_state(call: Call) -> VisitorView:
    conv = await visible_conversation(call)
    thread = str(conv.get("thread") or "")
    if conv.get("channel") != "webchat" or not thread.startswith("thread:"):
        raise ApiError(404, "not_found", "not a webchat conversation")
    doc = await visitors.visitor(call.svc.store, thread[7:]) or {}
    online, typing = await presence.visitor_state(call.svc.store, conv["_id"])
    return VisitorView(
        online=online,
        typing=typing,
        verified=bool(doc.get("verified")),
        page=doc.get("page"),
    )


# Declared (routed, documented in the OpenAPI document, in the RBAC matrix and the fuzz
# pass) by inbox/declared.py.


# --- wiring ---------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    svc = app[SERVICE]
    sites = [a for a in svc.config.channels.accounts if a.channel == "webchat" and a.enabled]
    for account in sites:
        try:
            WebchatSettings.of(account)
        except ValueError as exc:  # answered 500 account_misconfigured until fixed
            log.error("webchat.misconfigured", account=account.account, error=str(exc))
    app[STATE] = WebchatState(clock_from_env(), WorkingCalendar.from_config(svc.config.calendar))
    hub = WebchatHub(svc.store, app[KEYS], get_settings().presence_ttl_s)
    app[WEBCHAT_HUB] = hub

    async def start(_: web.Application) -> None:
        if sites:  # no webchat account: no reader polling the log for nobody
            await hub.start()

    async def stop(_: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.router.add_get("/widget/{account}.js", widget_js)
    for path, handler in (
        ("config", config),
        ("feed", feed),
        ("ws", socket),
    ):
        app.router.add_get(f"/webchat/{{account}}/{path}", endpoint(handler))
    for path, handler in (
        ("session", session),
        ("messages", messages),
        ("offline", offline),
        ("uploads", uploads),
    ):
        app.router.add_post(f"/webchat/{{account}}/{path}", endpoint(handler))
    app.router.add_route("OPTIONS", "/webchat/{account}/{path}", preflight)
