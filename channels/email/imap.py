"""A thin, typed layer over aioimaplib: connect, select, UID search and fetch.

aioimaplib answers every command with ``Response(result, lines)``; fetch results put the
literal (the message) in a ``bytearray`` line between ``bytes`` lines that carry the data
items. Servers differ in where they put ``UID`` (before the literal or after it), so both
places are read. Every failure — a refused login, a ``NO``/``BAD``, a timeout, a dropped
connection — becomes :class:`ImapError` (or the socket's ``OSError``/``TimeoutError``) so
the poller has one thing to back off on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import sys
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import aioimaplib

UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
UID_ITEM = re.compile(rb"\bUID (\d+)")
SIZE_ITEM = re.compile(rb"\bRFC822\.SIZE (\d+)")
FETCH_START = re.compile(rb"^\d+ FETCH \(")


# aioimaplib parses a received buffer recursively, one frame per response line; a large
# batch of short lines (``UID FETCH n:m (UID RFC822.SIZE)``) in one read goes deeper than
# Python's default limit of 1000. Batches are bounded to stay far below it (SIZE_CHUNK,
# HEADER_CHUNK, MailboxSettings.fetch_batch ≤ 200) and the limit is raised as a margin.
SIZE_CHUNK = 200
HEADER_CHUNK = 100
RECURSION_FLOOR = 10_000
DONE_TIMEOUT_S = 5.0


class ImapError(Exception):
    """The server refused a command or the session broke."""


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    data: bytes


def _check(resp: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if resp.result != "OK":
        detail = b" ".join(bytes(x) for x in resp.lines[-1:]).decode("utf-8", "replace")
        raise ImapError(f"{what}: {resp.result} {detail}".strip())
    return resp


class ImapSession:
    """One logged-in connection with one selected folder."""

    def __init__(self, client: aioimaplib.IMAP4, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.uidvalidity = 0
        self.lost = asyncio.Event()
        client.protocol.conn_lost_cb = lambda _exc: self.lost.set()

    async def _do(self, what: str, aw: Awaitable[aioimaplib.Response]) -> aioimaplib.Response:
        """One command, bounded by the session timeout, its failure as ImapError."""
        if self.lost.is_set():
            raise ImapError(f"{what}: connection lost")
        try:
            resp = await asyncio.wait_for(aw, self.timeout_s)
        except TimeoutError:
            raise ImapError(f"{what}: no answer within {self.timeout_s} s") from None
        except aioimaplib.AioImapException as exc:
            raise ImapError(f"{what}: {type(exc).__name__}: {exc}") from None
        return _check(resp, what)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        tls: bool,
        verify: bool,
        user: str,
        password: str,
        timeout_s: float,
    ) -> ImapSession:
        client: aioimaplib.IMAP4
        if tls:
            ctx = ssl.create_default_context()
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            client = aioimaplib.IMAP4_SSL(host=host, port=port, timeout=timeout_s, ssl_context=ctx)
        else:
            client = aioimaplib.IMAP4(host=host, port=port, timeout=timeout_s)
        if sys.getrecursionlimit() < RECURSION_FLOOR:
            sys.setrecursionlimit(RECURSION_FLOOR)
        session = cls(client, timeout_s)
        try:
            await asyncio.wait_for(client.wait_hello_from_server(), timeout_s)
            await session._do("LOGIN", client.login(user, password))
        except BaseException:
            await session.close()
            raise
        return session

    @property
    def can_idle(self) -> bool:
        return bool(self.client.has_capability("IDLE"))

    async def select(self, folder: str) -> int:
        """Select ``folder`` and return its UIDVALIDITY."""
        resp = await self._do(f"SELECT {folder}", self.client.select(_quote(folder)))
        for line in resp.lines:
            if m := UIDVALIDITY.search(bytes(line)):
                self.uidvalidity = int(m.group(1))
                return self.uidvalidity
        raise ImapError(f"SELECT {folder}: the server sent no UIDVALIDITY")

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs greater than ``last_uid`` (``n:*`` always includes the highest UID, even
        below n: it is filtered out here)."""
        resp = await self._do("UID SEARCH", self.client.uid_search("UID", f"{last_uid + 1}:*"))
        return [u for u in _search_uids(resp.lines) if u > last_uid]

    async def all_uids(self) -> list[int]:
        resp = await self._do("UID SEARCH ALL", self.client.uid_search("ALL"))
        return _search_uids(resp.lines)

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        resp = await self._do(
            "UID FETCH SIZE", self.client.uid("fetch", uid_set(uids), "(UID RFC822.SIZE)")
        )
        out: dict[int, int] = {}
        for line in resp.lines:
            raw = bytes(line)
            u, s = UID_ITEM.search(raw), SIZE_ITEM.search(raw)
            if u and s:
                out[int(u.group(1))] = int(s.group(1))
        return out

    async def fetch(self, uids: list[int], item: str = "BODY.PEEK[]") -> list[Fetched]:
        """The literal of ``item`` for each UID (default: the whole message, without
        setting \\Seen), in UID order."""
        resp = _check(await self.client.uid("fetch", uid_set(uids), f"(UID {item})"), "UID FETCH")
        return sorted(_fetched(resp.lines), key=lambda f: f.uid)

    async def mark_seen(self, uids: list[int]) -> None:
        await self._do(
            "UID STORE", self.client.uid("store", uid_set(uids), "+FLAGS.SILENT", r"(\Seen)")
        )

    async def append(self, raw: bytes, folder: str, flags: str = r"(\Seen)") -> None:
        await self._do("APPEND", self.client.append(raw, mailbox=_quote(folder), flags=flags))

    async def wait_for_news(self, timeout_s: float) -> bool:
        """IDLE until the server reports a change or ``timeout_s`` passes; True when
        something was pushed (new mail, expunge, flags). A dropped connection ends the
        wait at once (ImapError)."""
        try:
            idle = await asyncio.wait_for(self.client.idle_start(timeout=timeout_s), self.timeout_s)
        except (TimeoutError, aioimaplib.AioImapException) as exc:
            raise ImapError(f"IDLE: {type(exc).__name__}: {exc}") from None
        pushed = False
        lost = asyncio.ensure_future(self.lost.wait())
        push: asyncio.Future[Any] | None = None
        try:
            while True:
                push = asyncio.ensure_future(self.client.wait_server_push(timeout=timeout_s + 5))
                done, _ = await asyncio.wait({push, lost}, return_when=asyncio.FIRST_COMPLETED)
                if lost in done:
                    push.cancel()
                    raise ImapError("IDLE: connection lost")
                try:
                    lines = push.result()
                except TimeoutError:
                    break
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(not bytes(x).startswith(b"OK") for x in lines):
                    pushed = True
                    break
        finally:
            lost.cancel()
            if push is not None and not push.done():
                push.cancel()
            if push is not None:
                # Never leave its outcome (a timeout after we stopped waiting) unretrieved.
                push.add_done_callback(_consume)
            if not self.lost.is_set():
                self.client.idle_done()
                # A live server answers DONE at once; silence means the connection is dead
                # (a server that vanished without closing it): give up on it now.
                try:
                    await asyncio.wait_for(idle, min(self.timeout_s, DONE_TIMEOUT_S))
                except (TimeoutError, aioimaplib.AioImapException) as exc:
                    raise ImapError(f"IDLE DONE: {type(exc).__name__}: {exc}") from None
        return pushed

    async def noop(self) -> None:
        await self._do("NOOP", self.client.noop())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client.get_state() in ("AUTH", "SELECTED"):
                await self.client.logout()
        with contextlib.suppress(Exception):
            transport = self.client.protocol.transport
            if transport is not None:
                transport.close()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _quote(folder: str) -> str:
    if folder.isascii() and re.fullmatch(r"[A-Za-z0-9_./-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _search_uids(lines: Iterable[bytes | bytearray]) -> list[int]:
    out: list[int] = []
    for line in lines:
        raw = bytes(line)
        if raw.startswith(b"SEARCH"):
            raw = raw[6:]
        elif not raw[:1].isdigit():
            continue
        out.extend(int(tok) for tok in raw.split() if tok.isdigit())
    return sorted(set(out))


def _fetched(lines: Iterable[bytes | bytearray]) -> list[Fetched]:
    out: list[Fetched] = []
    uid: int | None = None
    data: bytes | None = None

    def flush() -> None:
        if uid is not None and data is not None:
            out.append(Fetched(uid, data))

    for line in lines:
        if isinstance(line, bytearray):
            data = bytes(line)
            continue
        if FETCH_START.match(line):
            flush()
            uid, data = None, None
        if uid is None and (m := UID_ITEM.search(line)):
            uid = int(m.group(1))
    flush()
    return out


def uid_set(uids: Iterable[int]) -> str:
    """``1,2,3,7,9,10`` → ``1:3,7,9:10`` (short command lines for big batches)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)
