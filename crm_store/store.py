"""The connection to MongoDB and the collections, shared by every write path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

from crm_store.indexes import ensure_indexes

Document = dict[str, Any]
Collection = AsyncCollection[Document]

# Nothing is acknowledged to a provider before it is durable: majority + journal.
DURABLE = WriteConcern(w="majority", j=True)

# Errors that mean "the store is not reachable right now": answer 503, retry later.
UNAVAILABLE: tuple[type[PyMongoError], ...] = (ConnectionFailure, ServerSelectionTimeoutError)


def connect(uri: str, *, timeout_ms: int = 2000, **kwargs: Any) -> AsyncMongoClient[Document]:
    """A client that fails fast (``timeout_ms``) when the store is away, so callers can
    answer 503 instead of hanging."""
    return AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
        **kwargs,
    )


@dataclass(slots=True)
class Store:
    client: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]

    @classmethod
    def open(cls, uri: str, db_name: str, **kwargs: Any) -> Store:
        client = connect(uri, **kwargs)
        return cls(client, client.get_database(db_name, write_concern=DURABLE))

    def __getitem__(self, name: str) -> Collection:
        return self.db[name]

    @property
    def intake(self) -> Collection:
        return self.db["intake"]

    @property
    def contacts(self) -> Collection:
        return self.db["contacts"]

    @property
    def leads(self) -> Collection:
        return self.db["leads"]

    @property
    def deals(self) -> Collection:
        return self.db["deals"]

    @property
    def conversations(self) -> Collection:
        return self.db["conversations"]

    @property
    def messages(self) -> Collection:
        return self.db["messages"]

    @property
    def events(self) -> Collection:
        return self.db["events"]

    @property
    def counters(self) -> Collection:
        return self.db["counters"]

    async def ensure_indexes(self) -> dict[str, list[str]]:
        return await ensure_indexes(self.db)

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()


async def claim(
    coll: Collection,
    due: Document,
    take: Document,
    held: Document,
    limit: int,
    projection: Document | None = None,
    hint: str | None = None,
) -> list[Document]:
    """The portable claim (docs/store.md): find up to ``limit`` documents matching ``due``,
    ``$set`` ``take`` (owner token, lease) on those that still match, then read back the
    ones that match ``held`` — ours. Exactly-once per document on MongoDB and the
    embedded server alike, without find-and-modify. ``hint``: the index that answers
    ``due`` (the embedded server never picks a partial index by itself)."""
    ids = [d["_id"] async for d in coll.find(due, {"_id": 1}, limit=limit, hint=hint)]
    if not ids:
        return []
    await coll.update_many({"_id": {"$in": ids}, **due}, {"$set": take})
    return [d async for d in coll.find({"_id": {"$in": ids}, **held}, projection)]


async def together(*calls: Awaitable[Any]) -> list[Any]:
    """Store calls at once (their round trips overlap), in order of ``calls``. Every call
    runs to its end — none is left running unobserved — then the first error is raised."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes
