"""The PBX acknowledgement: a call report is answered after its upsert alone, and its
events are announced afterwards by the call announcer — exactly once, also when the
process that acknowledged it is killed before announcing (docs/channels/telephony.md)."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase

from channels.base import CallDirection, CallEvent, CallStage, Disposition
from channels.calls import CALL_ENDED, CALL_STARTED
from config.loader import load_config
from config.models import ChannelAccount
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import calls as call_store
from crm_store.store import Store
from ingest.app import create_app
from ingest.call_announcer import CallAnnouncer
from ingest.service import running_service
from tests.fakes.pbx import FakePbx
from tests.helpers import wait_for
from tests.service import config_with, proc
from tests.service import test_settings as service_settings

SECRET = "asterisk-webhook-secret-5d41402abc4b2a76"
ACCOUNT = "showroom"
T0 = datetime(2024, 11, 20, 10, 15, tzinfo=UTC)
# The acknowledgement's budget: the call's message into intake and the call's upsert
# (issued together).
ACK_ROUND_TRIPS = 2

Db = AsyncDatabase[dict[str, Any]]

# --- counting the commands a webhook request issues before its answer ----------------------

_in_request: contextvars.ContextVar[bool] = contextvars.ContextVar("in_request", default=False)


class RequestCommands(monitoring.CommandListener):
    """Commands started while a webhook request is handled: in its handler's context, which
    the tasks it starts inherit (the call's upsert runs beside the intake write). Background
    workers (the announcer, routing) run in their own contexts and are not counted."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if _in_request.get():
            self.counts[f"{event.command_name} {event.command.get(event.command_name)}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@web.middleware
async def mark_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = _in_request.set(True)
    try:
        return await handler(request)
    finally:
        _in_request.reset(token)


def pbx_event(event: str, call: str, seq: int, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": event,
        "call_id": call,
        "leg_id": f"{call}.{seq}",
        "direction": "in",
        "from": "+79001234567",
        "to": "+74951234567",
        "started_at": "2024-11-20T10:15:00Z",
        "seq": seq,
    }
    body.update(kw)
    return body


def answered(call: str, phone: str = "+79001234567") -> list[dict[str, Any]]:
    return [
        pbx_event("call.started", call, 1, **{"from": phone}),
        pbx_event("call.ringing", call, 2, extension="101", **{"from": phone}),
        pbx_event(
            "call.answered",
            call,
            3,
            extension="101",
            answered_at="2024-11-20T10:15:10Z",
            **{"from": phone},
        ),
        pbx_event(
            "call.ended",
            call,
            4,
            extension="101",
            answered_at="2024-11-20T10:15:10Z",
            ended_at="2024-11-20T10:16:45Z",
            duration_sec=105,
            billsec=95,
            disposition="ANSWER",
            hangup_cause="16",
            **{"from": phone},
        ),
    ]


@asynccontextmanager
async def counted_service(
    mongo_uri: str, db_name: str, counter: RequestCommands
) -> AsyncIterator[tuple[str, Store]]:
    account = ChannelAccount(channel="pbx", account=ACCOUNT, source="phone", secret_env="PBX_T")
    cfg = config_with(account, base=load_config(DEFAULT_CONFIG_DIR))
    settings = service_settings(mongo_uri, db_name)
    store = Store.open(mongo_uri, db_name, event_listeners=[counter])
    try:
        async with running_service(settings, cfg, store) as svc:
            app = create_app(svc)
            app.middlewares.insert(0, mark_request)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", settings.port)
            await site.start()
            try:
                yield f"http://127.0.0.1:{settings.port}/webhooks/pbx/{ACCOUNT}", store
            finally:
                await runner.cleanup()
    finally:
        await store.close()


async def test_a_call_report_is_acknowledged_after_its_upsert_alone(
    mongo_uri: str, db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every report of a call — the first, the ones that move it on, a provider's repeat
    — costs at most two store round trips before its 2xx; the events come afterwards."""
    monkeypatch.setenv("PBX_T", SECRET)
    counter = RequestCommands()
    fake = FakePbx(SECRET)
    async with counted_service(mongo_uri, db_name, counter) as (url, store):
        steps = answered("ack-1")
        for step in [*steps, steps[-1]]:  # the last one twice: a provider's retry
            before = counter.counts.copy()
            status, body = await fake.post(url, step)
            assert status == 200, body
            spent = counter.counts - before
            assert sum(spent.values()) <= ACK_ROUND_TRIPS, (step["event"], dict(spent))
            assert set(spent) <= {"insert intake", "update calls"}, dict(spent)

        async def announced() -> bool:
            return not await call_store.due_calls(store, 1)

        await wait_for(announced, timeout=20, message="the call was never announced")
        for type_ in (CALL_STARTED, CALL_ENDED):
            assert await store.events.count_documents({"type": type_}) == 1, type_


# --- the announcer, on the store ----------------------------------------------------------


def report(call_id: str, **kw: Any) -> CallEvent:
    values: dict[str, Any] = {
        "channel": "pbx",
        "account": "a",
        "call_id": call_id,
        "event": "x",
        "direction": CallDirection.IN,
        "customer": "89001234567",
    }
    values.update(kw)
    return CallEvent(**values)


async def test_due_calls_are_announced_once_by_concurrent_announcers(
    mongo_uri: str, db_name: str
) -> None:
    """Reports applied with nobody announcing leave their calls due and no events; two
    announcers sweeping at once announce each event once; a report that arrives between
    an announcer's read and its clearing keeps the call due, and is announced next."""
    store = Store.open(mongo_uri, db_name)
    await store.ensure_indexes()
    try:
        for n in range(6):
            await call_store.apply(store, report(f"due-{n}", stage=CallStage.RINGING, at=T0), "p")
        assert len(await call_store.due_calls(store, 100)) == 6
        assert await store.events.count_documents({}) == 0

        first, second = CallAnnouncer(store), CallAnnouncer(store)
        try:
            await asyncio.gather(first.sweep(), second.sweep())
        finally:
            await first.stop()
            await second.stop()
        assert await call_store.due_calls(store, 100) == []
        assert await store.events.count_documents({"type": CALL_STARTED}) == 6
        assert await store.events.count_documents({"type": CALL_ENDED}) == 0

        # A report lands between an announcer's read and its clearing: the call stays due.
        doc_id = call_store.call_doc_id("pbx", "a", "due-0")
        ended = report(
            "due-0",
            stage=CallStage.ENDED,
            disposition=Disposition.ANSWERED,
            ended_at=T0 + timedelta(seconds=60),
        )
        await call_store.apply(store, ended, "p")
        read = await store["calls"].find_one({"_id": doc_id})
        assert read is not None
        assert read[call_store.DUE] is True
        await call_store.apply(store, ended, "p")  # the provider repeats the end meanwhile
        await call_store.announce_read(store, read)
        assert await call_store.due_calls(store, 100) == [doc_id]
        assert await store.events.count_documents({"type": CALL_ENDED}) == 1
        await CallAnnouncer(store).sweep()
        assert await call_store.due_calls(store, 100) == []
        assert await store.events.count_documents({"type": CALL_ENDED}) == 1
        assert await store.events.count_documents({"type": CALL_STARTED}) == 6
    finally:
        await store.close()


class CallWrites(monitoring.CommandListener):
    """Write commands on ``calls`` (each one waits for every other write of the collection
    in the embedded store, the webhooks' upserts among them)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if (
            event.command_name in ("update", "findAndModify")
            and event.command.get(event.command_name) == call_store.COLLECTION
        ):
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_an_announcement_writes_its_call_once(mongo_uri: str, db_name: str) -> None:
    """Announcing a call clears its flag and remembers what was announced in one write; a
    call with nothing new to announce gets only its flag cleared; a report that came
    meanwhile keeps the call due and what was announced remembered."""
    writes = CallWrites()
    store = Store.open(mongo_uri, db_name, event_listeners=[writes])
    await store.ensure_indexes()
    try:
        await call_store.apply(store, report("once-1", stage=CallStage.RINGING, at=T0), "p")
        doc_id = call_store.call_doc_id("pbx", "a", "once-1")
        writes.count = 0
        rec = await call_store.announce_call(store, doc_id)
        assert rec is not None
        assert writes.count == 1
        doc = await store["calls"].find_one({"_id": doc_id})
        assert doc is not None
        assert doc["announced"] == [CALL_STARTED]
        assert call_store.DUE not in doc

        # A repeat: nothing new to announce, the flag alone is cleared (one write).
        await call_store.apply(store, report("once-1", stage=CallStage.RINGING, at=T0), "p")
        writes.count = 0
        await call_store.announce_call(store, doc_id)
        assert writes.count == 1
        assert await call_store.due_calls(store, 10) == []

        # The end, and another report between the read and the clearing: still due, the
        # end remembered; the next round announces nothing twice.
        ended = report(
            "once-1",
            stage=CallStage.ENDED,
            disposition=Disposition.ANSWERED,
            ended_at=T0 + timedelta(seconds=60),
        )
        await call_store.apply(store, ended, "p")
        read = await store["calls"].find_one({"_id": doc_id})
        assert read is not None
        await call_store.apply(store, ended, "p")
        await call_store.announce_read(store, read)
        doc = await store["calls"].find_one({"_id": doc_id})
        assert doc is not None
        assert doc[call_store.DUE] is True
        assert sorted(doc["announced"]) == sorted([CALL_STARTED, CALL_ENDED])
        await call_store.announce_call(store, doc_id)
        assert await call_store.due_calls(store, 10) == []
        assert await store.events.count_documents({"type": CALL_ENDED}) == 1
        assert await store.events.count_documents({"type": CALL_STARTED}) == 1
    finally:
        await store.close()


async def test_an_announcer_takes_its_own_reports_and_others_once_stale(
    mongo_uri: str, db_name: str
) -> None:
    """Woken, the announcer announces the calls reported in its own process; a call left
    due by another process waits for the periodic look, until its last report is older
    than ``stale_s``."""
    store = Store.open(mongo_uri, db_name)
    await store.ensure_indexes()
    announcer = CallAnnouncer(store)
    try:
        call_store.take_reported()  # what earlier tests of this process left
        await call_store.apply(store, report("mine", stage=CallStage.RINGING, at=T0), "p")
        # Another process's report, a moment ago: its upsert, not this process's to announce.
        theirs = call_store.call_doc_id("pbx", "a", "theirs")
        ev = report("theirs", stage=CallStage.RINGING, at=T0)
        update = call_store.update_of(ev, "p", datetime.now(UTC))
        await store["calls"].update_one({"_id": theirs}, update, upsert=True)

        assert await announcer.announce_reported() == 1
        assert await call_store.due_calls(store, 10) == [theirs]
        assert await announcer.announce_reported() == 0
        assert await announcer.sweep(stale_s=3600.0) == 0  # not due for that long
        assert await call_store.due_calls(store, 10) == [theirs]
        assert await announcer.sweep(stale_s=0.0) == 1
        assert await call_store.due_calls(store, 10) == []
        assert await store.events.count_documents({"type": CALL_STARTED}) == 2
    finally:
        await announcer.stop()
        await store.close()


# --- the drill: SIGKILL between the upsert and the announcement ------------------------------


@pytest.mark.slow
async def test_sigkill_before_announcing_announces_each_call_once(
    mongo_uri: str, db_name: str, db: Db, tmp_path: Path
) -> None:
    """40 calls reported at once to one process, SIGKILLed the moment the last 2xx is in
    (some calls are still due then); a second process announces what was left: every call
    has exactly one call.started and one call.ended, the event sequence has no duplicates,
    and every call's message is routed once."""
    env = {"OMNIROUTE_SECRET_PBX_SHOWROOM": SECRET, "OMNIROUTE_INTAKE_LEASE_S": "2"}
    first = proc(mongo_uri, db_name, tmp_path, **env)
    second = proc(mongo_uri, db_name, tmp_path, **env)
    fake = FakePbx(SECRET)
    calls_n = 40
    try:
        await first.start()
        url = f"{first.base}/webhooks/pbx/{ACCOUNT}"
        steps = [s for n in range(calls_n) for s in answered(f"k-{n}", f"+7905000{n:04d}")]
        results = await asyncio.gather(*(fake.post(url, s) for s in steps))
        first.kill()
        assert [status for status, _ in results] == [200] * len(steps)
        due_at_kill = await db["calls"].count_documents({"announce_due": True})
        print(f"\n[drill] SIGKILL after {len(steps)} call reports: {due_at_kill} calls due")
        assert await db["calls"].count_documents({}) == calls_n

        await second.start()

        async def settled() -> bool:
            due = await db["calls"].count_documents({"announce_due": True})
            pending = await db["intake"].count_documents({"status": "pending"})
            return due == 0 and pending == 0

        await wait_for(settled, timeout=60, interval=0.2, message="calls still due")
        for type_ in (CALL_STARTED, CALL_ENDED):
            per_call = Counter(
                [e["refs"]["call_id"] async for e in db["events"].find({"type": type_})]
            )
            assert len(per_call) == calls_n, (type_, per_call)
            assert set(per_call.values()) == {1}, (type_, per_call)
        seqs = [e["seq"] async for e in db["events"].find({}, {"seq": 1})]
        assert len(seqs) == len(set(seqs))
        assert await db["messages"].count_documents({}) == calls_n
        assert await db["leads"].count_documents({}) == calls_n
    finally:
        first.kill()
        await second.stop()
