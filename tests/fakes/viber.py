"""A local fake of the Viber REST Bot API (``chatapi.viber.com``) on a loopback port.

It speaks what the fact sheet (CHANNEL_PROTOCOLS.md §3) describes:

* ``POST /pa/send_message`` and ``POST /pa/set_webhook`` with ``X-Viber-Auth-Token``;
  answers are HTTP 200 with ``{"status": 0, "status_message": "ok", …}`` or a non-zero
  ``status`` (2 invalidAuthToken, 3 badData, 4 missingData …);
* ``set_webhook`` POSTs the signed ``{"event": "webhook"}`` check to the URL at once and
  refuses the URL (status 1) unless it answers 200, as Viber does;
* it plays Viber's side of the webhook too: :meth:`FakeViber.callback` POSTs a callback
  signed with ``X-Viber-Content-Signature``.

Every request is recorded exactly as received (:attr:`FakeViber.requests`). Failures are
queued with :meth:`FakeViber.fail_next`: a Viber status (12 = too many requests, 6 =
receiver not subscribed …), an HTTP status (429 with ``Retry-After``, 5xx) or a delay.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from channels.viber import SIGNATURE_HEADER, TOKEN_HEADER, sign
from tests.helpers import free_port

CHAT_HOSTNAME = "SN-CHAT-05_"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Failure:
    http_status: int = 200
    viber_status: int | None = None
    status_message: str = ""
    retry_after: str | None = None
    delay_s: float = 0.0


@dataclass
class FakeViber:
    token: str
    requests: list[Recorded] = field(default_factory=list)
    # (url, HTTP status) of every webhook check set_webhook made.
    webhook_checks: list[tuple[str, int]] = field(default_factory=list)
    _failures: deque[Failure] = field(default_factory=deque)
    _tokens: itertools.count[int] = field(
        default_factory=lambda: itertools.count(5741311803571721087)
    )
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/pa/send_message"]

    def fail_next(
        self,
        *,
        viber_status: int | None = None,
        status_message: str = "",
        http_status: int = 200,
        retry_after: str | None = None,
        delay_s: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` API calls with this failure instead of serving them."""
        for _ in range(times):
            self._failures.append(
                Failure(http_status, viber_status, status_message, retry_after, delay_s)
            )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/pa/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeViber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def callback(
        self,
        url: str,
        payload: dict[str, Any] | bytes,
        *,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """POST a callback to ``url`` as Viber does: raw JSON, signed with the token."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        hdrs = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.token, body) if signature is None else signature,
        }
        hdrs.update(headers or {})
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=hdrs) as r:
            return r.status, await r.read()

    # --- the API ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        if self._failures:
            return await self._fail(self._failures.popleft())
        if request.headers.get(TOKEN_HEADER) != self.token:
            return _answer(2, "invalidAuthToken")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _answer(3, "badData")
        method = request.match_info["method"]
        if method == "send_message":
            return self._send_message(data)
        if method == "set_webhook":
            return await self._set_webhook(data)
        return web.Response(status=404, text="Not Found")

    async def _fail(self, f: Failure) -> web.Response:
        if f.delay_s:
            await asyncio.sleep(f.delay_s)
        if f.http_status != 200:
            headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
            return web.Response(
                status=f.http_status,
                text="Too Many Requests" if f.http_status == 429 else "Internal Server Error",
                headers=headers,
            )
        return _answer(f.viber_status or 0, f.status_message or "ok")

    def _send_message(self, data: dict[str, Any]) -> web.Response:
        sender = data.get("sender")
        if not data.get("receiver") or not isinstance(sender, dict) or not sender.get("name"):
            return _answer(4, "missingData")
        if data.get("type") != "text" or not data.get("text"):
            return _answer(3, "badData")
        return _answer(0, "ok", message_token=next(self._tokens), chat_hostname=CHAT_HOSTNAME)

    async def _set_webhook(self, data: dict[str, Any]) -> web.Response:
        url = data.get("url")
        if not isinstance(url, str):
            return _answer(4, "missingData")
        if url == "":  # removing the webhook
            return _answer(0, "ok")
        check = {
            "event": "webhook",
            "timestamp": int(time.time() * 1000),
            "chat_hostname": CHAT_HOSTNAME,
            "message_token": next(self._tokens),
        }
        try:
            status, _ = await self.callback(url, check)
        except aiohttp.ClientError:
            status = 0
        self.webhook_checks.append((url, status))
        if status != 200:
            return _answer(1, f"Result[HttpResponse({status})] is not 200")
        events = data.get("event_types") or [
            "delivered",
            "seen",
            "failed",
            "subscribed",
            "unsubscribed",
            "conversation_started",
        ]
        return _answer(0, "ok", event_types=events, chat_hostname=CHAT_HOSTNAME)


def _answer(status: int, message: str, **extra: Any) -> web.Response:
    body = {"status": status, "status_message": message, **extra}
    return web.Response(body=orjson.dumps(body), content_type="application/json")
