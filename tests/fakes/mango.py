"""Mango Office's side of the VPBX call notifications (CHANNEL_PROTOCOLS.md §6b).

:meth:`FakeMango.post` sends one notification as Mango does: form fields
``vpbx_api_key``, ``sign`` and ``json`` (the event as a JSON string) to
``<base URL>/events/call`` or ``/events/summary``, where
``sign = sha256_hex(vpbx_api_key + json + salt)`` over the exact ``json`` string sent.
The signature is computed here independently of channels/mango.py.

:meth:`FakeMango.start` also serves Mango's command API on a loopback port:
``POST /vpbx/commands/callback`` with the same three form fields (a wrong key or sign →
HTTP 401 ``{"result": 3102}``), answering ``{"result": 1000}`` or the codes queued with
:meth:`FakeMango.answer_next`; every request is recorded exactly (:attr:`commands`).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.helpers import free_port

CALLBACK_PATH = "/vpbx/commands/callback"


@dataclass(frozen=True)
class Command:
    """One request to the command API as received: its form fields, and ``json`` read."""

    path: str
    form: dict[str, str]

    @property
    def json(self) -> Any:
        return orjson.loads(self.form["json"])


@dataclass
class FakeMango:
    api_key: str
    salt: str
    commands: list[Command] = field(default_factory=list)
    _answers: deque[tuple[int, int]] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer_next(self, result: int, status: int = 200) -> None:
        """The next command is answered with this ``result`` (and HTTP status)."""
        self._answers.append((status, result))

    async def start(self) -> FakeMango:
        app = web.Application()
        app.router.add_post(CALLBACK_PATH, self._command)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeMango:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _command(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.commands.append(Command(request.path, form))
        given = form.get("sign", "")
        if form.get("vpbx_api_key") != self.api_key or given != self.sign(form.get("json", "")):
            return web.json_response({"result": 3102}, status=401)
        status, result = self._answers.popleft() if self._answers else (200, 1000)
        return web.json_response({"result": result}, status=status)

    def sign(self, json_text: str, *, api_key: str | None = None, salt: str | None = None) -> str:
        key = self.api_key if api_key is None else api_key
        text = key + json_text + (self.salt if salt is None else salt)
        return hashlib.sha256(text.encode()).hexdigest()

    async def post(
        self,
        base_url: str,
        kind: str,
        event: dict[str, Any] | str,
        *,
        sign: str | None = None,
        api_key: str | None = None,
    ) -> tuple[int, bytes]:
        """POST to ``{base_url}/events/{kind}``; ``event`` as a dict or the exact JSON."""
        json_text = event if isinstance(event, str) else orjson.dumps(event).decode()
        form = {
            "vpbx_api_key": self.api_key if api_key is None else api_key,
            "sign": self.sign(json_text) if sign is None else sign,
            "json": json_text,
        }
        url = f"{base_url}/events/{kind}"
        async with aiohttp.ClientSession() as http, http.post(url, data=form) as r:
            return r.status, await r.read()
