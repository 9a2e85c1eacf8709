"""Identity → contact through the ``identities`` collection (crm_store/identities.py):
get-or-create under concurrency (one process, three processes), merges, identities added
in a conversation, deletes, the migration of a store in the old layout, and routing's
batched creations (one insert_many per collection, one $inc per line)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, IndexModel, monitoring

from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import contacts
from crm_store import routing_store as rs
from crm_store.documents import IntakeDoc, intake_id
from crm_store.migrations import migrate_identities
from crm_store.store import Document, Store
from ingest.cli import build_parser
from ingest.cli.db_cmds import cmd_db_migrate
from routing.decide import pick_round_robin
from routing.router import Router
from tests.service import api_body, in_process

ROOT = Path(__file__).resolve().parent.parent
PHONE = "phone:+79005550101"
EMAIL = "email:anna@example.test"


async def owners(store: Store) -> dict[str, str]:
    return {d["_id"]: d["contact_id"] async for d in store["identities"].find({})}


async def assert_consistent(store: Store) -> None:
    """Every key a live contact shows points at it, and every key points at a live
    contact that shows it."""
    owned = await owners(store)
    live = {
        d["_id"]: d
        async for d in store.contacts.find({"merged_into": None, "deleted": {"$ne": True}})
    }
    for cid, d in live.items():
        for k in d.get("identities") or []:
            if not k.startswith(("intake:", "merged:", "deleted:")):
                assert owned.get(k) == cid, (k, cid, owned.get(k))
    for k, cid in owned.items():
        assert cid in live, (k, cid)
        assert k in live[cid]["identities"], (k, cid)


# --------------------------------------------------------------------------- get-or-create


async def test_thirty_concurrent_creators_make_one_contact(store: Store) -> None:
    docs = [{"_id": f"c-{i:02d}", "identities": [PHONE, EMAIL], "name": f"n{i}"} for i in range(30)]
    results = await asyncio.gather(*(rs.create_contact(store, d) for d in docs))
    ids = {c.id for c, _ in results}
    assert len(ids) == 1
    assert [created for _, created in results].count(True) == 1
    assert await store.contacts.count_documents({}) == 1
    [winner] = ids
    assert await owners(store) == {PHONE: winner, EMAIL: winner}
    await assert_consistent(store)


async def test_creators_across_three_processes_make_one_contact(
    store: Store, mongo_uri: str, db_name: str
) -> None:
    keys = [PHONE, EMAIL]
    procs = [
        await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "tests.identity_worker", mongo_uri, db_name, f"p{n}", "10"],
            *keys,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]
    for p in procs:  # all connected
        assert p.stdout is not None
        assert await asyncio.wait_for(p.stdout.readline(), 30) == b"ready\n"
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 60)
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-2000:] for _, e in outs]
    results = [tuple(r) for out, _ in outs for r in json.loads(out)]
    assert len(results) == 30
    assert len({cid for cid, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert await store.contacts.count_documents({}) == 1
    await assert_consistent(store)


async def test_a_key_whose_contact_is_not_written_yet_is_adopted(store: Store) -> None:
    # A creator claimed the key and died before writing its contact.
    await store["identities"].insert_one({"_id": PHONE, "contact_id": "c-dead"})
    assert await rs.load_contacts(store, [PHONE]) == []  # unknown to readers
    contact, created = await rs.create_contact(
        store, {"_id": "c-new", "identities": [PHONE, EMAIL], "name": "Anna"}
    )
    assert (contact.id, created, contact.name) == ("c-dead", True, "Anna")
    assert await owners(store) == {PHONE: "c-dead", EMAIL: "c-dead"}
    # The dead creator's re-run finds its contact written: it uses it.
    again, created = await rs.create_contact(store, {"_id": "c-dead", "identities": [PHONE]})
    assert (again.id, created) == ("c-dead", False)
    await assert_consistent(store)


async def test_the_strongest_key_decides_and_a_third_owner_keeps_its_key(store: Store) -> None:
    await rs.create_contact(store, {"_id": "c-phone", "identities": [PHONE]})
    await rs.create_contact(store, {"_id": "c-mail", "identities": [EMAIL]})
    tg = "telegram:bot:42"
    contact, created = await rs.create_contact(
        store, {"_id": "c-x", "identities": [PHONE, EMAIL, tg]}
    )
    assert (contact.id, created) == ("c-phone", False)
    assert await owners(store) == {PHONE: "c-phone", EMAIL: "c-mail", tg: "c-phone"}
    assert sorted(contact.identities) == sorted([PHONE, tg])
    await assert_consistent(store)


# --------------------------------------------------------------------------- merge, delete


async def test_merge_repoints_identities_and_delete_frees_them(store: Store) -> None:
    await rs.create_contact(store, {"_id": "c-a", "identities": [PHONE]})
    await rs.create_contact(store, {"_id": "c-b", "identities": [EMAIL]})
    await contacts.merge(store, "c-a", "c-b", by="u1")
    assert await owners(store) == {PHONE: "c-a", EMAIL: "c-a"}
    [found] = await rs.load_contacts(store, [EMAIL])
    assert found.id == "c-a"
    await assert_consistent(store)

    assert await contacts.delete(store, "c-a", by="u1")
    assert await owners(store) == {}
    assert await rs.load_contacts(store, [PHONE, EMAIL]) == []
    fresh, created = await rs.create_contact(store, {"_id": "c-c", "identities": [PHONE]})
    assert (fresh.id, created) == ("c-c", True)
    await assert_consistent(store)


async def test_keys_left_by_an_interrupted_delete_are_taken_over(store: Store) -> None:
    await rs.create_contact(store, {"_id": "c-a", "identities": [PHONE]})
    # The delete marked the contact and died before freeing its keys.
    await store.contacts.update_one(
        {"_id": "c-a"},
        {"$set": {"deleted": True, "deleted_identities": [PHONE], "identities": ["deleted:c-a"]}},
    )
    contact, created = await rs.create_contact(store, {"_id": "c-b", "identities": [PHONE]})
    assert (contact.id, created) == ("c-b", True)
    assert await owners(store) == {PHONE: "c-b"}
    await assert_consistent(store)


async def test_a_merge_of_an_unmigrated_loser_claims_its_keys(store: Store) -> None:
    await rs.create_contact(store, {"_id": "c-a", "identities": [PHONE]})
    await store.contacts.insert_one({"_id": "c-old", "identities": [EMAIL]})  # old layout
    await contacts.merge(store, "c-a", "c-old", by="u1")
    assert await owners(store) == {PHONE: "c-a", EMAIL: "c-a"}
    await assert_consistent(store)


# --------------------------------------------------------------------------- in a conversation


async def test_a_phone_shared_in_a_chat_joins_the_contact_unless_another_owns_it(
    mongo_uri: str, db_name: str
) -> None:
    other_phone = "+79005550202"
    async with in_process(mongo_uri, db_name) as svc:
        post = svc.client.post_api
        assert (await post(api_body("k-1", email="anna@example.test", thread_id="t1")))[0] == 200
        assert (await post(api_body("k-2", phone=other_phone)))[0] == 200  # another person
        await svc.routed()
        body = api_body("k-3", phone="+7 900 555-01-01", email="anna@example.test", thread_id="t1")
        assert (await post(body))[0] == 200
        await svc.routed()
        body = api_body("k-4", phone=other_phone, email="anna@example.test", thread_id="t1")
        assert (await post(body))[0] == 200
        await svc.routed()
        store = svc.store
        owned = await owners(store)
        anna = owned[EMAIL]
        assert owned[PHONE] == anna  # joined
        assert owned[f"phone:{other_phone}"] != anna  # stays with its owner
        doc = await store.contacts.find_one({"_id": anna})
        assert doc is not None
        assert sorted(doc["identities"]) == sorted([EMAIL, PHONE])
        assert doc["phones"] == ["+79005550101"]
        await assert_consistent(store)


# --------------------------------------------------------------------------- batched routing


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        coll = event.command.get(event.command_name)
        self.seen[(event.command_name, coll if isinstance(coll, str) else "")] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def intake_record(n: int, phone: str, thread: str | None = None) -> Document:
    pid = f"batch-{n}"
    return {
        "_id": intake_id("api", "site", pid),
        "channel": "api",
        "account": "site",
        "provider_id": pid,
        "source_id": "site",
        "status": "pending",
        "message": {
            "channel": "api",
            "account": "site",
            "provider_id": pid,
            "sender": {"phone": phone, "name": f"Customer {n}"},
            "text": "a kitchen, please",
            "thread_id": thread,
        },
        "received_at": datetime.now(UTC),
    }


async def test_a_batch_of_new_senders_is_written_in_one_insert_per_collection(
    mongo_uri: str, db_name: str, store: Store
) -> None:
    config = load_config(DEFAULT_CONFIG_DIR)
    # Two messages of sender 0: the second attaches to the lead the first creates.
    docs = [intake_record(n, f"+7900777{n:04d}") for n in range(20)]
    docs.append(intake_record(20, "+79007770000"))
    await store.intake.insert_many(docs)
    records = [IntakeDoc.model_validate(d) for d in docs]
    listener = Commands()
    watched = Store.open(mongo_uri, db_name, timeout_ms=10_000, event_listeners=[listener])
    try:
        routed = await Router(watched, config).route(records)
    finally:
        await watched.close()
    assert listener.seen[("insert", "contacts")] == 1
    assert listener.seen[("insert", "leads")] == 1
    assert listener.seen[("insert", "identities")] == 1
    assert listener.seen[("findAndModify", "counters")] == 2  # the line's turns; events
    assert await store.contacts.count_documents({}) == 20
    assert await store.leads.count_documents({}) == 20
    assert routed[20].target == routed[0].target
    assert routed[20].decision.rule.value == "open_lead"
    users = [u.id for u in config.line_users("sales")]
    got = [d["responsible_id"] async for d in store.leads.find({}, sort=[("created_at", 1)])]
    assert Counter(got) == Counter(pick_round_robin(users, t) for t in range(1, 21))
    turn = await store.counters.find_one({"_id": "round_robin:sales"})
    assert turn is not None
    assert turn["value"] == 20
    events = Counter([e["type"] async for e in store.events.find({})])
    assert (events["contact.created"], events["lead.created"], events["message.attached"]) == (
        20,
        20,
        21,
    )
    await assert_consistent(store)
    # Routed again (a crash before the records were marked): nothing new is written.
    again = await Router(store, config).route(records, rerun=True)
    assert [r.target for r in again] == [r.target for r in routed]
    assert await store.contacts.count_documents({}) == 20
    assert await store.leads.count_documents({}) == 20
    assert Counter([e["type"] async for e in store.events.find({})]) == events


async def test_a_batch_that_loses_a_creation_race_attaches_to_the_winner(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(DEFAULT_CONFIG_DIR)
    docs = [intake_record(n, f"+7900888{n:04d}") for n in range(3)]
    await store.intake.insert_many(docs)
    records = [IntakeDoc.model_validate(d) for d in docs]
    # Another process won sender 1 (in another chat) after this batch read the store: its
    # contact and lead exist, this batch does not know them yet.
    router = Router(store, config)
    other = intake_record(99, "+79008880001", thread="elsewhere")
    [elsewhere] = await router.route([IntakeDoc.model_validate(other)])

    async def stale(store_: Store, keys: Any, ids: Any = ()) -> list[Any]:
        return []

    monkeypatch.setattr(rs, "load_contacts", stale)
    routed = await router.route(records)
    assert routed[1].target == elsewhere.target
    assert routed[1].decision.rule.value == "open_lead"
    assert await store.leads.count_documents({}) == 3
    assert await store.contacts.count_documents({}) == 3
    await assert_consistent(store)


# --------------------------------------------------------------------------- migration


async def test_migrate_builds_identities_once_and_reports_conflicts(store: Store) -> None:
    # Today's layout: keys only on the contacts, under the unique multikey index.
    await store.contacts.drop_indexes()
    await store.contacts.create_indexes(
        [IndexModel([("identities", ASCENDING)], name="identities_unique", unique=True)]
    )
    await store["identities"].drop()
    await store.leads.drop_indexes()  # the open-lead guard as it was: not shardable
    await store.leads.create_indexes(
        [
            IndexModel(
                [("open_contact", ASCENDING)],
                name="one_open_lead_per_contact",
                unique=True,
                partialFilterExpression={"open_contact": {"$exists": True}},
            )
        ]
    )
    await store.contacts.insert_many(
        [
            {"_id": "c1", "identities": [PHONE, EMAIL]},
            {"_id": "c2", "identities": ["phone:+79005550303"]},
            {"_id": "c3", "identities": ["intake:x"]},
            {"_id": "m1", "identities": ["merged:m1"], "merged_into": "c1"},
            {"_id": "d1", "identities": ["deleted:d1"], "deleted": True},
        ]
    )
    # An index an earlier version kept on the event log, read by nothing now.
    await store.events.create_indexes(
        [IndexModel([("type", ASCENDING), ("seq", ASCENDING)], name="type_seq")]
    )
    # The reminder pass's index before it read the reminders still to send.
    await store["tasks"].create_indexes(
        [IndexModel([("status", ASCENDING), ("remind_at", ASCENDING)], name="reminders")]
    )
    # A process of the new version claimed c2's number meanwhile for another contact.
    await store["identities"].insert_one({"_id": "phone:+79005550303", "contact_id": "c9"})

    dry = await migrate_identities(store, dry_run=True)
    dropped = [
        "contacts.identities_unique",
        "events.type_seq",
        "leads.one_open_lead_per_contact",
        "tasks.reminders",
    ]
    assert (dry.keys_written, sorted(dry.dropped)) == (2, dropped)
    assert await store["identities"].count_documents({}) == 1

    first = await migrate_identities(store)
    assert (first.contacts, first.keys_written, sorted(first.dropped)) == (3, 2, dropped)
    assert [(c.key, c.owner, c.other) for c in first.conflicts] == [
        ("phone:+79005550303", "c9", "c2")
    ]
    assert await owners(store) == {PHONE: "c1", EMAIL: "c1", "phone:+79005550303": "c9"}
    info = await store.contacts.index_information()
    assert "identities_unique" not in info
    assert "unique" not in info["identities"]
    assert "contact" in await store["identities"].index_information()
    guard = (await store.leads.index_information())["one_open_lead_per_contact"]
    assert [k for k, _ in guard["key"]] == ["contact_id", "open_contact"]
    assert guard["unique"] is True
    assert "type_seq" not in await store.events.index_information()
    # A store upgraded without the migration loses it at the service's start.
    await store.events.create_indexes(
        [IndexModel([("type", ASCENDING), ("seq", ASCENDING)], name="type_seq")]
    )
    await store.ensure_indexes()
    assert "type_seq" not in await store.events.index_information()

    snapshot = [d async for d in store["identities"].find({}, sort=[("_id", 1)])]
    second = await migrate_identities(store)
    assert not second.wrote
    assert second.keys_written == 0
    assert second.conflicts == first.conflicts
    assert [d async for d in store["identities"].find({}, sort=[("_id", 1)])] == snapshot


async def test_the_service_migrates_an_old_store_when_it_starts(
    store: Store, mongo_uri: str, db_name: str
) -> None:
    """An upgrade needs no manual step: a store with only the old layout is migrated before
    the service routes anything, so a known customer's next message finds their contact."""
    await store.contacts.drop_indexes()
    await store.contacts.create_indexes(
        [IndexModel([("identities", ASCENDING)], name="identities_unique", unique=True)]
    )
    await store["identities"].drop()
    await store.contacts.insert_one(
        {"_id": "c-old", "identities": [PHONE], "phones": ["+79005550101"], "name": "Anna"}
    )
    async with in_process(mongo_uri, db_name) as svc:
        assert "identities_unique" not in await svc.store.contacts.index_information()
        status, body = await svc.client.post_api(api_body("old-1", phone="+7 900 555-01-01"))
        assert status == 200, body
        await svc.routed()
        [mid] = body["accepted"]
        msg = await svc.store.messages.find_one({"_id": mid})
        assert msg is not None
        assert msg["contact_id"] == "c-old"
        assert await svc.store.contacts.count_documents({}) == 1
        assert await owners(svc.store) == {PHONE: "c-old"}


def test_the_cli_has_db_migrate() -> None:
    args = build_parser().parse_args(["db", "migrate", "--dry-run"])
    assert args.func is cmd_db_migrate
    assert args.dry_run is True
    assert build_parser().parse_args(["db", "indexes"]).db_command == "indexes"
