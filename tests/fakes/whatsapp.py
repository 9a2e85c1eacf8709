"""A local fake of the WhatsApp Cloud API send endpoint (Meta Graph API).

``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>``
takes a text, a document or image by link (``type: document``, ``document: {link,
filename?, caption?}``), or a template message (``type: template``, ``template: {name, language:
{code}, components}``; :attr:`FakeWhatsApp.template_refusals` makes Graph refuse a
template by name) and answers like Graph does: ``{"messaging_product", "contacts": [{input, wa_id}],
"messages": [{"id": "wamid…"}]}`` on success, ``{"error": {message, type, code,
error_data: {messaging_product, details}, fbtrace_id}}`` otherwise (a wrong token → 401
with code 190). Every request is recorded exactly as received. Tell it to fail the next
requests with :meth:`FakeWhatsApp.fail_next` (or the presets below it) or to answer slowly
with :meth:`FakeWhatsApp.delay_next`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from tests.helpers import free_port


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Failure:
    status: int
    code: int | None = None
    message: str = ""
    details: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a body that is not Graph's JSON (proxy error pages …)
    is_transient: bool | None = None


def graph_error(f: Failure) -> bytes:
    if f.raw is not None:
        return f.raw
    err: dict[str, Any] = {
        "message": f"(#{f.code}) {f.message}" if f.code is not None else f.message,
        "type": "OAuthException",
        "code": f.code,
        "fbtrace_id": "A" + uuid.uuid4().hex[:22],
    }
    if f.details is not None:
        err["error_data"] = {"messaging_product": "whatsapp", "details": f.details}
    if f.is_transient is not None:
        err["is_transient"] = f.is_transient
    return orjson.dumps({"error": err})


def _template_ok(t: Any) -> bool:
    """A template object as Graph takes it: a name, ``language.code`` and, if any,
    ``components`` of ``{type, parameters: [{type: text, text}]}``."""
    if not (isinstance(t["name"], str) and isinstance(t["language"]["code"], str)):
        return False
    for comp in t.get("components", []):
        if comp["type"] not in ("header", "body", "button"):
            return False
        for p in comp["parameters"]:
            if p["type"] != "text" or not isinstance(p["text"], str) or "\n" in p["text"]:
                return False
    return True


class FakeWhatsApp:
    def __init__(self, token: str = "test-access-token") -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.sent: list[str] = []  # wamids handed out, in order
        self._failures: deque[Failure] = deque()
        self._delays: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self.port = free_port()
        # Template name → the error Graph answers for it (e.g. 132001 does not exist,
        # 132015 paused): Meta's own check of a template we send.
        self.template_refusals: dict[str, Failure] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- behaviour ----------------------------------------------------------------------

    def fail_next(self, failure: Failure, times: int = 1) -> None:
        self._failures.extend([failure] * times)

    def delay_next(self, seconds: float, times: int = 1) -> None:
        self._delays.extend([seconds] * times)

    def rate_limit(self, code: int = 130429, times: int = 1) -> None:
        """Graph's throughput (130429) or pair-rate (131056) error: HTTP 400, no header."""
        messages = {
            130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
            131056: (
                "(Business Account, Consumer Account) pair rate limit hit",
                "Too many messages sent from the sender phone number to the same recipient "
                "phone number in a short period of time.",
            ),
        }
        title, details = messages.get(code, ("Rate limit hit", None))
        self.fail_next(Failure(400, code, title, details), times)

    def too_many_requests(self, retry_after: float, times: int = 1) -> None:
        """HTTP 429 with a ``Retry-After`` header."""
        self.fail_next(
            Failure(429, 130429, "Rate limit hit", headers={"Retry-After": f"{retry_after:g}"}),
            times,
        )

    def server_error(self, status: int = 503, times: int = 1) -> None:
        self.fail_next(
            Failure(status, 2, "Service temporarily unavailable", is_transient=True), times
        )

    def permanent(
        self, code: int = 131026, message: str = "Message undeliverable", details: str = ""
    ) -> None:
        self.fail_next(Failure(400, code, message, details or None))

    # --- server -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body))
        if self._delays:
            await asyncio.sleep(self._delays.popleft())
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(Failure(401, 190, "Invalid OAuth access token."))
        if self._failures:
            return self._error(self._failures.popleft())
        try:
            data = orjson.loads(body)
            to = data.get("to") or data["recipient"]
            ok = data["messaging_product"] == "whatsapp" and (
                (data["type"] == "text" and isinstance(data["text"]["body"], str))
                or (data["type"] == "template" and _template_ok(data["template"]))
                or (
                    data["type"] in ("document", "image")
                    and str(data[data["type"]]["link"]).startswith(("http://", "https://"))
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            return self._error(Failure(400, 100, "Invalid parameter"))
        if data["type"] == "template" and (
            refusal := self.template_refusals.get(data["template"]["name"])
        ):
            return self._error(refusal)
        wamid = "wamid.HBgL" + uuid.uuid4().hex.upper()
        self.sent.append(wamid)
        contact = {"input": to, "wa_id": to} if data.get("to") else {"input": to, "user_id": to}
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
        )

    @staticmethod
    def _error(f: Failure) -> web.Response:
        return web.Response(
            status=f.status,
            body=graph_error(f),
            content_type="text/html" if f.raw is not None else "application/json",
            headers=f.headers,
        )

    async def start(self) -> FakeWhatsApp:
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/messages", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeWhatsApp:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
