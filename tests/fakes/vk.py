"""A local fake of the VK API (``https://api.vk.ru/method/<name>``): ``messages.send``,
``wall``/``photos``/``video``/``market.createComment`` and ``.deleteComment``.

An aiohttp server on a free loopback port. Like VK it takes form-encoded POSTs with
``access_token`` and ``v``, answers ``{"response": …}`` or ``{"error": {error_code,
error_msg, request_params}}`` with HTTP 200, and honours ``random_id``: a repeated
(peer_id, random_id) returns the first message's id and delivers nothing new.

Every request is recorded exactly as received (:attr:`FakeVk.requests`); the messages
that were actually delivered are in :attr:`FakeVk.delivered`. Tell it to fail with
:meth:`FakeVk.fail_next` (a VK error such as 6 "Too many requests per second"), an HTTP
status (429 with ``Retry-After``, 5xx), or a slow answer (the message is delivered, the
answer comes after ``delay_s``: a client timeout after the fact). Peers in
:attr:`FakeVk.closed_peers` get error 901, as users who never wrote to the community.

Comments: ``<section>.createComment`` answers ``{"comment_id", "parents_stack"}`` and
honours ``guid`` (a repeated guid on the same object returns the first comment); the
comments made are in :attr:`FakeVk.comments`, deletions in :attr:`FakeVk.deleted_comments`.
Posts in :attr:`FakeVk.closed_posts` (``"<owner>_<id>"``) get error 213 (comments closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import web

from tests.helpers import free_port

ERROR_MESSAGES = {
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    9: "Flood control",
    10: "Internal server error: Unknown error, try later",
    100: "One of the parameters specified was missing or invalid",
    901: "Can't send messages for users without permission",
    902: "Can't send messages to this user due to their privacy settings",
    213: "Access to status replies denied",
    914: "Message is too long",
}
# <section>.createComment → the parameter naming the commented object.
COMMENT_OBJECTS = {
    "wall": "post_id",
    "photos": "photo_id",
    "video": "video_id",
    "market": "item_id",
}


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass(frozen=True)
class Failure:
    """What the next request gets instead of a normal answer."""

    vk_error: int | None = None
    http_status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0


@dataclass
class FakeVk:
    token: str
    port: int = field(default_factory=free_port)
    requests: list[Recorded] = field(default_factory=list)
    delivered: list[dict[str, str]] = field(default_factory=list)
    closed_peers: set[int] = field(default_factory=set)
    closed_posts: set[str] = field(default_factory=set)
    comments: list[dict[str, str]] = field(default_factory=list)
    deleted_comments: list[dict[str, str]] = field(default_factory=list)
    next_id: int = 501
    next_comment_id: int = 7001
    _guids: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _plan: list[Failure] = field(default_factory=list)
    _sent: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(
        self,
        *,
        vk_error: int | None = None,
        http_status: int | None = None,
        retry_after: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._plan.append(Failure(vk_error, http_status, retry_after, delay_s))

    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/method/messages.send"]

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == f"/method/{method}"]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = Recorded(
            request.method, request.path, dict(request.headers), dict(request.query), body
        )
        self.requests.append(rec)
        failure = self._plan.pop(0) if self._plan else None
        if failure and failure.http_status:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return web.Response(status=failure.http_status, text="upstream error", headers=headers)
        if failure and failure.vk_error:
            return self._error(failure.vk_error, request.match_info["name"], rec.form)
        answer = self._call(request.match_info["name"], {**rec.query, **rec.form})
        if failure and failure.delay_s:
            await asyncio.sleep(failure.delay_s)
        return answer

    def _error(self, code: int, method: str, params: dict[str, str]) -> web.Response:
        shown = [{"key": "method", "value": method}, {"key": "oauth", "value": "1"}]
        shown += [{"key": k, "value": v} for k, v in params.items() if k != "access_token"]
        error = {"error_code": code, "error_msg": ERROR_MESSAGES.get(code, "Unknown error")}
        return web.json_response({"error": {**error, "request_params": shown}})

    def _call(self, method: str, params: dict[str, str]) -> web.Response:
        if params.get("access_token") != self.token:
            return self._error(5, method, params)
        if not params.get("v"):
            return self._error(100, method, params)
        section, _, verb = method.partition(".")
        if section in COMMENT_OBJECTS and verb == "createComment":
            return self._create_comment(section, method, params)
        if section in COMMENT_OBJECTS and verb == "deleteComment":
            if not params.get("owner_id") or not params.get("comment_id"):
                return self._error(100, method, params)
            self.deleted_comments.append({**params, "method": method})
            return web.json_response({"response": 1})
        if method != "messages.send":
            return self._error(3, method, params)
        peer, rid = params.get("peer_id", ""), params.get("random_id", "")
        if not peer or not rid or not (params.get("message") or params.get("attachment")):
            return self._error(100, method, params)
        if len(params.get("message", "")) > 9000:
            return self._error(914, method, params)
        if int(peer) in self.closed_peers:
            return self._error(901, method, params)
        if (peer, rid) in self._sent:  # VK's idempotency: the same message, not a new one
            return web.json_response({"response": self._sent[(peer, rid)]})
        message_id = self.next_id
        self.next_id += 1
        self._sent[(peer, rid)] = message_id
        self.delivered.append({**params, "id": str(message_id)})
        return web.json_response({"response": message_id})

    def _create_comment(self, section: str, method: str, params: dict[str, str]) -> web.Response:
        owner, obj = params.get("owner_id", ""), params.get(COMMENT_OBJECTS[section], "")
        if not owner or not obj or not (params.get("message") or params.get("attachments")):
            return self._error(100, method, params)
        if f"{owner}_{obj}" in self.closed_posts:
            return self._error(213, method, params)
        guid = params.get("guid", "")
        if guid and (section, f"{owner}_{obj}", guid) in self._guids:
            made = self._guids[(section, f"{owner}_{obj}", guid)]
        else:
            made = self.next_comment_id
            self.next_comment_id += 1
            if guid:
                self._guids[(section, f"{owner}_{obj}", guid)] = made
            self.comments.append({**params, "method": method, "comment_id": str(made)})
        stack = [int(params["reply_to_comment"])] if params.get("reply_to_comment") else []
        return web.json_response({"response": {"comment_id": made, "parents_stack": stack}})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeVk]:
        app = web.Application()
        app.router.add_route("*", "/method/{name}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()
