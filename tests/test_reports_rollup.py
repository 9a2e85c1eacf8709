"""Report rollups (crm_store/reports/rollup.py): crash safety with a really killed
process, and the rebuild command.

Messages go in through the real path (signed site-form webhooks routed by the service,
an operator's reply and a closing through the API). A child process follows the event
log and is killed with SIGKILL after writing a page's rollups and before moving the
cursor; a second process (another owner, after the dead one's lease ran out) goes on
from the stored cursor. The reports read from the rollups must then equal the same
reports computed from the collections — nothing lost, nothing counted twice — and so
must they after ``omniroute reports rebuild`` run as a command over emptied rollups.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from automation.calendar import WorkingCalendar
from crm_store import cursors, tokens
from crm_store.reports import rollup
from tests.fakes.integration import FakeIntegration
from tests.service import InProcess, api_body, config_with, in_process
from tests.test_api_channel_replies import site
from tests.test_cli import arun, cli_env

ADMIN = "sergey.volkov"
ANNA = "anna.smirnova"
PERIOD = "from=2026-06-01&to=2027-05-31"

CHILD = """
import asyncio, sys
from automation.calendar import WorkingCalendar
from config.settings import Settings
from crm_store import cursors
from crm_store.reports.rollup import CURSOR, RollupWorker
from ingest.service import store_for

async def main() -> None:
    settings = Settings(mongodb_uri=sys.argv[1], db_name=sys.argv[2])
    async with store_for(settings) as store:
        worker = RollupWorker(
            store, WorkingCalendar(), owner=sys.argv[3], lease_s=1.0, event_batch=4,
            gap_grace_s=0.0,
        )
        for _ in range(200):  # the dead process's lease runs out within a second
            if await cursors.hold(store, CURSOR, sys.argv[3], 1.0) is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("cursor never free")
        print(await worker.drain(), flush=True)

asyncio.run(main())
"""


async def child(
    mongo_uri: str, db: str, owner: str, *, crash: str | None
) -> tuple[int | None, bytes, bytes]:
    env = {k: v for k, v in os.environ.items() if k != rollup.CRASH_ENV}
    if crash:
        env[rollup.CRASH_ENV] = crash
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        mongo_uri,
        db,
        owner,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode, out, err


def rebuild_env(mongo_uri: str, db: str) -> dict[str, str]:
    """The environment of ``omniroute reports rebuild`` against the test database."""
    return cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db)


@asynccontextmanager
async def served(mongo_uri: str, db_name: str, **settings: Any) -> AsyncIterator[InProcess]:
    """The service with the site-form account; by default its own rollup worker off (the
    tests' workers and child processes hold the cursor)."""
    settings.setdefault("report_rollups_enabled", False)
    async with (
        FakeIntegration("site-secret") as integration,
        in_process(
            mongo_uri, db_name, config=config_with(site(integration.url)), **settings
        ) as svc,
    ):
        yield svc


async def get(svc: InProcess, token: str, path: str) -> Any:
    async with svc.client.http.get(
        f"{svc.client.base}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


async def figures(svc: InProcess, token: str) -> list[Any]:
    """Volume, responsiveness and the funnel as the API answers them, without the rollup
    marker."""
    out = []
    for path in (
        f"/api/v1/reports/volume?{PERIOD}&by=channel",
        f"/api/v1/reports/volume?{PERIOD}&group=month&by=responsible",
        f"/api/v1/reports/responsiveness?{PERIOD}&by=department",
        f"/api/v1/reports/funnel?{PERIOD}&by=channel",
    ):
        body = await get(svc, token, path)
        out.append((body["totals"], body["tables"], body["rollup_lag"] is not None))
    return out


@pytest.mark.parametrize(
    "crash",
    [
        "1",  # the page's documents written and their days marked, not summed
        # The first documents written, their days not marked: the next holder writes
        # nothing (its recomputation equals what is stored) and must still mark them.
        rollup.BEFORE_MARKS,
    ],
)
async def test_killed_worker_neither_loses_nor_double_counts(
    mongo_uri: str, db_name: str, crash: str
) -> None:
    async with served(mongo_uri, db_name) as svc:
        store = svc.store
        # A fresh store: the rollups follow the log from its start.
        await rollup.RollupWorker(store, WorkingCalendar(), owner="prep").prepare()
        assert (await rollup.status(store)).ready
        admin = (await tokens.issue(store, ADMIN))[0]
        for i in range(6):
            phone = f"+7900555000{i % 4}"  # repeat senders: several messages a conversation
            status, _ = await svc.client.post_api(api_body(f"rb-{i}", phone=phone, name="Ivan"))
            assert status == 200
        await svc.routed()
        conv = await store.conversations.find_one({"sender_keys": "phone:+79005550001"})
        assert conv is not None
        base = f"{svc.client.base}/api/v1/conversations/{conv['_id']}"
        auth = {"Authorization": f"Bearer {admin}"}
        async with svc.client.http.post(
            f"{base}/messages", headers=auth, data=orjson.dumps({"text": "Здравствуйте!"})
        ) as resp:
            assert resp.status < 300, await resp.text()
        head = (await rollup.status(store)).head
        assert head > 8  # several pages of 4 events

        # SIGKILL after the first page's rollups are written, before the cursor moves.
        code, out, err = await child(mongo_uri, db_name, "drill-1", crash=crash)
        assert code == -signal.SIGKILL, (code, out, err[-2000:])
        assert (await rollup.status(store)).cursor == 0
        written = await store[rollup.CONV_DAYS].count_documents({})
        assert written >= 1  # the page's conversations were written, then the kill

        # Another process takes over once the lease has run out and finishes the log.
        code, out, err = await child(mongo_uri, db_name, "drill-2", crash=None)
        assert code == 0, err[-2000:]
        st = await rollup.status(store)
        assert st.cursor >= head
        assert st.lag == 0

        # Nothing lost, nothing twice: the rollups sum to the stored inbound messages...
        days = await store[rollup.CONV_DAYS].find({}).to_list()
        inbound = await store.messages.count_documents(
            {"direction": "in", "conversation_id": {"$ne": None}}
        )
        assert sum(d["inbound"] for d in days) == inbound == 6
        # ...and the reports from the rollups equal the reports from the collections.
        from_rollups = await figures(svc, admin)
        assert all(basis for _, _, basis in from_rollups)
        episodes = from_rollups[2][0]
        assert (episodes["episodes"], episodes["answered"]) == (4, 1)
        await rollup.set_ready(store, False)
        from_collections = await figures(svc, admin)
        assert not any(basis for _, _, basis in from_collections)
        assert [(t, tb) for t, tb, _ in from_rollups] == [(t, tb) for t, tb, _ in from_collections]

        # `omniroute reports rebuild` over emptied rollups gives them back.
        await store[rollup.CONV_DAYS].delete_many({})
        await store[rollup.EPISODES].delete_many({})
        await store[rollup.ENTITIES].delete_many({})
        done = await arun("reports", "rebuild", env=rebuild_env(mongo_uri, db_name))
        assert done.code == 0, done.err[-2000:]
        assert "4 conversations" in done.out, done.out
        rebuilt = await figures(svc, admin)
        assert all(basis for _, _, basis in rebuilt)
        assert [(t, tb) for t, tb, _ in rebuilt] == [(t, tb) for t, tb, _ in from_collections]
        # Rollups of an older version are not patched up by a partial rebuild.
        await rollup.state(store).update_one(
            {"_id": rollup.STATE_ID}, {"$set": {"version": rollup.VERSION - 1}}
        )
        env = rebuild_env(mongo_uri, db_name)
        refused = await arun("reports", "rebuild", "--since", "2026-01-01", env=env)
        assert refused.code == 2, refused
        assert "rebuild without --since" in refused.err, refused.err
        assert (await rollup.state(store).find_one({"_id": rollup.STATE_ID}) or {})[
            "version"
        ] == rollup.VERSION - 1
        # ... while rollups that only the day totals separate from this version are brought
        # to it by summing the days again (`--days`): the episodes' rows come back.
        assert rollup.VERSION - 1 in rollup.DAYS_ONLY_FROM
        await store[rollup.DAYS].update_many({}, {"$unset": {"episodes": ""}})
        upgraded = await arun("reports", "rebuild", "--days", env=env)
        assert upgraded.code == 0, upgraded.err[-2000:]
        assert "day totals re-summed" in upgraded.out, upgraded.out
        assert await store[rollup.DAYS].count_documents({"episodes": {"$exists": True}}) >= 1
        assert [(t, tb) for t, tb, _ in await figures(svc, admin)] == [
            (t, tb) for t, tb, _ in from_collections
        ]
        # Not from an older version, nor from rollups that were never ready.
        await rollup.state(store).update_one(
            {"_id": rollup.STATE_ID}, {"$set": {"version": min(rollup.DAYS_ONLY_FROM) - 1}}
        )
        refused = await arun("reports", "rebuild", "--days", env=env)
        assert refused.code == 2, refused
        assert "rebuild without --days" in refused.err, refused.err
        await rollup.set_ready(store, True)

        # Rollups nobody keeps up (no worker holds the cursor) are not read once behind.
        await asyncio.sleep(1.1)  # the last child's lease (1 s) runs out
        status, _ = await svc.client.post_api(api_body("rb-late", phone="+79005559999"))
        assert status == 200
        await svc.routed()
        st = await rollup.status(store)
        assert st.lag > 0
        assert not st.maintained
        late = await figures(svc, admin)
        assert not any(basis for _, _, basis in late)
        assert late[0][0]["inbound_messages"] == 7


async def test_a_page_left_half_done_is_redone_in_full(mongo_uri: str, db_name: str) -> None:
    """A worker writes only documents that changed and marks only their days — unless the
    page before may have been left half done (written, days not marked). The state such a
    crash leaves is made by hand: lower rollups up to date, day totals stale, the cursor
    behind. A worker that takes the cursor anew sums the days again."""
    async with served(mongo_uri, db_name) as svc:
        store = svc.store
        cal = WorkingCalendar()
        first = rollup.RollupWorker(store, cal, owner="w1", gap_grace_s=0.0)
        await first.prepare()
        for i in range(3):
            status, _ = await svc.client.post_api(api_body(f"hd-{i}", phone=f"+7900555100{i}"))
            assert status == 200
        await svc.routed()
        assert await first.drain() > 0
        summed = {d["_id"]: d async for d in store[rollup.DAYS].find({}, {"gen": 0})}
        assert summed
        assert sum(len(d["inbound"]) for d in summed.values()) >= 1
        lower = await store[rollup.CONV_DAYS].find({}).to_list()

        # The state a kill between writing and marking leaves behind.
        await store[rollup.DAYS].update_many({}, {"$set": {"inbound": [], "leads": []}})
        await cursors.cursors(store).update_one({"_id": rollup.CURSOR}, {"$set": {"seq": 0}})
        await cursors.release(store, rollup.CURSOR, "w1")

        second = rollup.RollupWorker(store, cal, owner="w2", gap_grace_s=0.0)
        assert await second.drain() > 0
        assert await store[rollup.CONV_DAYS].find({}).to_list() == lower
        again = {d["_id"]: d async for d in store[rollup.DAYS].find({}, {"gen": 0})}
        assert again == summed

        # The first worker takes the cursor back (taken, not renewed: another may have
        # left a page half done meanwhile): in full again, though its own last page ended.
        await store[rollup.DAYS].update_many({}, {"$set": {"inbound": [], "leads": []}})
        await cursors.cursors(store).update_one({"_id": rollup.CURSOR}, {"$set": {"seq": 0}})
        await cursors.release(store, rollup.CURSOR, "w2")
        assert await first.drain() > 0
        assert {d["_id"]: d async for d in store[rollup.DAYS].find({}, {"gen": 0})} == summed
