"""A local fake of the Telegram Bot API: ``POST /bot<token>/<method>``.

It records every request exactly as received (HTTP method, path, headers, raw body and the
decoded parameters — python-telegram-bot sends form-encoded bodies whose non-string
values are JSON), answers ``getMe``, ``send*`` and ``setWebhook`` the way the Bot API does
(``{"ok": true, "result": …}``), and can be told to fail the next calls of a method:

    fake.fail("sendMessage", rate_limited(2), server_error(502))

Errors have the Bot API's shape: ``{"ok": false, "error_code": …, "description": …,
"parameters": {"retry_after": N}}``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.helpers import free_port

BOT_USER = {"id": 7000001, "is_bot": True, "first_name": "Omni", "username": "omni_test_bot"}
# What each send method puts into the returned Message, besides text/caption.
MEDIA_FIELD = {
    "sendPhoto": "photo",
    "sendDocument": "document",
    "sendVideo": "video",
    "sendAudio": "audio",
    "sendVoice": "voice",
    "sendAnimation": "animation",
}


@dataclass(frozen=True)
class Failure:
    status: int
    body: dict[str, Any] | None
    delay_s: float = 0.0


def rate_limited(retry_after: int) -> Failure:
    return Failure(
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {retry_after}",
            "parameters": {"retry_after": retry_after},
        },
    )


def server_error(status: int = 500) -> Failure:
    return Failure(
        status, {"ok": False, "error_code": status, "description": "Internal Server Error"}
    )


def permanent(description: str = "Bad Request: chat not found", status: int = 400) -> Failure:
    return Failure(status, {"ok": False, "error_code": status, "description": description})


def migrated(new_chat_id: int) -> Failure:
    return Failure(
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": new_chat_id},
        },
    )


def slow(seconds: float) -> Failure:
    """Answer (successfully) only after ``seconds``: a client with a shorter timeout gives up."""
    return Failure(200, None, delay_s=seconds)


@dataclass
class Recorded:
    http_method: str
    path: str
    api_method: str
    token: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, Any] = field(default_factory=dict)

    def json(self, key: str) -> Any:
        """A form parameter that python-telegram-bot JSON-encoded (lists, objects)."""
        return json.loads(self.params[key])


class FakeBotApi:
    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.requests: list[Recorded] = []
        self.webhook: dict[str, Any] = {}
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
        self._ids = itertools.count(501)
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        """The ``api_base`` setting that points a channel account at this fake."""
        return f"http://127.0.0.1:{self.port}"

    def fail(self, api_method: str, *failures: Failure) -> None:
        self._failures[api_method].extend(failures)

    def calls(self, api_method: str) -> list[Recorded]:
        return [r for r in self.requests if r.api_method == api_method]

    async def __aenter__(self) -> FakeBotApi:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        token, method = request.match_info["token"], request.match_info["method"]
        rec = Recorded(request.method, request.path, method, token, dict(request.headers), body)
        if request.content_type == "application/json" and body:
            rec.params = json.loads(body)
        elif request.content_type == "multipart/form-data":
            rec.params = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        else:
            rec.params = dict(parse_qsl(body.decode()))
        self.requests.append(rec)
        if token != self.token:
            return self._error(401, "Unauthorized")
        if queue := self._failures.get(method):
            failure = queue.popleft()
            if failure.delay_s:
                await asyncio.sleep(failure.delay_s)
            if failure.body is not None:
                return web.json_response(failure.body, status=failure.status)
        return self._answer(method, rec.params)

    @staticmethod
    def _error(status: int, description: str) -> web.Response:
        body = {"ok": False, "error_code": status, "description": description}
        return web.json_response(body, status=status)

    def _answer(self, method: str, params: dict[str, Any]) -> web.Response:
        if method == "getMe":
            return web.json_response({"ok": True, "result": BOT_USER})
        if method == "setWebhook":
            self.webhook = dict(params)
            return web.json_response({"ok": True, "result": True, "description": "Webhook was set"})
        if method == "sendMessage" or method in MEDIA_FIELD:
            return web.json_response({"ok": True, "result": self._message(method, params)})
        return self._error(404, "Not Found")

    def _message(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        msg: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
        }
        if "business_connection_id" in params:
            msg["business_connection_id"] = params["business_connection_id"]
        if method == "sendMessage":
            msg["text"] = params["text"]
            return msg
        ref = params[MEDIA_FIELD[method]]
        file = {"file_id": ref, "file_unique_id": f"u{msg['message_id']}"}
        msg[MEDIA_FIELD[method]] = (
            [{**file, "width": 1, "height": 1}] if method == "sendPhoto" else file
        )
        if "caption" in params:
            msg["caption"] = params["caption"]
        return msg
