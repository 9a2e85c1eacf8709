"""A custom integration behind the generic API channel: it receives omniroute's replies at
its ``reply_url``, checks their signature (computed here with :mod:`hmac` directly, not
with the project's signing module) and answers as scripted."""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.helpers import free_port


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    signed: bool


@dataclass
class FakeIntegration:
    secret: str
    received: list[Received] = field(default_factory=list)
    # (status, body) answers to give next; then 200 {"id": "int-<n>"}.
    script: deque[tuple[int, bytes]] = field(default_factory=deque)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/omniroute/replies"

    def texts(self) -> list[str]:
        return [r.body["text"] for r in self.received]

    async def __aenter__(self) -> FakeIntegration:
        app = web.Application()
        app.router.add_post("/omniroute/replies", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        stamp = request.headers.get("X-Omniroute-Timestamp", "")
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256)
        signed = hmac.compare_digest(
            "sha256=" + mac.hexdigest(), request.headers.get("X-Omniroute-Signature", "")
        )
        self.received.append(Received(orjson.loads(raw), dict(request.headers), signed))
        if not signed:
            return web.Response(status=401, text="bad signature")
        if self.script:
            status, body = self.script.popleft()
            return web.Response(status=status, body=body)
        return web.json_response({"id": f"int-{len(self.received)}"})
