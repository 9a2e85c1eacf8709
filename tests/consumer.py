"""A local webhook consumer for the delivery tests: an aiohttp app on a free port that
records every request (headers, raw body, arrival time) and answers as a script says.

The script is a function of the request (and how often this event id has been seen,
counting this request) returning a :class:`Reply`: a status, optionally after a delay. A
delay longer than the sender's timeout emulates a hanging consumer; the sender gives up,
so such a request never counts as accepted (:meth:`Consumer.accepted`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.helpers import free_port, wait_for


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    delay: float = 0.0


OK = Reply()


@dataclass(slots=True)
class Received:
    """One request as the consumer saw it."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    headers: dict[str, str]
    body: bytes
    reply: Reply = OK
    answered_at: float | None = None  # monotonic; None while the reply is pending

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data

    @property
    def event_id(self) -> str:
        return self.headers.get("X-Omniroute-Event-Id", "")

    @property
    def seq(self) -> int:
        return int(self.json["sequence"])


Script = Callable[[Received, int], Reply]


def always(reply: Reply) -> Script:
    return lambda _r, _n: reply


@dataclass
class Consumer:
    """Start with ``await c.start()`` (or ``async with c``); ``c.url`` is where to POST."""

    script: Script = field(default_factory=lambda: always(OK))
    # A reply slower than this is one the sender has given up on (its timeout).
    timeout_s: float = float("inf")
    path: str = "/hook"
    requests: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _seen: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        rec = Received(time.monotonic(), time.time(), dict(request.headers), body)
        self.requests.append(rec)
        self._seen[rec.event_id] += 1
        rec.reply = self.script(rec, self._seen[rec.event_id])
        if rec.reply.delay:
            await asyncio.sleep(rec.reply.delay)
        rec.answered_at = time.monotonic()
        return web.Response(status=rec.reply.status, text="ok")

    async def start(self) -> Consumer:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Consumer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ views

    def accepted(self) -> list[Received]:
        """Requests answered 2xx in time: the deliveries the sender saw succeed."""
        return [
            r
            for r in self.requests
            if 200 <= r.reply.status < 300 and r.reply.delay < self.timeout_s
        ]

    def accepted_seqs(self) -> list[int]:
        return [r.seq for r in self.accepted()]

    def seen_ids(self) -> set[str]:
        return {r.event_id for r in self.requests}

    async def wait_accepted(self, ids: set[str], timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Until every event id in ``ids`` has been accepted at least once."""

        def missing() -> set[str]:
            return ids - {r.event_id for r in self.accepted()}

        async def done() -> bool:
            return not missing()

        try:
            await wait_for(done, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"{len(missing())} of {len(ids)} events not accepted within {timeout}s"
            ) from None
