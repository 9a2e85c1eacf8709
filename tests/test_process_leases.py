"""One lease per process (crm_store/process_leases.py): a live process's records are never
taken over, however long they wait, and nobody renews them one by one; a dead process's
records are claimed exactly once, ahead of a live process's long backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio

from crm_store import intake, process_leases
from crm_store.documents import IntakeDoc, intake_id
from crm_store.store import Document, Store


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo_uri: str, db_name: str) -> AsyncIterator[Store]:
    s = Store.open(mongo_uri, db_name)
    await s.ensure_indexes()
    try:
        yield s
    finally:
        await s.close()


def intake_doc(provider_id: str) -> Document:
    return {
        "_id": intake_id("api", "site", provider_id),
        "channel": "api",
        "account": "site",
        "provider_id": provider_id,
        "source_id": "site",
        "message": {
            "channel": "api",
            "account": "site",
            "provider_id": provider_id,
            "sender": {"phone": "+79001234567"},
            "text": "hello",
        },
        "received_at": datetime.now(UTC),
    }


def ids(prefix: str, n: int) -> list[str]:
    return [intake_id("api", "site", f"{prefix}-{i:03d}") for i in range(n)]


async def sweep(store: Store, me: str, queued: set[str], limit: int) -> list[IntakeDoc]:
    """One recovery round as ingest/worker.py runs it."""
    live, dead = await process_leases.owners(store)
    for gone in dead:
        if gone != me:
            await process_leases.orphan(store, gone)
    return await process_leases.claim_orphaned(store, me, 300, limit, queued, live | {me})


async def test_live_owner_keeps_its_backlog_and_a_dead_one_loses_it_once(store: Store) -> None:
    # "busy" is alive with a backlog of 30 records whose own leases ran out long ago (a
    # long queue); "dead" died with 12 records.
    await process_leases.heartbeat(store, "busy", 300)
    await intake.accept(store, [intake_doc(f"b-{i:03d}") for i in range(30)], "busy", -60)
    await process_leases.heartbeat(store, "dead", -1)  # its lease ran out
    await intake.accept(store, [intake_doc(f"d-{i:03d}") for i in range(12)], "dead", 300)
    busy_before: dict[str, Any] = {
        d["_id"]: d["lease_until"] async for d in store.intake.find({"owner": "busy"})
    }

    # Three claimers at once, each taking at most 4 per round (the scan looks at 16):
    # the dead process's records come first although 30 expired live ones are older.
    claimers = ("c1", "c2", "c3")
    for c in claimers:
        await process_leases.heartbeat(store, c, 300)

    async def claimer(me: str) -> list[str]:
        mine: list[str] = []
        while claimed := await sweep(store, me, set(), 4):
            mine += [d.id for d in claimed]
            await asyncio.sleep(0)
        return mine

    results = await asyncio.gather(*(claimer(c) for c in claimers))
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == sorted(ids("d", 12))  # each once, none of busy's
    # The live process's records: untouched — no takeover, no renewal either.
    busy_after = {d["_id"]: d["lease_until"] async for d in store.intake.find({"owner": "busy"})}
    assert busy_after == busy_before
    # The dead process's lease is forgotten once its records are handed back.
    assert await store["leases"].find_one({"_id": process_leases.lease_id("dead")}) is None

    # When "busy" dies too (its lease released at shutdown), its records are claimed.
    await store["leases"].update_one(
        {"_id": process_leases.lease_id("busy")}, {"$set": {"until": process_leases.EPOCH}}
    )
    taken = await sweep(store, "c1", set(), 100)
    assert sorted(d.id for d in taken) == sorted(ids("b", 30))


async def test_own_records_are_claimed_only_when_not_queued(store: Store) -> None:
    await process_leases.heartbeat(store, "me", 300)
    await intake.accept(store, [intake_doc(f"m-{i:03d}") for i in range(4)], "me", -60)
    # "old": a process without a process lease (an older version) whose record leases
    # ran out — claimable as before; a failed attempt (no owner) too.
    await intake.accept(store, [intake_doc(f"o-{i:03d}") for i in range(3)], "old", -60)
    await intake.accept(store, [intake_doc("f-000")], "me", 300)
    await intake.mark_attempt_failed(store, ids("f", 1)[0], "boom")
    queued = set(ids("m", 4)[:2])
    claimed = await sweep(store, "me", queued, 10)
    # A record of ours in no queue (its request failed after the write) is routed again.
    assert sorted(d.id for d in claimed) == sorted(ids("m", 4)[2:] + ids("o", 3) + ids("f", 1))
