"""Request limits of the HTTP side: body size, body read time, concurrent body reads,
and the settings the handlers need about proxies and /metrics (docs/security.md).

A slow or stalled sender holds at most one of ``max_body_reads`` read slots and for at
most ``body_timeout_s``; more concurrent bodies are answered 503 with ``Retry-After``
before anything of theirs is read, so a flood of stalled uploads cannot grow the
process beyond ``max_body_reads`` bodies of the account's size limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from config.settings import Settings
from ingest.client_address import IPNetwork, networks
from ingest.memory import Trimmer

RETRY_AFTER_S = 1
CHUNK = 65536


class BodyTooLarge(Exception):
    """The body is over the limit (413)."""


class BodyTimeout(Exception):
    """The body did not arrive in full within the read timeout (408)."""


class BodyReads:
    """A non-blocking semaphore: a read slot now, or none (the caller answers 503).
    After requests were cut short, the heap is trimmed once reads are idle
    (ingest/memory.py)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.trimmer = Trimmer()

    def aborted(self) -> None:
        self.trimmer.aborted()
        if self.active == 0:
            self.trimmer.idle()

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.trimmer.idle()


@dataclass(slots=True)
class HttpPolicy:
    """What the handlers need from :class:`Settings` about requests."""

    trusted_proxies: tuple[IPNetwork, ...] = ()
    body_timeout_s: float = 30.0
    max_body_reads: int = 64
    metrics_token: str | None = None
    # /metrics served on a separate listener only (Settings.metrics_port).
    metrics_separate: bool = False
    reads: BodyReads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = BodyReads(self.max_body_reads)

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpPolicy:
        return cls(
            trusted_proxies=networks(settings.trusted_proxies),
            body_timeout_s=settings.body_timeout_s,
            max_body_reads=settings.max_body_reads,
            metrics_token=settings.metrics_token,
            metrics_separate=settings.metrics_port is not None,
        )


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The raw body, read within ``timeout_s`` in all; :class:`BodyTooLarge` when it
    exceeds ``limit`` bytes (declared or sent), :class:`BodyTimeout` when it is late."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout from None
    return b"".join(chunks)
