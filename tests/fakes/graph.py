"""A local fake of Meta's Graph API as Messenger and Instagram use it.

* ``POST /{version}/{page-or-ig-id|me}/messages`` (the Send API) → ``{"recipient_id",
  "message_id": "m_…"}``.
* ``POST /{version}/{comment-id}/comments`` (Facebook public reply) and ``POST
  /{version}/{ig-comment-id}/replies`` (Instagram) → ``{"id": …}``.
* ``POST /{version}/{comment-id}`` (hide / unhide) → ``{"success": true}``; ``DELETE
  /{version}/{comment-id}`` → ``{"success": true}``.

The token must come as ``Authorization: Bearer <token>`` (or ``access_token``); anything
else → 401 with Graph's code 190. Every request is recorded exactly as received (method,
path, query, headers, body). :meth:`FakeGraph.fail_next` answers the next requests with a
Graph error (``{"error": {message, type, code, error_subcode, fbtrace_id}}``).
"""

from __future__ import annotations

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
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Failure:
    status: int
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


# Graph's own messages for the errors the channels map (CHANNEL_PROTOCOLS.md §9.5).
WINDOW_CLOSED = Failure(
    400,
    10,
    2018278,
    "(#10) This message is sent outside of allowed window. Learn more about the new policy "
    "here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
)
UNAVAILABLE = Failure(400, 551, 1545041, "(#551) This person isn't available right now.")
BAD_TOKEN = Failure(401, 190, 463, "Error validating access token: Session has expired")
NO_PERMISSION = Failure(
    403, 200, None, "(#200) Requires pages_messaging permission to manage the object"
)
RATE_LIMITED = Failure(400, 613, None, "(#613) Calls to this api have exceeded the rate limit.")
UNKNOWN = Failure(500, 2, None, "An unexpected error has occurred. Please retry your request.")


class FakeGraph:
    def __init__(self, token: str = "test-page-token") -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.sent: list[str] = []  # ids handed out, in order
        # Ids to hand out next, before random ones (a receipt can then overtake its send).
        self.next_ids: deque[str] = deque()
        self._failures: deque[Failure] = deque()
        self._runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, failure: Failure, times: int = 1) -> None:
        self._failures.extend([failure] * times)

    def reset(self) -> None:
        self.requests.clear()
        self.sent.clear()
        self.next_ids.clear()
        self._failures.clear()

    @staticmethod
    def _error(f: Failure) -> web.Response:
        err: dict[str, Any] = {
            "message": f.message,
            "type": "OAuthException",
            "code": f.code,
            "fbtrace_id": "A" + uuid.uuid4().hex[:22],
        }
        if f.subcode is not None:
            err["error_subcode"] = f.subcode
        return web.Response(
            status=f.status,
            body=orjson.dumps({"error": err}),
            content_type="application/json",
            headers=f.headers,
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
            )
        )
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if (token or request.query.get("access_token")) != self.token:
            return self._error(Failure(401, 190, None, "Invalid OAuth access token."))
        if self._failures:
            return self._error(self._failures.popleft())
        parts = request.path.strip("/").split("/")
        if len(parts) < 2:
            return self._error(Failure(400, 100, None, "Unknown path components"))
        if request.method == "DELETE" or (len(parts) == 2 and request.method == "POST"):
            return web.json_response({"success": True})
        new_id = f"{uuid.uuid4().int % 10**17:017d}"
        if parts[-1] == "messages":
            data = orjson.loads(body) if body else {}
            mid = self.next_ids.popleft() if self.next_ids else "m_" + uuid.uuid4().hex
            self.sent.append(mid)
            recipient = data.get("recipient", {})
            return web.json_response(
                {"recipient_id": recipient.get("id") or "7391846205517734", "message_id": mid}
            )
        if parts[-1] in ("comments", "replies"):
            self.sent.append(new_id)
            return web.json_response({"id": new_id})
        return self._error(Failure(400, 100, None, "Unsupported post request"))

    async def __aenter__(self) -> FakeGraph:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
