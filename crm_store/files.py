"""Stored files: e-mail attachments and raw mails too big to keep inline.

A ``files`` document holds the metadata (name, type, size, sha256, where it came from);
the bytes live in ``file_chunks`` as numbered chunks of at most ``CHUNK`` bytes (a
GridFS-like layout, well under the 16 MB document limit). Ids are deterministic (derived
from the intake record and the part's position), and every write is an upsert by ``_id``,
so storing the same mail again — a re-fetch after a crash — rewrites the same documents
instead of adding new ones. The metadata document is written last: a file whose metadata
exists is complete.

Names are cleaned before they are stored (:func:`clean_name`): a name comes from a
customer's mail or an operator's upload and ends up in an HTTP header and on a disk.

The key that signs file links (inbox/file_links.py) lives here too when the environment
does not set one: generated once, kept in ``service_keys``, shared by every process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import ReplaceOne
from pymongo.errors import DuplicateKeyError

from crm_store.store import Document, Store

CHUNK = 4 * 1024 * 1024
MAX_NAME = 255

# Invisible characters that reorder or hide text: "invoice\u202efdp.exe" shows as
# "invoiceexe.pdf".
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("/\\")


def clean_name(name: str | None) -> str | None:
    """A file name fit for a header and a disk: control characters (CR, LF, NUL, …),
    line separators, bidirectional overrides and lone surrogates removed (whitespace ones
    become a space), path separators made ``_``, at most :data:`MAX_NAME` characters;
    None when nothing is left."""
    if not name:
        return None
    out: list[str] = []
    for c in name:
        category = unicodedata.category(c)
        if c in _SEPARATORS:
            out.append("_")
        elif category in ("Cc", "Zl", "Zp"):
            if c.isspace():
                out.append(" ")
        elif category == "Cs" or c in _BIDI:
            continue
        else:
            out.append(c)
    cleaned = "".join(out).strip()[:MAX_NAME].strip()
    return cleaned or None


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    name: str | None
    mime_type: str
    size: int
    sha256: str
    stored: bool  # False: over the size limit, only the metadata is kept

    def meta(self) -> Document:
        return {
            "file_id": self.id,
            "name": self.name,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256": self.sha256,
            "stored": self.stored,
        }


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file to store: its deterministic id, bytes and metadata."""

    id: str
    data: bytes
    name: str | None
    mime_type: str
    origin: Document


async def put_many(store: Store, items: Sequence[NewFile], *, max_bytes: int) -> list[StoredFile]:
    """Store files (idempotent, two bulk writes for any number of them); a file over
    ``max_bytes`` keeps only its metadata."""
    chunk_ops: list[ReplaceOne[Document]] = []
    meta_ops: list[ReplaceOne[Document]] = []
    out: list[StoredFile] = []
    at = datetime.now(UTC)
    for item in items:
        data = item.data
        stored = len(data) <= max_bytes
        if stored:
            chunk_ops += [
                ReplaceOne(
                    {"_id": f"{item.id}:{n}"},
                    {"file_id": item.id, "n": n, "data": data[off : off + CHUNK]},
                    upsert=True,
                )
                for n, off in enumerate(range(0, len(data), CHUNK))
            ]
        f = StoredFile(
            item.id,
            clean_name(item.name),
            item.mime_type,
            len(data),
            hashlib.sha256(data).hexdigest(),
            stored,
        )
        doc: Document = {
            **f.meta(),
            "chunks": (len(data) + CHUNK - 1) // CHUNK if stored else 0,
            "origin": item.origin,
            "created_at": at,
        }
        del doc["file_id"]
        meta_ops.append(ReplaceOne({"_id": item.id}, doc, upsert=True))
        out.append(f)
    # The bytes first: a file whose metadata exists is complete.
    if chunk_ops:
        await store["file_chunks"].bulk_write(chunk_ops, ordered=False)
    if meta_ops:
        await store["files"].bulk_write(meta_ops, ordered=False)
    return out


async def put(
    store: Store,
    file_id: str,
    data: bytes,
    *,
    name: str | None,
    mime_type: str,
    origin: Document,
    max_bytes: int,
) -> StoredFile:
    """Store one file (see :func:`put_many`)."""
    [f] = await put_many(
        store, [NewFile(file_id, data, name, mime_type, origin)], max_bytes=max_bytes
    )
    return f


async def read(store: Store, file_id: str) -> bytes | None:
    """The file's bytes; None when unknown or not stored (over the limit)."""
    meta = await store["files"].find_one({"_id": file_id})
    if meta is None or not meta.get("stored"):
        return None
    parts: list[bytes] = []
    async for chunk in store["file_chunks"].find({"file_id": file_id}).sort("n", 1):
        parts.append(bytes(chunk["data"]))
    data = b"".join(parts)
    return data if len(data) == meta["size"] else None


LINK_KEY_ID = "file_links"


async def link_key(store: Store) -> bytes:
    """The stored key that signs file links: read, or generated once (the first process
    to write it wins; every other reads that one)."""
    keys = store["service_keys"]
    doc = await keys.find_one({"_id": LINK_KEY_ID})
    if doc is None:
        fresh = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        with contextlib.suppress(DuplicateKeyError):  # another process stored one first
            await keys.insert_one(
                {"_id": LINK_KEY_ID, "key": fresh, "created_at": datetime.now(UTC)}
            )
        doc = await keys.find_one({"_id": LINK_KEY_ID})
    if doc is None or not isinstance(doc.get("key"), str):
        raise RuntimeError("the file link key could not be stored")
    return base64.urlsafe_b64decode(doc["key"])
