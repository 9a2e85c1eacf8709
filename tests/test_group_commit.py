"""Group commit of intake: concurrent requests share writes, each gets its own answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import monitoring
from pymongo.errors import PyMongoError

from crm_store.documents import intake_id
from crm_store.intake import GroupCommit
from crm_store.store import Store
from tests.helpers import free_port


class Inserts(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def doc(provider_id: str) -> dict[str, Any]:
    return {
        "_id": intake_id("api", "site", provider_id),
        "channel": "api",
        "account": "site",
        "provider_id": provider_id,
        "source_id": "site",
        "message": {},
        "received_at": datetime.now(UTC),
    }


async def test_concurrent_requests_share_writes_and_get_their_own_outcome(
    mongo_uri: str, db_name: str
) -> None:
    listener = Inserts()
    store = Store.open(mongo_uri, db_name, event_listeners=[listener])
    try:
        writer = GroupCommit(store, "owner-1", 30.0)
        # 40 requests of one message each, 10 requests of a message already sent by
        # another request of the same burst, and one request carrying two messages.
        requests = [[doc(f"m-{i}")] for i in range(40)]
        requests += [[doc("dup")] for _ in range(10)]
        requests.append([doc("pair-1"), doc("pair-2")])
        results = await asyncio.gather(*(writer.accept(r) for r in requests))

        for r, res in zip(requests[:40], results[:40], strict=True):
            assert [d.id for d in res.new] == [r[0]["_id"]]
            assert res.duplicates == []
        dup_new = [res for res in results[40:50] if res.new]
        assert len(dup_new) == 1
        assert sum(len(res.duplicates) for res in results[40:50]) == 9
        assert len(results[50].new) == 2
        assert await store.intake.count_documents({}) == 43
        assert listener.count < len(requests)  # shared writes, not one per request
    finally:
        await store.close()


async def test_an_unreachable_store_fails_every_waiting_request() -> None:
    store = Store.open(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x", timeout_ms=300
    )
    try:
        writer = GroupCommit(store, "owner-1", 30.0)
        results = await asyncio.gather(
            *(writer.accept([doc(f"m-{i}")]) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, PyMongoError) for r in results), results
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1, 3])
async def test_a_lone_request_is_written_at_once(mongo_uri: str, db_name: str, size: int) -> None:
    store = Store.open(mongo_uri, db_name)
    try:
        writer = GroupCommit(store, "owner-1", 30.0)
        res = await writer.accept([doc(f"solo-{i}") for i in range(size)])
        assert len(res.new) == size
        again = await writer.accept([doc(f"solo-{i}") for i in range(size)])
        assert again.new == []
        assert len(again.duplicates) == size
    finally:
        await store.close()
