"""A local fake of the Avito API (``api.avito.ru``) on a loopback port.

It speaks what the fact sheet (CHANNEL_PROTOCOLS.md §5) describes:

* ``POST /token`` (form-urlencoded ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``) → ``{access_token, expires_in, token_type: "Bearer"}``; wrong
  credentials get ``{"error": "invalid_client", "error_description": …}``;
* ``POST /messenger/v1/accounts/{user_id}/chats/{chat_id}/messages`` with a Bearer token
  and ``{"message": {"text": …}, "type": "text"}`` → ``{id, content, created, direction:
  "out", type}``; text over 1000 characters → 400;
* ``POST /messenger/v3/webhook {"url": …}`` → POSTs ``{}`` to the URL at once and answers
  ``{"ok": true}`` only if it got 200 within 2 s;
* an unknown or revoked token → 401, another account's ``user_id`` → 403, errors as
  ``{"error": {"code": …, "message": …}}``.

It plays Avito's side of the webhook too: :meth:`FakeAvito.deliver` POSTs a notification.

Every request is recorded exactly as received (:attr:`FakeAvito.requests`). Failures are
queued with :meth:`FakeAvito.fail_next` (for the API or the token endpoint): an HTTP status
(429 with ``Retry-After``, 5xx, 4xx with a message) and/or a delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import aiohttp
import orjson
from aiohttp import web

from tests.helpers import free_port

Endpoint = Literal["api", "token"]
MESSAGES = "/messenger/v1/accounts/{user_id}/chats/{chat_id}/messages"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass(frozen=True)
class Failure:
    endpoint: Endpoint
    status: int
    message: str
    retry_after: str | None
    delay_s: float


@dataclass
class FakeAvito:
    client_id: str
    client_secret: str
    user_id: int
    expires_in: int = 86400
    requests: list[Recorded] = field(default_factory=list)
    # (url, HTTP status) of every check the webhook subscription made.
    webhook_checks: list[tuple[str, int]] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    # Our outbound message ids, in the order they were accepted.
    message_ids: list[str] = field(default_factory=list)
    _valid: set[str] = field(default_factory=set)
    _failures: deque[Failure] = field(default_factory=deque)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/messages")]

    def token_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/token"]

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (expired or revoked on Avito's side)."""
        self._valid.clear()

    def fail_next(
        self,
        status: int,
        *,
        message: str = "",
        retry_after: str | None = None,
        delay_s: float = 0.0,
        endpoint: Endpoint = "api",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``endpoint`` with this failure."""
        for _ in range(times):
            self._failures.append(Failure(endpoint, status, message, retry_after, delay_s))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/token/", self._token)
        app.router.add_post(MESSAGES, self._send_message)
        app.router.add_post("/messenger/v3/webhook", self._subscribe)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAvito:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def deliver(
        self, url: str, payload: dict[str, Any] | bytes, *, timeout_s: float = 2.0
    ) -> tuple[int, bytes]:
        """POST a webhook notification to ``url`` as Avito does (JSON, 2 s timeout)."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, data=body, headers=headers) as resp,
        ):
            return resp.status, await resp.read()

    # --- the API ------------------------------------------------------------------

    async def _record(self, request: web.Request, endpoint: Endpoint) -> web.Response | None:
        """Record the request; the queued failure's answer, if one is due."""
        body = await request.read()
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        failure = next((f for f in self._failures if f.endpoint == endpoint), None)
        if failure is None:
            return None
        self._failures.remove(failure)
        if failure.delay_s:
            await asyncio.sleep(failure.delay_s)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
        if failure.status == 200:  # only a delay
            return None
        reason = failure.message or _reason(failure.status)
        answer: dict[str, Any] = (
            {
                "error": "server_error" if failure.status >= 500 else "invalid_request",
                "error_description": reason,
            }
            if endpoint == "token"
            else {"error": {"code": failure.status, "message": reason}}
        )
        return _json(answer, failure.status, headers)

    async def _token(self, request: web.Request) -> web.Response:
        if (failed := await self._record(request, "token")) is not None:
            return failed
        form = self.requests[-1].form
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400)
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return _json(
                {"error": "invalid_client", "error_description": "invalid client id or secret"}
            )
        token = hashlib.sha256(f"token-{next(self._seq)}".encode()).hexdigest()[:40]
        self._valid.add(token)
        return _json({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _authorized(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self._valid:
            return _json({"error": {"code": 401, "message": "Unauthorized"}}, 401)
        return None

    async def _send_message(self, request: web.Request) -> web.Response:
        if (failed := await self._record(request, "api")) is not None:
            return failed
        if (denied := self._authorized(request)) is not None:
            return denied
        if request.match_info["user_id"] != str(self.user_id):
            return _json({"error": {"code": 403, "message": "Forbidden"}}, 403)
        try:
            data = orjson.loads(self.requests[-1].body)
        except orjson.JSONDecodeError:
            return _json({"error": {"code": 400, "message": "invalid json"}}, 400)
        data = data if isinstance(data, dict) else {}
        message = data.get("message")
        text = message.get("text") if isinstance(message, dict) else None
        if data.get("type") != "text" or not isinstance(text, str) or not text:
            return _json({"error": {"code": 400, "message": "message.text is required"}}, 400)
        if len(text) > 1000:
            return _json({"error": {"code": 400, "message": "text is too long"}}, 400)
        mid = hashlib.sha256(f"out-{next(self._seq)}".encode()).hexdigest()[:32]
        self.message_ids.append(mid)
        return _json(
            {
                "id": mid,
                "content": {"text": text},
                "created": int(time.time()),
                "direction": "out",
                "type": "text",
            }
        )

    async def _subscribe(self, request: web.Request) -> web.Response:
        if (failed := await self._record(request, "api")) is not None:
            return failed
        if (denied := self._authorized(request)) is not None:
            return denied
        url = _body_url(self.requests[-1].body)
        if url is None:
            return _json({"error": {"code": 400, "message": "url is required"}}, 400)
        try:
            status, _ = await self.deliver(url, b"{}")
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.webhook_checks.append((url, status))
        if status != 200:
            message = f"webhook url answered {status}, expected 200 within 2 s"
            return _json({"error": {"code": 400, "message": message}}, 400)
        self.subscriptions.append(url)
        return _json({"ok": True})


def _body_url(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) and url else None


def _reason(status: int) -> str:
    return {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(
        status, f"error {status}"
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
