"""The embedded store launcher (crm_store.embedded) and the guarantees we rely on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from crm_store import embedded
from crm_store.embedded import EmbeddedStore, EmbeddedStoreError
from tests.helpers import free_port

Doc = dict[str, Any]


def _client(store: EmbeddedStore) -> AsyncMongoClient[Doc]:
    return AsyncMongoClient(store.uri, serverSelectionTimeoutMS=5000)


async def test_ephemeral_store_serves_insert_and_find() -> None:
    store = EmbeddedStore(storage_path=None)
    assert store.pid is None
    assert store.uri == (
        f"mongodb://127.0.0.1:{store.port}/?directConnection=true&retryWrites=false"
    )
    async with store:
        pid = store.pid
        assert pid is not None
        assert os.getpgid(pid) == pid, "the server must lead its own process group"
        client = _client(store)
        try:
            coll = client["t_embedded"]["things"]
            await coll.insert_one({"_id": "a", "n": 1})
            assert await coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
        finally:
            await client.close()
        log_path = store.log_path
        assert log_path is not None
        assert log_path.exists()
    assert store.pid is None
    assert not log_path.parent.exists(), "a :memory: store's temp dir is removed at stop"
    await store.stop()  # idempotent


async def test_stop_is_a_clean_sigterm_every_time() -> None:
    # Regression: a SIGTERM that landed on a server worker thread used to be ignored.
    store = EmbeddedStore(storage_path=None)
    for _ in range(5):
        await store.start()
        await store.stop(timeout=5)
        assert store.returncode == 0, store.log_tail()


async def test_killed_memory_store_leaves_no_temp_files() -> None:
    store = EmbeddedStore(storage_path=None)
    await store.start()
    log_path = store.log_path
    assert log_path is not None
    scratch = log_path.parent
    assert any(scratch.glob("secantus_wt_*")), "the :memory: data dir lives in our scratch dir"
    store.kill()
    assert store.returncode == -9
    await store.stop()
    assert not scratch.exists()


@pytest.mark.contract
async def test_insert_and_find_through_the_session_server(db: AsyncDatabase[Doc]) -> None:
    await db.things.insert_many([{"k": i, "even": i % 2 == 0} for i in range(10)])
    evens = [d["k"] async for d in db.things.find({"even": True}).sort("k", -1)]
    assert evens == [8, 6, 4, 2, 0]


@pytest.mark.contract
async def test_unique_index_raises_duplicate_key(db: AsyncDatabase[Doc]) -> None:
    await db.intake.create_index([("provider", 1), ("provider_id", 1)], unique=True)
    await db.intake.insert_one({"provider": "telegram", "provider_id": "42"})
    with pytest.raises(DuplicateKeyError):
        await db.intake.insert_one({"provider": "telegram", "provider_id": "42"})
    await db.intake.insert_one({"provider": "vk", "provider_id": "42"})
    assert await db.intake.count_documents({}) == 2


async def test_file_backed_store_keeps_data_across_restart(durable_store: EmbeddedStore) -> None:
    store = durable_store
    assert store.storage_path is not None
    assert "--sync-on-commit" in store.command()
    port, first_pid = store.port, store.pid
    client = _client(store)
    try:
        await client.app.contacts.insert_one({"_id": "c1", "name": "Ann"})
    finally:
        await client.close()

    await store.stop()
    assert store.pid is None
    await store.start()
    assert store.port == port
    assert store.pid not in (None, first_pid)

    client = _client(store)
    try:
        assert await client.app.contacts.find_one({"_id": "c1"}) == {"_id": "c1", "name": "Ann"}
    finally:
        await client.close()
    log_path = store.log_path
    assert log_path == store.storage_path / "secantusd.log"
    assert log_path.read_text().count("listening") >= 2


async def test_acknowledged_writes_survive_sigkill(durable_store: EmbeddedStore) -> None:
    store = durable_store
    client = _client(store)
    try:
        coll = client.app.get_collection("messages", write_concern=WriteConcern(w=1))
        for i in range(50):
            await coll.insert_one({"_id": i})
        await coll.update_one({"_id": 49}, {"$set": {"routed": True}})
    finally:
        await client.close()

    pid = store.pid
    assert pid is not None
    store.kill()
    assert store.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    await store.start()
    client = _client(store)
    try:
        coll = client.app.messages
        assert await coll.count_documents({}) == 50
        assert await coll.find_one({"_id": 49}) == {"_id": 49, "routed": True}
    finally:
        await client.close()


async def test_missing_binary_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(embedded, "find_server_executable", lambda: None)
    store = EmbeddedStore(storage_path=tmp_path / "mongo")
    with pytest.raises(EmbeddedStoreError, match=r"install omniroute\[embedded\]"):
        await store.start()
    assert store.pid is None
    await store.stop()


async def test_server_dying_at_startup_reports_its_log(tmp_path: Path) -> None:
    store = EmbeddedStore(storage_path=tmp_path / "mongo", cache_size="not-a-size")
    with pytest.raises(EmbeddedStoreError, match="exited with code") as info:
        await store.start(timeout=20)
    assert "tail of" in str(info.value)
    assert "Error" in str(info.value)
    assert store.pid is None


async def test_port_taken_by_another_server_is_refused(durable_store: EmbeddedStore) -> None:
    intruder = EmbeddedStore(storage_path=None, port=durable_store.port)
    with pytest.raises(EmbeddedStoreError, match="already in use"):
        await intruder.start()
    assert intruder.pid is None


def test_sync_start_and_stop(tmp_path: Path) -> None:
    store = EmbeddedStore(storage_path=tmp_path / "mongo", port=free_port())
    store.start_sync()
    try:
        pid = store.pid
        assert pid is not None
        # Ctrl-C in a terminal goes to the foreground process group; ours is not it.
        assert os.getpgid(pid) != os.getpgid(0)
    finally:
        store.stop_sync()
    assert store.pid is None
    store.stop_sync()  # idempotent
