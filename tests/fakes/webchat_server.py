"""A small stand-in for the service's webchat endpoints, built to the wire contract (docs/
channels/webchat-protocol.md), for driving the widget (inbox/web/widget.js) in a browser
without the rest of omniroute: the widget script, config, session (signed visitor tokens,
identity validation), messages and the offline form (stored once per client id), the feed
(with long-poll) and the WebSocket (resuming from a cursor). Origins are checked on every
request and on the WebSocket upgrade, as the contract says.

The test plays the operator: :meth:`FakeWebchat.reply`, :meth:`typing`, :meth:`read`, and
:meth:`drop_sockets` to cut every live connection as a network failure would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from tests.helpers import free_port

WIDGET = Path(__file__).resolve().parents[2] / "inbox" / "web" / "widget.js"
SERVER_KEY = b"fake-webchat-server-key"


@dataclass
class Visitor:
    id: str
    sessions: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    feed: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_id -> body
    posts: list[str] = field(default_factory=list)  # client ids of every POST, retries too
    frames_in: list[dict[str, Any]] = field(default_factory=list)  # what the widget sent on ws
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def cursor(self) -> str:
        return str(len(self.feed))


def visitor_token(visitor_id: str) -> str:
    sig = hmac.new(SERVER_KEY, visitor_id.encode(), hashlib.sha256).hexdigest()[:32]
    return f"v1.{visitor_id}.{sig}"


def token_visitor(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        return None
    return parts[1] if hmac.compare_digest(visitor_token(parts[1]), token) else None


@dataclass
class FakeWebchat:
    account: str
    secret: str
    origins: list[str]
    online: bool = True
    next_open_at: str | None = None
    prechat: str = "name:optional phone:required email:optional"
    colour: str = "#1f6feb"
    ws_enabled: bool = True  # False: every WebSocket upgrade is refused (503)
    visitors: dict[str, Visitor] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # paths refused for their Origin
    ws_after: list[str | None] = field(default_factory=list)  # `after` of each ws connect
    sockets: list[tuple[str, web.WebSocketResponse]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def only_visitor(self) -> Visitor:
        assert len(self.visitors) == 1, list(self.visitors)
        return next(iter(self.visitors.values()))

    async def __aenter__(self) -> FakeWebchat:
        app = web.Application(middlewares=[self._origin_check])
        app.router.add_get("/widget/{account}.js", self._widget)
        a = "/webchat/{account}"
        app.router.add_route("OPTIONS", a + "/{rest:.*}", self._preflight)
        app.router.add_get(a + "/config", self._config)
        app.router.add_post(a + "/session", self._session)
        app.router.add_post(a + "/messages", self._messages)
        app.router.add_post(a + "/offline", self._offline)
        app.router.add_get(a + "/feed", self._feed)
        app.router.add_get(a + "/ws", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.drop_sockets()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- the operator's side -----------------------------------------------------------
    async def push(self, visitor: Visitor, frame: dict[str, Any], keep: bool = True) -> None:
        if keep:
            visitor.feed.append(frame)
            frame["cursor"] = visitor.cursor()
        for vid, ws in list(self.sockets):
            if vid == visitor.id and not ws.closed:
                await ws.send_str(orjson.dumps(frame).decode())
        async with visitor.changed:
            visitor.changed.notify_all()

    async def reply(self, visitor: Visitor, text: str, attachments: list[Any] | None = None) -> str:
        mid = f"out-{len(visitor.feed) + 1}"
        frame = {
            "type": "message",
            "id": mid,
            "client_id": None,
            "direction": "out",
            "text": text,
            "attachments": attachments or [],
            "at": "2026-12-07T10:00:00Z",
        }
        await self.push(visitor, frame)
        return mid

    async def typing(self, visitor: Visitor, on: bool) -> None:
        await self.push(visitor, {"type": "typing", "on": on}, keep=False)

    async def read(self, visitor: Visitor, up_to: str) -> None:
        await self.push(visitor, {"type": "read", "up_to": up_to}, keep=False)

    async def drop_sockets(self) -> None:
        live, self.sockets = self.sockets, []
        for _, ws in live:
            await ws.close()

    # ---- HTTP --------------------------------------------------------------------------
    def _cors(self, request: web.Request, resp: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin in self.origins:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"

    @web.middleware
    async def _origin_check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.path.startswith("/webchat/") and origin not in self.origins:
            self.refused.append(request.path)
            return web.Response(
                status=403,
                body=orjson.dumps({"type": "origin_not_allowed", "title": "origin not allowed"}),
                content_type="application/problem+json",
            )
        resp: web.StreamResponse = await handler(request)
        if not isinstance(resp, web.WebSocketResponse):
            self._cors(request, resp)
        return resp

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, X-Visitor-Token",
                "Access-Control-Max-Age": "600",
            },
        )

    async def _widget(self, request: web.Request) -> web.Response:
        return web.Response(
            body=WIDGET.read_bytes(),
            headers={
                "Content-Type": "text/javascript; charset=utf-8",
                "Cache-Control": "public, max-age=300",
            },
        )

    async def _config(self, request: web.Request) -> web.Response:
        en = request.query.get("lang") == "en"
        prechat = []
        for part in self.prechat.split():
            name, _, mode = part.partition(":")
            if mode != "off":
                prechat.append({"field": name, "required": mode == "required"})
        return web.json_response(
            {
                "account": self.account,
                "colour": self.colour,
                "position": "right",
                "greeting": "Hello! How can we help?" if en else "Здравствуйте! Чем помочь?",
                "offline_text": "We are offline." if en else "Сейчас мы не на связи.",
                "prechat": prechat,
                "online": self.online,
                "next_open_at": self.next_open_at,
                "limits": {"text_max": 4000, "upload_max_bytes": 10485760},
            }
        )

    def _visitor(self, request: web.Request, token: str | None = None) -> Visitor | None:
        raw = token if token is not None else request.headers.get("X-Visitor-Token", "")
        vid = token_visitor(raw)
        return self.visitors.get(vid) if vid else None

    async def _session(self, request: web.Request) -> web.Response:
        body = await request.json()
        visitor = self._visitor(request, str(body.get("visitor_token") or ""))
        if visitor is None:
            visitor = Visitor(id=secrets.token_hex(8))
            self.visitors[visitor.id] = visitor
        visitor.sessions.append(body)
        ident, given = body.get("identifier"), body.get("identifier_hash")
        if isinstance(ident, str) and isinstance(given, str):
            want = hmac.new(self.secret.encode(), ident.encode(), hashlib.sha256).hexdigest()
            visitor.verified = hmac.compare_digest(want, given)
        return web.json_response(
            {
                "visitor_token": visitor_token(visitor.id),
                "visitor_id": visitor.id,
                "verified": visitor.verified,
                "cursor": visitor.cursor(),
            }
        )

    async def _store(self, request: web.Request) -> tuple[Visitor, dict[str, Any], bool] | None:
        visitor = self._visitor(request)
        if visitor is None:
            return None
        body = await request.json()
        client_id = str(body["client_id"])
        visitor.posts.append(client_id)
        if client_id in visitor.stored:
            return visitor, visitor.stored[client_id], True
        frame = {
            "type": "message",
            "id": f"in-{len(visitor.feed) + 1}",
            "client_id": client_id,
            "direction": "in",
            "text": body.get("text", ""),
            "attachments": [],
            "at": "2026-12-07T10:00:00Z",
        }
        visitor.stored[client_id] = {**body, "id": frame["id"]}
        await self.push(visitor, frame)
        return visitor, visitor.stored[client_id], False

    async def _messages(self, request: web.Request) -> web.Response:
        got = await self._store(request)
        if got is None:
            return web.json_response({"title": "visitor token required"}, status=401)
        _, stored, duplicate = got
        return web.json_response(
            {
                "ok": True,
                "id": stored["id"],
                "client_id": stored["client_id"],
                "duplicate": duplicate,
            }
        )

    async def _offline(self, request: web.Request) -> web.Response:
        got = await self._store(request)
        if got is None:
            return web.json_response({"title": "visitor token required"}, status=401)
        _, stored, duplicate = got
        return web.json_response(
            {
                "ok": True,
                "id": stored["id"],
                "client_id": stored["client_id"],
                "duplicate": duplicate,
                "answer_expected_at": self.next_open_at,
            }
        )

    async def _feed(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        if visitor is None:
            return web.json_response({"title": "visitor token required"}, status=401)
        after = int(request.query.get("after") or 0)
        wait = min(25.0, float(request.query.get("wait") or 0))
        if wait > 0 and len(visitor.feed) <= after:
            async with visitor.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        visitor.changed.wait_for(lambda: len(visitor.feed) > after), wait
                    )
        return web.json_response({"items": visitor.feed[after:], "cursor": visitor.cursor()})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request, request.query.get("token", ""))
        if visitor is None:
            return web.json_response({"title": "visitor token required"}, status=401)
        after_raw = request.query.get("after")
        self.ws_after.append(after_raw)
        if not self.ws_enabled:
            return web.json_response({"title": "no sockets today"}, status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for frame in visitor.feed[int(after_raw or 0) :]:
            await ws.send_str(orjson.dumps(frame).decode())
        self.sockets.append((visitor.id, ws))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                visitor.frames_in.append(orjson.loads(msg.data))
                async with visitor.changed:
                    visitor.changed.notify_all()
        return ws
