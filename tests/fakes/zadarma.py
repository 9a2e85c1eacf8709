"""A local fake of Zadarma's API (the callback request) on a loopback port, and Zadarma's
side of the PBX notifications.

As the fact sheet (CHANNEL_PROTOCOLS.md §6d) describes it:

* ``GET /v1/request/callback/?from=<extension>&to=<number>`` with ``Authorization:
  <key>:<base64(hex(HMAC-SHA1(secret, path + query + md5(query))))>`` (the query sorted,
  form-encoded) → ``{"status": "success", "from": …, "to": …, "time": …}``; a wrong
  signature → 401 ``{"status": "error", "message": "Not authorized"}``.
* :meth:`FakeZadarma.notify` POSTs a notification (form fields) with the ``Signature``
  header computed as Zadarma does; :meth:`FakeZadarma.echo` makes the URL check.

The signature is computed here independently of channels/zadarma.py, from the fact
sheet's description.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web

from tests.helpers import free_port

CALLBACK_PATH = "/v1/request/callback/"
SIGNED = {
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}


def php_signature(secret: str, text: str) -> str:
    """PHP: ``base64_encode(hash_hmac('sha1', $text, $secret))`` — hex, then base64."""
    return base64.b64encode(
        hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest().encode()
    ).decode()


@dataclass
class FakeZadarma:
    key: str
    secret: str
    requests: list[dict[str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(CALLBACK_PATH, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeZadarma:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def notify(
        self, url: str, event: str, *, signature: str | None = None, **fields: str | int
    ) -> tuple[int, bytes]:
        form = {"event": event, **{k: str(v) for k, v in fields.items()}}
        text = "".join(form.get(name, "") for name in SIGNED.get(event, ()))
        sig = php_signature(self.secret, text) if signature is None else signature
        headers = {"Signature": sig} if sig else {}
        async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as r:
            return r.status, await r.read()

    async def echo(self, url: str, value: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(url, params={"zd_echo": value}) as r:
            return r.status, await r.text()

    async def _callback(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.requests.append(params)
        query = urlencode(sorted(params.items()))
        text = CALLBACK_PATH + query + hashlib.md5(query.encode()).hexdigest()
        expected = f"{self.key}:{php_signature(self.secret, text)}"
        if request.headers.get("Authorization") != expected:
            return _json({"status": "error", "message": "Not authorized"}, 401)
        if not params.get("from") or not params.get("to", "").isdigit():
            return _json({"status": "error", "message": "Wrong parameters"}, 200)
        body: dict[str, str | int] = {
            "status": "success",
            "from": params["from"],
            "to": params["to"],
            "time": 1732100000,
        }
        return _json(body, 200)


def _json(body: dict[str, str | int], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
