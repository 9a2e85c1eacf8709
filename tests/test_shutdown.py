"""Graceful shutdown (ingest/service.py, docs/deployment.md).

- Draining: once it begins, ``/readyz`` and new webhooks answer 503 (``draining``, with
  ``Retry-After``) while the webhook requests in flight finish and are acknowledged.
- Leases: a stopping process hands back everything it holds (intake, outbox, timers,
  subscriptions, the automation cursor, mailbox leases) and nothing of anybody else's.
- Real processes: SIGTERM during a burst of webhooks — every message ends up acknowledged
  (by the stopping process or, after its 503, by the other one) and routed exactly once,
  and no request is left without an answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from crm_store.documents import intake_id
from crm_store.store import Document, Store
from ingest.app import create_app
from ingest.context import Service
from ingest.service import Drain, release_leases, running_service
from tests import service as helpers
from tests.helpers import wait_for
from tests.service import ACCOUNT_SECRET, Proc, api_body, proc, signed_headers

Db = AsyncDatabase[dict[str, Any]]


def phone(sender: int) -> str:
    return f"+7905123{sender:04d}"


async def post(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any]
) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    raw = orjson.dumps(body)
    headers = signed_headers(ACCOUNT_SECRET["site"], raw)
    async with http.post(f"{base}/webhooks/api/site", data=raw, headers=headers) as resp:
        data = await resp.read()
        return resp.status, resp.headers, (orjson.loads(data) if data else {})


# --------------------------------------------------------------------------- draining


@dataclass
class Draining:
    svc: Service
    drain: Drain
    base: str
    http: aiohttp.ClientSession


@asynccontextmanager
async def draining_service(mongo_uri: str, db_name: str) -> AsyncIterator[Draining]:
    """The service wired as ``serve`` wires it (the Drain middleware included)."""
    settings = helpers.test_settings(mongo_uri, db_name)
    store = Store.open(mongo_uri, db_name)
    try:
        async with running_service(settings, load_config(DEFAULT_CONFIG_DIR), store) as svc:
            app = create_app(svc)
            drain = Drain()
            app.middlewares.append(drain.middleware)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", settings.port).start()
            try:
                async with aiohttp.ClientSession() as http:
                    yield Draining(svc, drain, f"http://127.0.0.1:{settings.port}", http)
            finally:
                await runner.cleanup()
    finally:
        await store.close()


async def test_draining_refuses_new_webhooks_and_finishes_those_in_flight(
    mongo_uri: str, db_name: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with draining_service(mongo_uri, db_name) as s:
        async with s.http.get(f"{s.base}/readyz") as resp:
            assert resp.status == 200

        # A webhook request is in flight: its durable write has not returned yet.
        assert s.svc.intake is not None
        real_accept = s.svc.intake.accept
        entered, proceed = asyncio.Event(), asyncio.Event()

        async def slow_accept(docs: list[Document]) -> Any:
            entered.set()
            await proceed.wait()
            return await real_accept(docs)

        monkeypatch.setattr(s.svc.intake, "accept", slow_accept)
        in_flight = asyncio.create_task(
            post(s.http, s.base, api_body("drain-inflight", phone=phone(1)))
        )
        await asyncio.wait_for(entered.wait(), timeout=10)
        assert s.drain.inflight == 1
        monkeypatch.setattr(s.svc.intake, "accept", real_accept)

        s.drain.begin()
        settled = asyncio.create_task(s.drain.settle(quiet_s=0.1, max_s=60))

        async with s.http.get(f"{s.base}/readyz") as resp:
            assert resp.status == 503
            assert resp.headers["Connection"].lower() == "close"
            assert (await resp.json(content_type=None))["code"] == "draining"
        async with s.http.get(f"{s.base}/healthz") as resp:
            assert resp.status == 200  # the process is alive: not to be restarted
        status, headers, problem = await post(s.http, s.base, api_body("drain-new", phone=phone(2)))
        assert status == 503
        assert headers["Content-Type"].startswith("application/problem+json")
        assert int(headers["Retry-After"]) > 0
        assert headers["Connection"].lower() == "close"
        assert problem["code"] == "draining"
        assert await db["intake"].find_one({"_id": intake_id("api", "site", "drain-new")}) is None

        # Settling waits for the request in flight; it is acknowledged as usual.
        await asyncio.sleep(0.3)  # longer than quiet_s: only the request in flight holds it
        assert not settled.done()
        proceed.set()
        status, _, body = await in_flight
        assert status == 200
        assert body["accepted"] == [intake_id("api", "site", "drain-inflight")]
        assert await asyncio.wait_for(settled, timeout=10) is True

        async def routed() -> bool:
            return await db["intake"].count_documents({"status": "routed"}) == 1

        await wait_for(routed, timeout=20, message="the message in flight was not routed")


# --------------------------------------------------------------------------- leases


async def test_release_leases_hands_back_only_our_own(mongo_uri: str, db_name: str) -> None:
    """Everything ``me`` holds becomes claimable at once; ``other``'s stays held."""
    store = Store.open(mongo_uri, db_name)
    now = datetime.now(UTC)
    later = now + timedelta(minutes=10)
    try:
        await store.ensure_indexes()  # as every service start does; the release uses them
        for who in ("me", "other"):
            await store["intake"].insert_one(
                {"_id": f"in-{who}", "status": "pending", "owner": who, "lease_until": later}
            )
            await store["messages"].insert_one(
                {
                    "_id": f"out-{who}",
                    "direction": "out",
                    "send_due_at": now,
                    "send_owner": who,
                    "send_lease_until": later,
                }
            )
            await store["timers"].insert_one(
                {"_id": f"timer-{who}", "state": "running", "owner": who, "lease_until": later}
            )
            await store["subscriptions"].insert_one(
                {"_id": f"sub-{who}", "active": True, "owner": who, "lease_until": later}
            )
            await store["automation_cursors"].insert_one(
                {"_id": f"cursor-{who}", "seq": 5, "owner": who, "lease_until": later}
            )
            await store["leases"].insert_one(
                {"_id": f"mailbox:email:{who}:INBOX", "owner": who, "until": later}
            )
        # Already given up (intake routed; a timer waiting for its retry has no owner).
        await store["intake"].insert_one({"_id": "in-done", "status": "routed", "owner": "me"})

        released = await release_leases(store, "me")

        assert released == {
            "intake": 1,
            "messages": 1,
            "timers": 1,
            "subscriptions": 1,
            "automation_cursors": 1,
            "leases": 1,
        }
        after = datetime.now(UTC)
        lease_fields = {
            "intake": "lease_until",
            "messages": "send_lease_until",
            "timers": "lease_until",
            "subscriptions": "lease_until",
            "automation_cursors": "lease_until",
            "leases": "until",
        }
        for name, field in lease_fields.items():
            async for doc in store[name].find({}):
                if field not in doc:
                    continue
                if doc["_id"].endswith("-me") or ":me:" in doc["_id"]:
                    assert doc[field] <= after, (name, doc)
                else:
                    assert doc[field] > after, (name, doc)
        # The intake record keeps its owner (the sweep skips only records of the claimer
        # itself, and this process is gone); the cursor is nobody's.
        cursor = await store["automation_cursors"].find_one({"_id": "cursor-me"})
        assert cursor is not None
        assert cursor["owner"] is None
        assert cursor["seq"] == 5
    finally:
        await store.close()


# --------------------------------------------------------------------------- real processes


@dataclass
class Outcome:
    process: str
    status: int
    body: dict[str, Any]


def log_events(p: Proc) -> list[dict[str, Any]]:
    events = []
    for line in p.log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
async def test_sigterm_during_a_burst_loses_nothing_and_drops_no_request(
    mongo_uri: str, db_name: str, db: Db, tmp_path: Path, signals: int
) -> None:
    """Two processes; the client sends to A like a proxy would (one connection per
    request) and moves to B once A answers 503 ``draining`` or refuses connections. A is
    SIGTERMed mid-burst. The intake lease is 300 s: whatever A leaves unrouted is taken
    over by B's recovery sweep only because A released it.

    ``sigterm-twice``: A routes one record per batch (a backlog is likely) and gets a
    second SIGTERM once its HTTP side has drained, which cuts the routing wait short: A
    releases what it has not routed, and B routes it."""
    env = {"OMNIROUTE_INTAKE_LEASE_S": "300"}
    a_env = {**env, "OMNIROUTE_ROUTE_BATCH_SIZE": "1"} if signals == 2 else env
    a = proc(mongo_uri, db_name, tmp_path, **a_env)
    b = proc(mongo_uri, db_name, tmp_path, **env)
    senders, per_sender = 10, 20
    bodies = [
        api_body(f"term-{s}-{m}", phone=phone(100 + s))
        for m in range(per_sender)
        for s in range(senders)
    ]
    outcomes: dict[str, Outcome] = {}
    dropped: list[tuple[str, str, str]] = []
    refused_by_a = {"draining": 0, "connect": 0}
    a_out = asyncio.Event()
    a_acks = 0
    term_at_acks = 60
    sigterm_sent = asyncio.Event()
    gate = asyncio.Semaphore(16)

    async def deliver(http: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        nonlocal a_acks
        async with gate:
            for _ in range(3):
                target, name = (b, "B") if a_out.is_set() else (a, "A")
                try:
                    status, headers, data = await post(http, target.base, body)
                except aiohttp.ClientConnectorError:
                    if name == "A":  # A's listener is closed: nothing was sent
                        refused_by_a["connect"] += 1
                        a_out.set()
                        continue
                    raise
                except aiohttp.ClientError as exc:  # connected, sent, and no answer
                    dropped.append((name, body["external_id"], repr(exc)))
                    return
                if name == "A" and status == 503 and data.get("code") == "draining":
                    assert int(headers["Retry-After"]) > 0
                    refused_by_a["draining"] += 1
                    a_out.set()
                    continue
                outcomes[body["external_id"]] = Outcome(name, status, data)
                if name == "A" and status == 200:
                    a_acks += 1
                    if a_acks == term_at_acks and a.popen is not None:
                        a.popen.terminate()  # SIGTERM
                        sigterm_sent.set()
                return

    try:
        await asyncio.gather(a.start(), b.start())
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(deliver(http, body) for body in bodies))
        assert sigterm_sent.is_set(), "the burst ended before A got its SIGTERM"

        async def a_exited() -> bool:
            return a.popen is not None and a.popen.poll() is not None

        if signals == 2:

            async def http_drained() -> bool:
                return any(e.get("event") == "service.stopping" for e in log_events(a))

            await wait_for(http_drained, timeout=20, interval=0.02, message="A did not drain")
            assert a.popen is not None
            if a.popen.poll() is None:
                a.popen.terminate()

        await wait_for(a_exited, timeout=40, interval=0.1, message="A did not exit on SIGTERM")
        assert a.popen is not None
        assert a.popen.returncode == 0, a.log.read_text()[-3000:]

        by_a = sum(1 for o in outcomes.values() if o.process == "A")
        noise = ("event", "timestamp", "level", "logger")
        stopping = [
            (e["event"], {k: v for k, v in e.items() if k not in noise})
            for e in log_events(a)
            if str(e.get("event", "")).startswith("service.")
        ]
        print(
            f"\n[shutdown] acknowledged by A {by_a}, by B {len(outcomes) - by_a}; "
            f"A refused {refused_by_a}; A's shutdown log: {stopping}"
        )
        assert dropped == [], f"requests without an answer: {dropped}"
        assert {o.status for o in outcomes.values()} == {200}
        assert len(outcomes) == len(bodies)
        expected = {intake_id("api", "site", str(body["external_id"])) for body in bodies}
        acked = [mid for o in outcomes.values() for mid in o.body["accepted"]]
        duplicates = [mid for o in outcomes.values() for mid in o.body["duplicates"]]
        assert len(acked) == len(set(acked))
        assert set(acked) | set(duplicates) == expected

        async def all_routed() -> bool:
            total = await db["intake"].count_documents({})
            routed = await db["intake"].count_documents({"status": "routed"})
            return total == routed == len(bodies)

        await wait_for(all_routed, timeout=40, interval=0.1, message="intake left unrouted")
        messages = [d["_id"] async for d in db["messages"].find({}, {"_id": 1})]
        assert sorted(messages) == sorted(expected)
        assert await db["leads"].count_documents({}) == senders
        attached = [
            e["refs"]["message_id"] async for e in db["events"].find({"type": "message.attached"})
        ]
        assert sorted(attached) == sorted(expected)  # each routed exactly once
        seqs = [e["seq"] async for e in db["events"].find({}, {"seq": 1})]
        assert len(seqs) == len(set(seqs))
        assert b.popen is not None
        assert b.popen.poll() is None
    finally:
        a.kill()
        await b.stop()
