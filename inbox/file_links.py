"""Links to stored files that need no token, and how any file download is answered.

A reply's attachment is fetched by the provider (Telegram downloads the document, an
e-mail recipient clicks the link in the mail, an integration fetches it), never with an
API token, so the link itself is the permission. It is signed and expires::

    /files/{id}?exp=<unix seconds>&sig=<base64url HMAC-SHA256(key, "{id}.{exp}")>

- the key: ``OMNIROUTE_FILE_LINK_KEY`` (:attr:`config.settings.Settings.file_link_key`);
  unset, one generated once and kept in the store (crm_store/files.py ``link_key``) —
  either way the same on every process. Changing it invalidates every link given out;
- a link is made only for a caller who may read the file (inbox/access.py): a reply's
  attachment (valid :data:`REPLY_LINK_TTL`: longer than any outbox retry, and long enough
  for an e-mail recipient to open it) and an upload's answer (:data:`UPLOAD_LINK_TTL`);
- ``GET /files/{id}``: no ``exp``/``sig`` (a bare id) or a signature that does not match
  → 403 ``invalid_link``; a genuine link past ``exp`` → 410 ``link_expired``; a genuine
  one whose file is gone → 404. The signature is checked before the file is looked up,
  so a forged link learns nothing about which ids exist. The links of the old form
  ``/files/{id}/{key}`` (a per-file key that never expired) are refused the same way.

Every download (this one and ``GET /api/v1/files/{id}``) is answered by
:func:`download`: ``Content-Disposition: attachment`` with an ASCII ``filename`` and an
RFC 6266/5987 ``filename*``, the name cleaned again (records stored before names were
cleaned on upload), ``X-Content-Type-Options: nosniff``, a sandboxing
``Content-Security-Policy`` and ``Cache-Control: private, no-store``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from channels.signing import same
from config.settings import get_settings
from crm_store import files
from crm_store.store import Document, Store
from ingest.context import SERVICE, problem

log = structlog.get_logger("omniroute.files")

REPLY_LINK_TTL = timedelta(days=30)
UPLOAD_LINK_TTL = timedelta(hours=1)
MIN_KEY_CHARS = 32

DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
}
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
_EXP = re.compile(r"[0-9]{1,12}")


class Verdict(StrEnum):
    GENUINE = "genuine"
    UNSIGNED = "unsigned"  # no exp or no sig: a bare id
    FORGED = "forged"  # the signature does not match (id, exp)
    EXPIRED = "expired"  # genuine, but past exp


@dataclass(frozen=True, slots=True)
class LinkSigner:
    """Signs and checks file links with one key (pure: the time is passed in)."""

    key: bytes

    def signature(self, file_id: str, exp: int) -> str:
        mac = hmac.new(self.key, f"{file_id}.{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def path(self, file_id: str, exp: int) -> str:
        """``/files/{id}?exp=…&sig=…`` (the id is percent-encoded)."""
        query = urlencode({"exp": exp, "sig": self.signature(file_id, exp)})
        return f"/files/{quote(file_id, safe='')}?{query}"

    def check(self, file_id: str, exp: str | None, sig: str | None, now: float) -> Verdict:
        if exp is None or sig is None:
            return Verdict.UNSIGNED
        if not _EXP.fullmatch(exp):
            return Verdict.FORGED
        if not same(self.signature(file_id, int(exp)), sig):
            return Verdict.FORGED
        return Verdict.GENUINE if now <= int(exp) else Verdict.EXPIRED


@dataclass(slots=True)
class LinkKeys:
    """The app's signer, resolved on first use (the environment's key, else the store's)."""

    signer: LinkSigner | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, store: Store) -> LinkSigner:
        if self.signer is None:
            async with self.lock:
                if self.signer is None:
                    self.signer = LinkSigner(await _key(store))
        return self.signer


KEYS: web.AppKey[LinkKeys] = web.AppKey("file_link_keys", LinkKeys)


async def _key(store: Store) -> bytes:
    configured = get_settings().file_link_key
    if configured is None:
        return await files.link_key(store)
    value = configured.get_secret_value()
    if len(value) < MIN_KEY_CHARS:
        log.warning("files.link_key_short", min_chars=MIN_KEY_CHARS)
    return value.encode()


async def signed_url(request: web.Request, file_id: str, ttl: timedelta) -> str:
    """An absolute link to ``file_id`` that works without a token until ``now + ttl``.
    Give it only to a caller who may read the file."""
    signer = await request.app[KEYS].get(request.app[SERVICE].store)
    exp = int(time.time() + ttl.total_seconds())
    return f"{request.url.origin()}{signer.path(file_id, exp)}"


# --- download answers --------------------------------------------------------------


def ascii_fallback(name: str) -> str:
    """The ``filename=`` of a name: letters transliterated where Unicode can (é → e),
    anything else non-ASCII, quotes, backslashes and control characters made ``_``."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    out = re.sub(r"_+", "_", re.sub(r'[^\x20-\x7e]|["\\%]', "_", plain)).strip()
    stem, dot, ext = out.rpartition(".")
    if not dot:
        stem, ext = out, ""
    if not re.search(r"[A-Za-z0-9]", stem):
        stem = "download"
    return f"{stem}.{ext}" if ext else stem


def content_disposition(name: str) -> str:
    """``attachment; filename="<ascii>"; filename*=UTF-8''<pct-encoded>`` (RFC 6266)."""
    return (
        f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{quote(name, safe='')}"
    )


def download(meta: Document, data: bytes) -> web.Response:
    """The answer carrying a stored file's bytes (see the module doc for the headers)."""
    name = (
        files.clean_name(str(meta.get("name") or ""))
        or files.clean_name(str(meta["_id"]))
        or "download"
    )
    mime = str(meta.get("mime_type") or "")
    return web.Response(
        body=data,
        headers={
            **DOWNLOAD_HEADERS,
            "Content-Type": mime if _MIME.fullmatch(mime) else "application/octet-stream",
            "Content-Disposition": content_disposition(name),
        },
    )


# --- GET /files/{id} ---------------------------------------------------------------


def _refused(status: int, code: str, detail: str) -> web.Response:
    resp = problem(status, code, detail)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def public_file(request: web.Request) -> web.StreamResponse:
    """``GET /files/{id}?exp=…&sig=…``: a file through a signed link (no token)."""
    svc = request.app[SERVICE]
    file_id = request.match_info["id"]
    try:
        signer = await request.app[KEYS].get(svc.store)
        verdict = signer.check(
            file_id, request.query.get("exp"), request.query.get("sig"), time.time()
        )
        if verdict is Verdict.EXPIRED:
            return _refused(410, "link_expired", "this file link has expired; ask for a new one")
        if verdict is not Verdict.GENUINE:
            return _refused(403, "invalid_link", "a file link needs a valid exp and sig")
        meta = await svc.store["files"].find_one({"_id": file_id})
        data = None if meta is None else await files.read(svc.store, file_id)
    except PyMongoError as exc:
        log.warning("files.store_unavailable", error=type(exc).__name__)
        resp = _refused(503, "store_unavailable", "the store did not answer; retry later")
        resp.headers["Retry-After"] = "2"
        return resp
    if meta is None or data is None:
        return _refused(404, "not_found", "the file of this link is no longer stored")
    return download(meta, data)


async def retired_link(_: web.Request) -> web.StreamResponse:
    """``GET /files/{id}/{key}``: the unsigned, never-expiring links of old: refused."""
    return _refused(403, "invalid_link", "a file link needs a valid exp and sig")


def setup(app: web.Application) -> None:
    app[KEYS] = LinkKeys()
    app.router.add_get("/files/{id}", public_file)
    app.router.add_get("/files/{id}/{key}", retired_link)
