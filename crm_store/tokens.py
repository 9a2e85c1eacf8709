"""API tokens: issued once, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from crm_store.store import Document, Store

PREFIX = "omr_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(store: Store, user_id: str, name: str = "") -> tuple[str, Document]:
    """A new token for ``user_id``: returns the token (shown once) and its record."""
    token = PREFIX + secrets.token_urlsafe(32)
    doc: Document = {
        "_id": token_hash(token),
        "token_id": secrets.token_hex(6),
        "user_id": user_id,
        "name": name,
        "created_at": datetime.now(UTC),
        "revoked_at": None,
    }
    await store.db["api_tokens"].insert_one(doc)
    return token, doc


async def lookup(store: Store, token: str) -> Document | None:
    """The active record of a presented token, or None."""
    if not token.startswith(PREFIX):
        return None
    return await store.db["api_tokens"].find_one({"_id": token_hash(token), "revoked_at": None})


async def revoke(store: Store, token_id: str) -> bool:
    result = await store.db["api_tokens"].update_one(
        {"token_id": token_id, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(UTC)}}
    )
    return result.modified_count == 1


async def list_tokens(store: Store, user_id: str | None = None) -> list[Document]:
    query = {"user_id": user_id} if user_id else {}
    return [d async for d in store.db["api_tokens"].find(query, {"_id": 0})]
