"""Failure drills: several processes on one store, SIGKILL after the 2xx, a store outage,
a poison intake record.

Each drill checks the invariants from ARCHITECTURE.md with exact counts: nothing is
acknowledged before it is durably stored, everything acknowledged is routed exactly once
(also after a crash or an outage), and concurrent messages from one new sender create
exactly one lead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from channels.base import InboundMessage, Sender
from crm_store import events as event_log
from crm_store import routing_store
from crm_store.documents import intake_id
from crm_store.embedded import EmbeddedStore
from crm_store.intake import MAX_ATTEMPTS
from crm_store.store import Store
from tests.helpers import wait_for
from tests.service import ACCOUNT_SECRET, Client, api_body, in_process, proc, signed_headers

Db = AsyncDatabase[dict[str, Any]]


# --------------------------------------------------------------------------- helpers


def phone(group: int, sender: int) -> str:
    """A distinct Russian mobile number per (drill, sender)."""
    return f"+7904{group:03d}{sender:04d}"


def phone_key(group: int, sender: int) -> str:
    return f"phone:{phone(group, sender)}"


async def post_raw(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], account: str = "site"
) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    """Post a signed API webhook; the status, the headers and the decoded body."""
    raw = orjson.dumps(body)
    headers = signed_headers(ACCOUNT_SECRET[account], raw)
    async with http.post(f"{base}/webhooks/api/{account}", data=raw, headers=headers) as resp:
        data = await resp.read()
        return resp.status, resp.headers, (orjson.loads(data) if data else {})


def accepted_ids(results: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """The intake ids the 2xx answers acknowledged as new."""
    return [mid for status, body in results if 200 <= status < 300 for mid in body["accepted"]]


async def wait_until_routed(db: Db, expected: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until ``expected`` intake records exist and none of them is pending."""

    async def done() -> bool:
        total = await db["intake"].count_documents({})
        pending = await db["intake"].count_documents({"status": "pending"})
        return total == expected and pending == 0

    await wait_for(done, timeout=timeout, interval=0.1, message="intake still pending")


async def ids(db: Db, collection: str, query: dict[str, Any] | None = None) -> list[str]:
    return [d["_id"] async for d in db[collection].find(query or {}, {"_id": 1})]


async def event_types(db: Db) -> Counter[str]:
    return Counter([e["type"] async for e in db["events"].find({}, {"type": 1})])


async def assert_unique_seq(db: Db) -> None:
    seqs = [e.get("seq") async for e in db["events"].find({}, {"seq": 1})]
    assert None not in seqs, "an event without a sequence number"
    dupes = [s for s, n in Counter(seqs).items() if n > 1]
    assert not dupes, f"duplicate event seq values: {dupes}"


async def assert_messages_on_their_senders_leads(
    db: Db, senders: int, per_sender: int | None
) -> None:
    """One lead per sender, and each message targets the lead of its sender."""
    lead_of: dict[str, str] = {}
    async for lead in db["leads"].find({}):
        assert len(lead["identities"]) == 1, lead
        lead_of[lead["identities"][0]] = lead["_id"]
    assert len(lead_of) == senders
    on_lead: Counter[str] = Counter()
    async for msg in db["messages"].find({}):
        [key] = msg["identities"]
        assert msg["target"] == {"kind": "lead", "id": lead_of[key], "open": True}, msg
        on_lead[msg["target"]["id"]] += 1
    if per_sender is not None:
        assert sorted(on_lead.values()) == [per_sender] * senders


async def leads_without_created_event(db: Db) -> str:
    """For a failure message: the leads that have no ``lead.created`` event, with the
    decision their origin message recorded and the events it emitted."""
    announced = {
        e["refs"].get("lead_id") async for e in db["events"].find({"type": "lead.created"})
    }
    lines = []
    async for lead in db["leads"].find({"_id": {"$nin": list(announced)}}):
        origin = lead.get("origin_intake_id")
        msg = await db["messages"].find_one({"_id": origin})
        evs = [
            (e["type"], e.get("seq")) async for e in db["events"].find({"refs.message_id": origin})
        ]
        intake = await db["intake"].find_one({"_id": origin}, {"raw": 0, "message": 0})
        lines.append(
            f"lead {lead['_id']} origin {origin}: decision="
            f"{msg and msg['decision']} events={evs} intake={intake}"
        )
    return "\n".join(lines) or "every lead has its lead.created event"


async def messages_without_attached_event(db: Db) -> str:
    """For a failure message: messages lacking ``message.attached``, and the event feed."""
    attached = {
        e["refs"].get("message_id") async for e in db["events"].find({"type": "message.attached"})
    }
    missing = [m async for m in db["messages"].find({"_id": {"$nin": list(attached)}})]
    counter = await db["counters"].find_one({"_id": "events"})
    feed = [
        (e.get("seq"), e["type"], e["refs"].get("message_id"))
        async for e in db["events"].find({}, sort=[("seq", 1)])
    ]
    return (
        f"messages without message.attached: "
        f"{[(m['_id'], m['decision'], m['routed_at']) for m in missing]}\n"
        f"events counter: {counter}\nfeed: {feed}"
    )


# --------------------------------------------------------------------------- 1. scale-out


@pytest.mark.slow
async def test_three_processes_one_store_one_lead_per_sender(
    mongo_uri: str, db_name: str, db: Db, tmp_path: Path
) -> None:
    procs = [proc(mongo_uri, db_name, tmp_path) for _ in range(3)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with aiohttp.ClientSession() as http:
            clients = [Client(p.base, http) for p in procs]
            posts = []
            for m in range(10):
                for s in range(10):
                    # Round-robin over the processes: each sender reaches all three.
                    client = clients[(m * 10 + s) % 3]
                    posts.append(client.post_api(api_body(f"mp-{s}-{m}", phone=phone(1, s))))
            results = await asyncio.gather(*posts)
        assert [s for s, _ in results] == [200] * 100
        acked = accepted_ids(results)
        assert len(set(acked)) == len(acked) == 100

        await wait_until_routed(db, 100)
        assert await db["intake"].count_documents({"status": "routed"}) == 100
        assert sorted(await ids(db, "messages")) == sorted(acked)
        assert await db["leads"].count_documents({}) == 10
        assert await db["contacts"].count_documents({}) == 10
        await assert_messages_on_their_senders_leads(db, senders=10, per_sender=10)
        await assert_unique_seq(db)
        types = await event_types(db)
        assert types["lead.created"] == 10, await leads_without_created_event(db)
        # contact.created under a lead race: see test_contact_created_is_announced_when_...
        assert types["message.attached"] == 100, await messages_without_attached_event(db)
        for p in procs:
            assert p.popen is not None
            assert p.popen.poll() is None, f"a service process died: {p.log.read_text()[-2000:]}"
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


# --------------------------------------------------------------------------- 2. crash


@pytest.mark.slow
async def test_sigkill_right_after_acknowledging_loses_nothing(
    mongo_uri: str, db_name: str, db: Db, tmp_path: Path
) -> None:
    env = {"OMNIROUTE_INTAKE_LEASE_S": "2"}
    first = proc(mongo_uri, db_name, tmp_path, **env)
    second = proc(mongo_uri, db_name, tmp_path, **env)
    try:
        await first.start()
        async with aiohttp.ClientSession() as http:
            client = Client(first.base, http)
            posts = [
                client.post_api(api_body(f"kill-{s}-{m}", phone=phone(2, s)))
                for m in range(10)
                for s in range(15)
            ]
            results = await asyncio.gather(*posts)
            first.kill()  # SIGKILL the moment the last 2xx is in
        pending_at_kill = await db["intake"].count_documents({"status": "pending"})
        print(f"\n[drill] SIGKILL after 150 acks: {pending_at_kill} intake records pending")

        assert [s for s, _ in results] == [200] * 150
        acked = accepted_ids(results)
        assert len(set(acked)) == len(acked) == 150
        # Nothing acknowledged was lost with the process: it is all in intake already.
        assert sorted(await ids(db, "intake")) == sorted(acked)

        await second.start()
        await wait_until_routed(db, 150)
        assert await db["intake"].count_documents({"status": "failed"}) == 0
        assert await db["intake"].count_documents({"status": "routed"}) == 150
        # Every acknowledged message is stored exactly once, and nothing else is.
        assert sorted(await ids(db, "messages")) == sorted(acked)
        assert await db["messages"].count_documents({}) == 150
        assert await db["leads"].count_documents({}) == 15
        assert await db["contacts"].count_documents({}) == 15
        await assert_messages_on_their_senders_leads(db, senders=15, per_sender=10)
        await assert_unique_seq(db)
        types = await event_types(db)
        print(f"[drill] events after recovery: {dict(types)}")
        assert types["message.attached"] == 150, await messages_without_attached_event(db)
        # The leads created just before the kill are announced by the re-run.
        assert types["lead.created"] == 15, await leads_without_created_event(db)
    finally:
        first.kill()
        await second.stop()


# --------------------------------------------------------------------------- 3. store outage


@pytest.mark.slow
async def test_store_outage_answers_503_and_recovers_without_restart(
    durable_store: EmbeddedStore, db_name: str
) -> None:
    async with in_process(durable_store.uri, db_name) as svc:
        base, http, db = svc.client.base, svc.client.http, svc.store.db

        def body(tag: str, i: int) -> dict[str, Any]:
            return api_body(f"out-{tag}-{i}", phone=phone(3, i % 4))

        before = await asyncio.gather(*(svc.client.post_api(body("before", i)) for i in range(6)))
        assert [s for s, _ in before] == [200] * 6
        await svc.routed()

        await durable_store.stop()
        down = await asyncio.gather(*(post_raw(http, base, body("down", i)) for i in range(5)))
        ready_status, ready_body = await svc.client.get("/readyz")
        health_status, _ = await svc.client.get("/healthz")
        for status, headers, problem in down:
            assert status == 503, (status, problem)
            assert headers["Content-Type"].startswith("application/problem+json")
            assert int(headers["Retry-After"]) > 0
            assert problem["status"] == 503
            assert problem["code"] == "store_unavailable"
        assert ready_status == 503
        assert orjson.loads(ready_body)["code"] == "store_unavailable"
        assert health_status == 200

        await durable_store.start()
        # Same service, same client: the driver must find the store again by itself.
        after = await asyncio.gather(*(svc.client.post_api(body("after", i)) for i in range(6)))
        assert [s for s, _ in after] == [200] * 6
        assert (await svc.client.get("/readyz"))[0] == 200
        acked = accepted_ids(before) + accepted_ids(after)
        assert len(set(acked)) == 12
        await wait_until_routed(db, 12)
        # The 503s stored nothing; what was acknowledged is routed exactly once.
        down_ids = {intake_id("api", "site", f"out-down-{i}") for i in range(5)}
        assert not down_ids & set(await ids(db, "intake"))
        assert sorted(await ids(db, "messages")) == sorted(acked)
        assert await db["intake"].count_documents({"status": "routed"}) == 12

        # The provider retries the refused messages: now they are accepted and routed.
        retried = await asyncio.gather(*(svc.client.post_api(body("down", i)) for i in range(5)))
        assert [s for s, _ in retried] == [200] * 5
        assert set(accepted_ids(retried)) == down_ids
        await wait_until_routed(db, 17)
        assert sorted(await ids(db, "messages")) == sorted([*acked, *down_ids])
        assert await db["intake"].count_documents({"status": "routed"}) == 17
        assert await db["leads"].count_documents({}) == 4
        await assert_messages_on_their_senders_leads(db, senders=4, per_sender=None)
        await assert_unique_seq(db)
        assert (await event_types(db))["message.attached"] == 17, (
            await messages_without_attached_event(db)
        )


@pytest.mark.slow
async def test_store_lost_after_ack_before_routing_is_retried(
    durable_store: EmbeddedStore, db_name: str
) -> None:
    async with in_process(durable_store.uri, db_name) as svc:
        db, worker = svc.store.db, svc.service.worker
        posts = [
            svc.client.post_api(api_body(f"gap-{s}-{m}", phone=phone(4, s)))
            for m in range(8)
            for s in range(10)
        ]
        results = await asyncio.gather(*posts)
        durable_store.kill()  # SIGKILL the store the moment the last 2xx is in
        busy, queued = not worker.idle.is_set(), worker.queue.qsize()
        print(f"\n[drill] store killed after 80 acks: worker busy={busy}, queued={queued}")
        assert [s for s, _ in results] == [200] * 80
        acked = accepted_ids(results)
        assert len(set(acked)) == 80

        await asyncio.sleep(1.5)
        await durable_store.start()
        await wait_until_routed(db, 80, timeout=40)
        errors = svc.service.metrics.registry.get_sample_value(
            "omniroute_store_errors_total", {"op": "route"}
        )
        print(f"[drill] routing store errors during the outage: {errors}")
        assert await db["intake"].count_documents({"status": "routed"}) == 80
        assert sorted(await ids(db, "messages")) == sorted(acked)
        assert await db["leads"].count_documents({}) == 10
        assert await db["contacts"].count_documents({}) == 10
        await assert_messages_on_their_senders_leads(db, senders=10, per_sender=8)
        await assert_unique_seq(db)
        assert (await event_types(db))["message.attached"] == 80, (
            await messages_without_attached_event(db)
        )


# --------------------------------------------------------------------------- 4. poison


async def test_poison_record_is_parked_after_max_attempts(
    mongo_uri: str, db_name: str, db: Db
) -> None:
    now = datetime.now(UTC)
    msg = InboundMessage(
        channel="api",
        account="site",
        provider_id="poison-1",
        sender=Sender(phone=phone(5, 0)),
        text="routing cannot place me",
    )
    poison_id = intake_id("api", "site", "poison-1")
    await db["intake"].insert_one(
        {
            "_id": poison_id,
            "channel": "api",
            "account": "site",
            "provider_id": "poison-1",
            "source_id": "no-such-source",  # not in the config: routing raises
            "message": msg.model_dump(mode="python"),
            "raw": {},
            "received_at": now - timedelta(minutes=1),
            "status": "pending",
            "owner": "a-process-that-died",
            "lease_until": now - timedelta(seconds=30),
            "attempts": 0,
        }
    )
    async with in_process(mongo_uri, db_name, recovery_interval_s=0.2, intake_lease_s=0.2) as svc:
        status, body = await svc.client.post_api(api_body("healthy-1", phone=phone(5, 1)))
        assert status == 200
        [healthy_id] = body["accepted"]

        async def parked() -> bool:
            doc = await db["intake"].find_one({"_id": poison_id})
            return doc is not None and doc["status"] == "failed"

        await wait_for(parked, timeout=15, interval=0.05, message="poison record not parked")
        await svc.routed()
        # Several more sweeps: a parked record is not picked up again.
        await asyncio.sleep(1.0)
        poison = await db["intake"].find_one({"_id": poison_id})
        assert poison is not None
        assert poison["status"] == "failed"
        assert poison["attempts"] == MAX_ATTEMPTS == 5
        assert isinstance(poison["error"], str)
        assert "no-such-source" in poison["error"] or "StopIteration" in poison["error"]
        failures = svc.service.metrics.registry.get_sample_value("omniroute_routing_failures_total")
        assert failures == MAX_ATTEMPTS

        # Meanwhile the healthy message was routed as usual.
        assert await ids(db, "messages") == [healthy_id]
        healthy = await db["intake"].find_one({"_id": healthy_id})
        assert healthy is not None
        assert healthy["status"] == "routed"
        assert await db["leads"].count_documents({}) == 1
        lead = await db["leads"].find_one({})
        assert lead is not None
        assert lead["identities"] == [phone_key(5, 1)]


# --------------------------------------------------------------------------- regressions
# Found by these drills (lost events), fixed in crm_store/events.py, crm_store/indexes.py,
# ingest/worker.py and routing/router.py; the tests below pin each fix.


@pytest.mark.parametrize("interruption", ["store_error", "crash"])
async def test_rerun_after_interrupted_routing_emits_creation_events(
    mongo_uri: str, db_name: str, db: Db, monkeypatch: pytest.MonkeyPatch, interruption: str
) -> None:
    """Routing stops between its writes (contact, lead, message and conversation written;
    events not yet appended): the store drops (the worker retries the batch) or the process
    dies (the recovery sweep re-runs the record). The re-run must still emit the events of
    the contact, lead and conversation this record created — their ids are deterministic,
    so emitting them again is safe, and the event feed, webhooks and automation
    (`on: lead.created`) depend on them.

    Was: the worker retried a half-written batch with rerun=False (only message.attached
    was emitted), and a recovery re-run did not emit conversation.opened again."""
    real_append = event_log.append
    calls = 0

    async def interrupted_once(store: Store, evs: list[Any], **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            if interruption == "store_error":
                raise AutoReconnect("drill: connection lost between routing writes")
            # The process "dies" here: this task never goes on, and its lease runs out.
            expired = datetime.now(UTC) - timedelta(seconds=1)
            # ...and its records look like those of a process that is gone.
            await store.intake.update_many(
                {}, {"$set": {"lease_until": expired, "owner": "crashed-process"}}
            )
            await asyncio.Event().wait()
        await real_append(store, evs, **kw)

    monkeypatch.setattr(event_log, "append", interrupted_once)
    # A long lease: only the simulated crash lets the recovery sweep take the record.
    async with in_process(mongo_uri, db_name, recovery_interval_s=0.2, intake_lease_s=30) as svc:
        status, body = await svc.client.post_api(api_body("rerun-1", phone=phone(6, 0)))
        assert status == 200
        [mid] = body["accepted"]
        await svc.routed()
    assert calls >= 2
    assert await ids(db, "messages") == [mid]
    assert await db["leads"].count_documents({}) == 1
    assert await db["intake"].count_documents({"status": "routed"}) == 1
    await assert_unique_seq(db)
    types = [e["type"] async for e in db["events"].find({}, sort=[("seq", 1)])]
    assert types == ["contact.created", "lead.created", "conversation.opened", "message.attached"]


async def test_concurrent_first_event_appends_are_all_stored(
    durable_store: EmbeddedStore, db_name: str
) -> None:
    """Three routing batches append their events at once while the event counter does not
    exist (a database set up before the counter was seeded). Every event must be stored,
    with distinct sequence numbers. Five fresh starts, so one lucky interleaving does not
    hide the race.

    Was: on the embedded store, concurrent find_one_and_update upserts of the missing
    counter all returned their own count (the same numbers), and insert_new swallowed the
    seq_unique E11000 — the colliding batches' events were silently lost (seen in the
    drills as 7/10 lead.created and 16/17 message.attached)."""
    store = Store.open(durable_store.uri, db_name)
    try:
        await store.ensure_indexes()
        stored: list[int] = []
        for trial in range(5):
            await store.counters.delete_many({})
            await store.events.delete_many({})
            batches = [
                [
                    event_log.event("drill.appended", {}, {}, key=[str(trial), str(b), str(i)])
                    for i in range(n)
                ]
                for b, n in enumerate((4, 2, 3))
            ]
            await asyncio.gather(*(event_log.append(store, batch) for batch in batches))
            stored.append(await store.events.count_documents({}))
            await assert_unique_seq(store.db)
        assert stored == [9] * 5
    finally:
        await store.close()


# Regression: contact.created used to be appended only when the record that created the
# contact also won the lead insert; when another record created the lead first, nobody
# announced the contact (routing/router.py).


async def test_contact_created_is_announced_when_another_record_wins_the_lead(
    mongo_uri: str, db_name: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two messages of one new sender, routed by two workers: X creates the contact, and
    before X inserts its lead, Y (which found X's contact) creates the lead. Exactly one
    contact, one lead — and exactly one contact.created, one lead.created. The SIGKILL
    drill met this interleaving by chance (contact.created 14 for 15 contacts)."""
    x_id = intake_id("api", "site", "race-x")
    x_paused, release = asyncio.Event(), asyncio.Event()
    real_create = routing_store.create_entities

    async def create_entities(
        store: Store, collection: str, guard: str, docs: list[dict[str, Any]]
    ) -> Any:
        if any(d.get("origin_intake_id") == x_id for d in docs) and not release.is_set():
            x_paused.set()  # X has its contact and is about to insert its lead
            await release.wait()
        return await real_create(store, collection, guard, docs)

    monkeypatch.setattr(routing_store, "create_entities", create_entities)
    async with in_process(mongo_uri, db_name) as svc:
        status, _ = await svc.client.post_api(api_body("race-x", phone=phone(7, 0)))
        assert status == 200
        await asyncio.wait_for(x_paused.wait(), timeout=10)
        status, body = await svc.client.post_api(api_body("race-y", phone=phone(7, 0)))
        assert status == 200
        [y_id] = body["accepted"]

        async def y_routed() -> bool:
            doc = await db["intake"].find_one({"_id": y_id})
            return doc is not None and doc["status"] == "routed"

        await wait_for(y_routed, timeout=10, message="Y not routed while X waits")
        release.set()
        await svc.routed()
    assert await db["contacts"].count_documents({}) == 1
    lead = await db["leads"].find_one({})
    assert lead is not None
    assert lead["origin_intake_id"] == y_id  # the interleaving happened as intended
    assert await db["leads"].count_documents({}) == 1
    assert sorted(await ids(db, "messages")) == sorted([x_id, y_id])
    await assert_unique_seq(db)
    types = await event_types(db)
    assert (types["contact.created"], types["lead.created"], types["message.attached"]) == (
        1,
        1,
        2,
    )
