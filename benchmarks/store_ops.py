"""What each kind of store write costs: ``python -m benchmarks.store_ops``.

A micro-benchmark beside the main one: on a fresh file-backed embedded store (as
``make bench`` uses), it runs the write shapes routing and ingest use, in batches of B
documents, and prints the store's CPU time per document and the wall time per batch. It
answers "which write should I remove or batch first?" — on this store an ``insert_one``
per document costs several times an ``insert_many`` slot, and updates cost more than
inserts — and every secondary index adds to each document written, inserted or updated.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, IndexModel, UpdateOne

from benchmarks.run import cpu_seconds_of
from crm_store.embedded import EmbeddedStore
from crm_store.store import Collection, Document, Store

NOW = datetime.now(UTC)
MESSAGE: Document = {
    "direction": "in",
    "channel": "api",
    "account": "site",
    "provider_id": "x",
    "source_id": "site",
    "conversation_id": "c",
    "contact_id": "k",
    "target": {"kind": "lead", "id": "l", "open": True},
    "sender": {"phone": "+79001234567", "name": "Customer"},
    "identities": ["phone:+79001234567"],
    "text": "t" * 400,
    "attachments": [],
    "received_at": NOW,
    "routed_at": NOW,
    "automatic": False,
    "decision": {"rule": "conversation", "action": "attach_lead", "reason": "r"},
}
INTAKE: Document = {
    "channel": "api",
    "account": "site",
    "provider_id": "p",
    "source_id": "site",
    "message": {"text": "t" * 400, "sender": {"phone": "+79001234567"}},
    "raw": b"x" * 530,
    "received_at": NOW,
    "status": "pending",
    "owner": "o",
    "lease_until": NOW,
    "attempts": 0,
}


async def measure(
    store_pid: int | None, name: str, rounds: int, batch: int, fn: Callable[[int], Awaitable[Any]]
) -> dict[str, Any]:
    cpu0 = cpu_seconds_of(store_pid)
    t0 = time.monotonic()
    for r in range(rounds):
        await fn(r)
    wall = time.monotonic() - t0
    cpu = cpu_seconds_of(store_pid) - cpu0
    row = {
        "op": name,
        "store_cpu_ms_per_doc": round(cpu * 1000 / (rounds * batch), 2),
        "wall_ms_per_batch": round(wall * 1000 / rounds, 1),
    }
    print(f"  {name:<44}{row['store_cpu_ms_per_doc']:>7.2f}{row['wall_ms_per_batch']:>12.1f}")
    return row


INDEXED = ["conversation_id", "contact_id", "provider_id", "received_at", "routed_at", "channel"]


async def per_index(s: Store, pid: int | None, batch: int, rounds: int) -> None:
    """What each secondary index adds: the same messages inserted into, and one unindexed
    field updated in, collections with 0, 2, 4 and 6 indexes besides ``_id``."""
    print("  each index costs every write, even one that does not touch its field:")
    for n in (0, 2, 4, 6):
        coll = s[f"indexes_{n}"]
        if n:
            await coll.create_indexes([IndexModel([(f, ASCENDING)], name=f) for f in INDEXED[:n]])

        async def insert(r: int, coll: Collection = coll) -> None:
            await coll.insert_many(
                [{**MESSAGE, "_id": f"m{r}-{i}", "conversation_id": f"c{i}"} for i in range(batch)]
            )

        async def update(r: int, coll: Collection = coll) -> None:
            ids = [f"m{r}-{i}" for i in range(batch)]
            await coll.update_many({"_id": {"$in": ids}}, {"$set": {"status": "seen"}})

        await measure(pid, f"insert_many messages, {n} indexes", rounds, batch, insert)
        await measure(pid, f"update_many unindexed field, {n} indexes", rounds, batch, update)


async def main_async(batch: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="omniroute-storeops-") as tmp:
        embedded = EmbeddedStore(storage_path=Path(tmp) / "mongo")
        await embedded.start()
        s = Store.open(embedded.uri, "store_ops")
        try:
            await s.ensure_indexes()
            b = range(batch)
            await s.conversations.insert_many(
                [{"_id": f"c{i}", "status": "open", "last_message_at": NOW} for i in b]
            )

            def conv_update(r: int) -> Document:
                return {
                    "$max": {"last_message_at": NOW + timedelta(seconds=r)},
                    "$inc": {"message_count": 1, "unread": 1},
                }

            async def intake_one(r: int) -> None:
                for i in b:
                    await s.intake.insert_one({**INTAKE, "_id": f"one-{r}-{i}"})

            async def intake_many(r: int) -> None:
                await s.intake.insert_many([{**INTAKE, "_id": f"i{r}-{i}"} for i in b])

            async def mark_routed(r: int) -> None:
                await s.intake.update_many(
                    {"_id": {"$in": [f"i{r}-{i}" for i in b]}},
                    {"$set": {"status": "routed"}, "$unset": {"lease_until": "", "owner": ""}},
                )

            async def delete_intake(r: int) -> None:
                await s.intake.delete_many({"_id": {"$in": [f"i{r}-{i}" for i in b]}})

            async def messages(r: int) -> None:
                await s.messages.insert_many([{**MESSAGE, "_id": f"m{r}-{i}"} for i in b])

            async def events(r: int) -> None:
                await s.events.insert_many(
                    [
                        {"_id": f"e{r}-{i}", "seq": r * 100_000 + i, "type": "message.attached"}
                        for i in b
                    ]
                )

            async def conv_upserts(r: int) -> None:
                await s.conversations.bulk_write(
                    [UpdateOne({"_id": f"c{i}"}, conv_update(r), upsert=True) for i in b]
                )

            async def conv_update_many(r: int) -> None:
                await s.conversations.update_many(
                    {"_id": {"$in": [f"c{i}" for i in b]}}, conv_update(r)
                )

            async def conv_find(r: int) -> None:
                _ = [d async for d in s.conversations.find({"_id": {"$in": [f"c{i}" for i in b]}})]

            print(f"batch {batch}, {rounds} rounds each")
            print(f"  {'write shape':<44}{'CPU ms/doc':>10}{'ms/batch':>10}")
            pid = embedded.pid
            await measure(
                pid, "insert_one intake ×B (the ack path today)", rounds, batch, intake_one
            )
            await measure(pid, "insert_many intake", rounds, batch, intake_many)
            await measure(pid, "update_many intake → routed ($in)", rounds, batch, mark_routed)
            await measure(pid, "delete_many intake ($in)", rounds, batch, delete_intake)
            await measure(pid, "insert_many messages", rounds, batch, messages)
            await measure(pid, "insert_many events", rounds, batch, events)
            await measure(
                pid, "bulk_write UpdateOne upsert conversations", rounds, batch, conv_upserts
            )
            await measure(pid, "update_many conversations ($in)", rounds, batch, conv_update_many)
            await measure(pid, "find conversations ($in)", rounds, batch, conv_find)
            await per_index(s, pid, batch, rounds)
        finally:
            await s.close()
            await embedded.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store_ops", description=__doc__)
    p.add_argument("--batch", type=int, default=45, help="documents per write (B)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    asyncio.run(main_async(args.batch, args.rounds))


if __name__ == "__main__":
    main()
