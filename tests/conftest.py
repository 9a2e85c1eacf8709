"""Session-wide MongoDB fixtures.

By default the session starts one ephemeral embedded store (SecantusDB, ``:memory:``); set
``OMNIROUTE_TEST_MONGODB_URI`` to run the same tests against a real MongoDB instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from crm_store.embedded import EmbeddedStore
from crm_store.store import Store
from tests.helpers import free_port

TEST_URI_ENV = "OMNIROUTE_TEST_MONGODB_URI"


def _dump_tasks_on_sigusr1(loop: asyncio.AbstractEventLoop) -> None:
    """``kill -USR1 <pytest pid>`` writes every asyncio task's stack of the session loop to
    /tmp/asyncio-tasks-<pid>.txt: what a hung test waits for (py-spy shows only the idle
    selector)."""

    def dump(*_: object) -> None:
        path = Path(f"/tmp/asyncio-tasks-{os.getpid()}.txt")
        with path.open("w") as out:
            for task in asyncio.all_tasks(loop):
                out.write(f"--- {task.get_name()} {task!r}\n")
                task.print_stack(file=out)

    signal.signal(signal.SIGUSR1, dump)


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def _no_stuck_tasks_at_exit() -> AsyncIterator[None]:
    """At the end of the session, tasks still "cancelling" (a PyMongo wait cancelled on
    Python 3.11 can stay so for good; ingest/tasks.py left it behind after its grace) are
    forgotten, so closing the session loop does not wait for them forever."""
    yield
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    stuck = [t for t in asyncio.all_tasks(loop) if t is not me and t.cancelling()]
    if stuck:
        await asyncio.wait(stuck, timeout=2.0)
    for t in stuck:
        if not t.done():
            asyncio.tasks._unregister_task(t)  # type: ignore[attr-defined]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mongo_uri() -> AsyncIterator[str]:
    """URI of the MongoDB the tests use: $OMNIROUTE_TEST_MONGODB_URI or an ephemeral store."""
    _dump_tasks_on_sigusr1(asyncio.get_running_loop())
    external = os.environ.get(TEST_URI_ENV)
    if external:
        yield external
        return
    store = EmbeddedStore(storage_path=None, port=free_port())
    await store.start()
    try:
        yield store.uri
    finally:
        await store.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def db_name(mongo_client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[str]:
    """A fresh database name per test, dropped afterwards (best effort)."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(Exception):  # cleanup must not mask the test's outcome
        await mongo_client.drop_database(name)


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo_uri: str, db_name: str) -> AsyncIterator[Store]:
    """A store on a fresh database with every index in place (a module may define its own)."""
    s = Store.open(mongo_uri, db_name, timeout_ms=10_000)
    try:
        await s.ensure_indexes()
        yield s
    finally:
        await s.close()


@pytest.fixture
def db(
    mongo_client: AsyncMongoClient[dict[str, Any]], db_name: str
) -> AsyncDatabase[dict[str, Any]]:
    return mongo_client[db_name]


@pytest_asyncio.fixture(loop_scope="session")
async def durable_store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    """A started file-backed embedded store (--sync-on-commit) on a fixed port.

    The test may ``await store.stop()`` / ``store.kill()`` and ``await store.start()`` again:
    same port, same data. Always embedded, whatever OMNIROUTE_TEST_MONGODB_URI says.
    """
    store = EmbeddedStore(storage_path=tmp_path / "mongo", port=free_port())
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
