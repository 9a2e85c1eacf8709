"""A local fake of MegaFon's Virtual PBX CRM API on a loopback port, and the PBX's side of
the CRM webhooks.

As the fact sheet (CHANNEL_PROTOCOLS.md §6a) describes it:

* ``POST /sys/crm_api.wcgp`` (form-encoded, ``cmd`` + ``token`` = the PBX API key):
  ``makeCall`` with ``user`` and ``phone`` (digits only; a leading ``+`` is refused) →
  200 ``{"CallID": …}``; a wrong token → 401 ``{"error": "Unauthorized"}``; an unknown
  user → 400 ``{"error": "…"}``. Failures can be queued with :meth:`FakeMegaFon.fail_next`.
* :meth:`FakeMegaFon.webhook` POSTs a form-encoded CRM notification (``cmd=event``,
  ``history``, ``contact``, ``rating``) with the ``crm_token``, as the PBX does.

Every API request is recorded as received (:attr:`FakeMegaFon.requests`).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import aiohttp
import orjson
from aiohttp import web

from tests.helpers import free_port

API_PATH = "/sys/crm_api.wcgp"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    form: dict[str, str]


@dataclass
class FakeMegaFon:
    crm_token: str
    api_token: str
    users: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    _failures: deque[tuple[int, str]] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7001))
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PATH}"

    def calls_made(self) -> list[dict[str, str]]:
        return [r.form for r in self.requests if r.form.get("cmd") == "makeCall"]

    def fail_next(self, status: int, error: str) -> None:
        self._failures.append((status, error))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(API_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeMegaFon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def webhook(
        self, url: str, cmd: str, *, crm_token: str | None = None, **fields: str | int
    ) -> tuple[int, bytes]:
        """POST one CRM notification as the PBX does (form-encoded, with crm_token)."""
        form = {"cmd": cmd, **{k: str(v) for k, v in fields.items()}}
        token = self.crm_token if crm_token is None else crm_token
        if token:
            form["crm_token"] = token
        async with aiohttp.ClientSession() as http, http.post(url, data=form) as r:
            return r.status, await r.read()

    # --- the API ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        self.requests.append(Recorded(request.method, request.path, form))
        if self._failures:
            status, error = self._failures.popleft()
            return _json({"error": error}, status)
        if form.get("token") != self.api_token:
            return _json({"error": "Unauthorized"}, 401)
        if form.get("cmd") != "makeCall":
            return _json({"error": "Unknown command"}, 400)
        phone, user = form.get("phone", ""), form.get("user", "")
        if not phone.isdigit():
            return _json({"error": "Invalid phone"}, 400)
        if user not in self.users:
            return _json({"error": "Unknown user"}, 400)
        return _json({"CallID": f"mcall-{next(self._ids)}"}, 200)


def _json(body: dict[str, str], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
