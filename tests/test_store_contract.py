"""The store's contract, through crm_store's own functions, under concurrency.

Runs against ``$OMNIROUTE_TEST_MONGODB_URI`` when set (a real MongoDB replica set), else
against the session's embedded store: ``pytest -m contract`` proves the same guarantees on
both. Uniqueness and claims must come from indexes and atomic writes, never from locks.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import WriteConcern, monitoring

from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import intake
from crm_store.documents import IntakeDoc, intake_id
from crm_store.indexes import INDEXES, ensure_indexes
from crm_store.routing_store import (
    create_contact,
    create_lead,
    load_contact_state,
    reserve_sequence,
)
from crm_store.stages import StageError, move_stage
from crm_store.store import Document, Store

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(DEFAULT_CONFIG_DIR)


async def index_names(store: Store) -> dict[str, set[str]]:
    return {
        name: set((await store[name].index_information()).keys()) - {"_id_"} for name in INDEXES
    }


def expected_indexes() -> dict[str, set[str]]:
    return {name: {m.document["name"] for m in models} for name, models in INDEXES.items()}


# --- indexes ---------------------------------------------------------------------------


async def test_ensure_indexes_is_idempotent(mongo_uri: str, db_name: str) -> None:
    s = Store.open(mongo_uri, db_name, timeout_ms=10_000)
    try:
        first = await ensure_indexes(s.db)
        second = await ensure_indexes(s.db)
        assert first == second
        assert {k: set(v) for k, v in first.items()} == expected_indexes()
        assert await index_names(s) == expected_indexes()
        assert set(await s.db.list_collection_names()) >= set(INDEXES)
    finally:
        await s.close()


async def test_ensure_indexes_concurrently(mongo_uri: str, db_name: str) -> None:
    """Two processes starting at once on an empty database both succeed."""
    a = Store.open(mongo_uri, db_name, timeout_ms=10_000)
    b = Store.open(mongo_uri, db_name, timeout_ms=10_000)
    try:
        results = await asyncio.gather(a.ensure_indexes(), b.ensure_indexes())
        assert results[0] == results[1]
        assert await index_names(a) == expected_indexes()
        # And once more, on the now complete database.
        await asyncio.gather(a.ensure_indexes(), b.ensure_indexes())
        assert await index_names(b) == expected_indexes()
    finally:
        await a.close()
        await b.close()


async def test_unique_indexes_are_really_unique(store: Store) -> None:
    # Identity uniqueness is identities._id's (crm_store/identities.py); the index on
    # contacts.identities serves reads only (a sharded cluster could not hold it unique).
    info = await store.contacts.index_information()
    assert "unique" not in info["identities"]
    info = await store.leads.index_information()
    assert info["one_open_lead_per_contact"]["unique"] is True
    assert info["one_open_lead_per_contact"]["partialFilterExpression"] == {
        "open_contact": {"$exists": True}
    }
    info = await store.events.index_information()
    assert info["seq_unique"]["unique"] is True


# --- intake ----------------------------------------------------------------------------


def intake_doc(provider_id: str, **extra: Any) -> Document:
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
        **extra,
    }


async def test_accept_same_document_twice_is_a_duplicate(store: Store) -> None:
    first = await intake.accept(store, [intake_doc("p-1")], "owner-a", 30)
    assert [d.id for d in first.new] == [intake_id("api", "site", "p-1")]
    assert first.duplicates == []
    assert first.new[0].status == "pending"
    second = await intake.accept(store, [intake_doc("p-1")], "owner-b", 30)
    assert second.new == []
    assert second.duplicates == [intake_id("api", "site", "p-1")]
    # The first acceptance stands: same owner, one record.
    assert await store.intake.count_documents({}) == 1
    rec = await store.intake.find_one({})
    assert rec is not None
    assert rec["owner"] == "owner-a"


class _Writes(monitoring.CommandListener):
    """The write commands a client sends, as sent (the write concern on the wire)."""

    def __init__(self) -> None:
        self.sent: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update"):
            self.sent.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_intake_is_written_with_majority_and_journal(mongo_uri: str, db_name: str) -> None:
    """Nothing is acknowledged to a provider before it is durable: the intake write the
    service makes carries ``w: majority, j: true`` (a w=1 / j=false store or an override
    on the write itself fails here)."""
    writes = _Writes()
    s = Store.open(mongo_uri, db_name, timeout_ms=10_000, event_listeners=[writes])
    try:
        assert s.intake.write_concern == WriteConcern(w="majority", j=True)
        await intake.accept(s, [intake_doc("wc-1")], "owner-a", 30)
    finally:
        await s.close()
    inserts = [c for c in writes.sent if c.get("insert") == "intake"]
    assert inserts, writes.sent
    assert [dict(c.get("writeConcern") or {}) for c in inserts] == [
        {"w": "majority", "j": True}
    ] * len(inserts)


async def test_accept_batch_with_one_stored_document(store: Store) -> None:
    await intake.accept(store, [intake_doc("b-2")], "owner-a", 30)
    batch = [intake_doc("b-1"), intake_doc("b-2"), intake_doc("b-3"), intake_doc("b-4")]
    got = await intake.accept(store, batch, "owner-b", 30)
    assert [d.id for d in got.new] == [intake_id("api", "site", p) for p in ("b-1", "b-3", "b-4")]
    assert got.duplicates == [intake_id("api", "site", "b-2")]
    assert await store.intake.count_documents({}) == 4
    assert await store.intake.count_documents({"owner": "owner-b"}) == 3


async def test_accept_batch_of_only_duplicates(store: Store) -> None:
    await intake.accept(store, [intake_doc("d-1"), intake_doc("d-2")], "owner-a", 30)
    got = await intake.accept(store, [intake_doc("d-1"), intake_doc("d-2")], "owner-b", 30)
    assert got.new == []
    assert sorted(got.duplicates) == sorted(intake_id("api", "site", p) for p in ("d-1", "d-2"))


async def test_concurrent_accepts_of_one_message_store_it_once(store: Store) -> None:
    results = await asyncio.gather(
        *[intake.accept(store, [intake_doc("c-1")], f"owner-{i}", 30) for i in range(20)]
    )
    assert sum(len(r.new) for r in results) == 1
    assert sum(len(r.duplicates) for r in results) == 19
    assert await store.intake.count_documents({}) == 1


async def test_claim_expired_from_four_claimers_claims_each_record_once(store: Store) -> None:
    # 40 records whose accepting process died: their lease is already over.
    docs = [intake_doc(f"x-{i:02d}") for i in range(40)]
    got = await intake.accept(store, docs, "dead-owner", lease_s=-60)
    assert len(got.new) == 40
    # Two live records (lease running) and a routed one: nobody may claim them.
    await intake.accept(store, [intake_doc("live-1"), intake_doc("live-2")], "alive", 300)
    await intake.accept(store, [intake_doc("done-1")], "dead-owner", lease_s=-60)
    await intake.mark_routed(store, [intake_id("api", "site", "done-1")])

    async def expired_left() -> int:
        return await store.intake.count_documents(
            {"status": "pending", "lease_until": {"$lt": datetime.now(UTC)}}
        )

    async def claimer(owner: str) -> list[IntakeDoc]:
        mine: list[IntakeDoc] = []
        while True:
            claimed = await intake.claim_expired(
                store, owner, lease_s=300, limit=random.randint(3, 8)
            )
            mine.extend(claimed)
            if not claimed and await expired_left() == 0:
                return mine
            await asyncio.sleep(0)

    owners = [f"claimer-{i}" for i in range(4)]
    results = await asyncio.gather(*[claimer(o) for o in owners])
    claimed_ids = [d.id for r in results for d in r]
    expected = {intake_id("api", "site", f"x-{i:02d}") for i in range(40)}
    assert len(claimed_ids) == 40  # nobody claimed a record twice …
    assert set(claimed_ids) == expected  # … and every record was claimed
    for owner, mine in zip(owners, results, strict=True):
        for d in mine:
            rec = await store.intake.find_one({"_id": d.id})
            assert rec is not None
            assert rec["owner"] == owner
    live = await store.intake.find_one({"_id": intake_id("api", "site", "live-1")})
    assert live is not None
    assert live["owner"] == "alive"


async def test_release_lets_another_process_claim(store: Store) -> None:
    await intake.accept(store, [intake_doc("r-1")], "leaving", 300)
    assert await intake.claim_expired(store, "other", 30, 10) == []
    await intake.release(store, [intake_id("api", "site", "r-1")], "leaving")
    await asyncio.sleep(0.01)
    claimed = await intake.claim_expired(store, "other", 30, 10)
    assert [d.id for d in claimed] == [intake_id("api", "site", "r-1")]


# --- contacts --------------------------------------------------------------------------


async def test_fifty_concurrent_create_contact_make_one_contact(store: Store) -> None:
    rng = random.Random(7)
    phone = "phone:+79001234567"
    others = ["email:ivan@example.com", "telegram:bot:42", "vk:group:7", "phone:+79990000000"]

    def doc(i: int) -> Document:
        # Every caller knows the phone and some of the other identities, in any order.
        ids = [phone, *rng.sample(others, rng.randint(0, len(others)))]
        rng.shuffle(ids)
        return {"_id": f"contact-{i}", "identities": ids, "origin": "routing"}

    results = await asyncio.gather(*[create_contact(store, doc(i)) for i in range(50)])
    assert await store.contacts.count_documents({}) == 1
    assert len({c.id for c, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    stored = await store.contacts.find_one({})
    assert stored is not None
    assert stored["_id"] == results[0][0].id


async def test_contacts_with_disjoint_identities_are_separate(store: Store) -> None:
    results = await asyncio.gather(
        *[
            create_contact(store, {"_id": f"c-{i}", "identities": [f"phone:+7900000000{i}"]})
            for i in range(10)
        ]
    )
    assert all(created for _, created in results)
    assert await store.contacts.count_documents({}) == 10


async def test_create_contact_with_a_taken_id_returns_the_owner(store: Store) -> None:
    _, created = await create_contact(store, {"_id": "c-1", "identities": ["email:a@b.co"]})
    assert created
    again, created = await create_contact(store, {"_id": "c-1", "identities": ["email:x@y.co"]})
    assert (again.id, created) == ("c-1", False)
    # The new key was claimed for c-1, so c-1 shows it (identities and contact agree).
    assert again.identities == ["email:a@b.co", "email:x@y.co"]


# --- leads -----------------------------------------------------------------------------


def lead_doc(i: int, contact_id: str = "contact-1") -> Document:
    now = datetime.now(UTC)
    return {
        "_id": f"lead-{i}",
        "contact_id": contact_id,
        "pipeline_id": "leads",
        "stage_id": "new",
        "open": True,
        "open_contact": contact_id,
        "is_repeat": False,
        "origin_intake_id": f"intake-{i}",
        "fields": {},
        "created_at": now,
    }


async def test_an_open_service_deal_is_history_not_the_active_deal(store: Store) -> None:
    """A contact whose newest open deal is in a service pipeline (an NPS survey): routing's
    active deal is the open sales deal if there is one, else none — and the contact still
    has history (a repeat lead, not a new one)."""
    at = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)

    def deal(i: str, pipeline: str, contact: str, minutes: int, *, open_: bool = True) -> Document:
        return {
            "_id": i,
            "contact_id": contact,
            "pipeline_id": pipeline,
            "stage_id": "survey" if pipeline == "nps" else "estimate",
            "open": open_,
            "last_activity_at": at.replace(minute=minutes),
        }

    await store.deals.insert_many(
        [
            deal("order-a", "orders", "contact-a", 1),
            deal("survey-a", "nps", "contact-a", 5),  # newer, but a survey
            deal("won-b", "orders", "contact-b", 1, open_=False),
            deal("survey-b", "nps", "contact-b", 5),
        ]
    )
    everything = await load_contact_state(store, ["contact-a", "contact-b"])
    assert {c: d.id for c, d in everything.active_deal.items()} == {
        "contact-a": "survey-a",
        "contact-b": "survey-b",
    }
    sales = await load_contact_state(store, ["contact-a", "contact-b"], frozenset({"nps"}))
    assert {c: d.id for c, d in sales.active_deal.items()} == {"contact-a": "order-a"}
    assert sales.history == {"contact-a", "contact-b"}


async def test_thirty_concurrent_create_lead_make_one_open_lead(
    store: Store, config: AppConfig
) -> None:
    results = await asyncio.gather(*[create_lead(store, lead_doc(i)) for i in range(30)])
    ids = {lead.id for lead, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    assert await store.leads.count_documents({"open": True}) == 1
    [winner] = ids

    # Closed in a final stage, the contact may have a new open lead.
    moved = await move_stage(
        store, "lead", winner, config.pipeline("leads"), "not_interested", by="anna"
    )
    assert moved["open"] is False
    closed = await store.leads.find_one({"_id": winner})
    assert closed is not None
    assert (closed["open"], closed["stage_id"], closed["outcome"]) == (
        False,
        "not_interested",
        "failed",
    )
    assert "open_contact" not in closed
    event = await store.events.find_one({"type": "lead.stage_changed"})
    assert event is not None
    assert event["data"]["from"] == "new"
    assert event["data"]["to"] == "not_interested"

    repeat, created = await create_lead(store, lead_doc(100))
    assert created
    assert repeat.id == "lead-100"
    # … and again exactly one, however many race for it.
    more = await asyncio.gather(*[create_lead(store, lead_doc(200 + i)) for i in range(10)])
    assert {lead.id for lead, _ in more} == {"lead-100"}
    assert await store.leads.count_documents({"open": True}) == 1
    assert await store.leads.count_documents({}) == 2


async def test_open_leads_of_different_contacts_do_not_collide(store: Store) -> None:
    results = await asyncio.gather(
        *[create_lead(store, lead_doc(i, contact_id=f"contact-{i}")) for i in range(10)]
    )
    assert all(created for _, created in results)
    assert await store.leads.count_documents({"open": True}) == 10


# --- event sequence --------------------------------------------------------------------


async def test_reserve_sequence_hands_out_contiguous_ranges(store: Store) -> None:
    firsts = await asyncio.gather(*[reserve_sequence(store, 5) for _ in range(20)])
    numbers = [n for f in firsts for n in range(f, f + 5)]
    assert len(set(numbers)) == 100
    assert sorted(numbers) == list(range(1, 101))
    assert sorted(firsts) == list(range(1, 101, 5))
    assert await reserve_sequence(store, 1) == 101


# --- stage moves -----------------------------------------------------------------------


async def insert_deal(store: Store, stage: str, fields: dict[str, Any]) -> str:
    await store.deals.insert_one(
        {
            "_id": "deal-1",
            "contact_id": "contact-1",
            "pipeline_id": "orders",
            "stage_id": stage,
            "open": True,
            "fields": fields,
        }
    )
    return "deal-1"


@pytest.mark.parametrize(
    ("stage", "fields", "target", "missing"),
    [
        ("estimate", {}, "approval", "estimate_amount"),
        ("approval", {"estimate_amount": 1000}, "awaiting_payment", "contract_number"),
        ("approval", {"contract_number": "C-1"}, "awaiting_payment", "amount"),
        ("approval", {"contract_number": "", "amount": 5}, "awaiting_payment", "contract_number"),
        ("order_ready", {"shipping_date": "2026-12-01"}, "shipping", "delivery_address"),
        ("shipping", {"installation_date": None}, "installation", "installation_date"),
    ],
)
async def test_move_stage_refuses_a_missing_required_field(
    store: Store, config: AppConfig, stage: str, fields: dict[str, Any], target: str, missing: str
) -> None:
    deal_id = await insert_deal(store, stage, fields)
    with pytest.raises(StageError) as info:
        await move_stage(store, "deal", deal_id, config.pipeline("orders"), target)
    assert info.value.field == missing
    assert missing in str(info.value)
    unchanged = await store.deals.find_one({"_id": deal_id})
    assert unchanged is not None
    assert unchanged["stage_id"] == stage
    assert await store.events.count_documents({}) == 0


async def test_move_stage_with_the_required_field_succeeds(store: Store, config: AppConfig) -> None:
    deal_id = await insert_deal(store, "estimate", {"estimate_amount": 150000})
    moved = await move_stage(store, "deal", deal_id, config.pipeline("orders"), "approval")
    assert (moved["stage_id"], moved["open"]) == ("approval", True)
    stored = await store.deals.find_one({"_id": deal_id})
    assert stored is not None
    assert stored["stage_id"] == "approval"
    assert await store.events.count_documents({"type": "deal.stage_changed"}) == 1


@pytest.mark.parametrize(
    ("current", "target"), [("design", "approval"), ("production", "estimate")]
)
async def test_move_stage_refuses_a_backward_move(
    store: Store, config: AppConfig, current: str, target: str
) -> None:
    # The furniture maker's orders may go back (the technologist's return) until shipped;
    # the same pipeline with forbid_backward set refuses every backward move.
    orders = config.pipeline("orders").model_copy(update={"forbid_backward": True})
    everything = {
        f: "x" for s in orders.stages for f in s.required_fields
    }  # no field is missing: only the direction is wrong
    deal_id = await insert_deal(store, current, everything)
    with pytest.raises(StageError) as info:
        await move_stage(store, "deal", deal_id, orders, target)
    assert info.value.field is None
    assert "back" in str(info.value)
    unchanged = await store.deals.find_one({"_id": deal_id})
    assert unchanged is not None
    assert unchanged["stage_id"] == current
    assert await store.events.count_documents({}) == 0


async def test_forward_and_final_moves_are_allowed_in_forbid_backward(
    store: Store, config: AppConfig
) -> None:
    orders = config.pipeline("orders").model_copy(update={"forbid_backward": True})
    deal_id = await insert_deal(store, "production", {})
    await move_stage(store, "deal", deal_id, orders, "order_ready")
    # A final stage is always reachable (an order can be lost at any point).
    moved = await move_stage(store, "deal", deal_id, orders, "lost")
    assert (moved["stage_id"], moved["open"], moved["outcome"]) == ("lost", False, "failed")
    assert await store.events.count_documents({"type": "deal.stage_changed"}) == 2


async def test_backward_move_is_allowed_where_not_forbidden(
    store: Store, config: AppConfig
) -> None:
    leads = config.pipeline("leads")
    assert not leads.forbid_backward
    await store.leads.insert_one({**lead_doc(1), "stage_id": "in_work"})
    moved = await move_stage(store, "lead", "lead-1", leads, "new")
    assert moved["stage_id"] == "new"


async def test_move_to_unknown_stage_or_entity_is_refused(store: Store, config: AppConfig) -> None:
    orders = config.pipeline("orders")
    deal_id = await insert_deal(store, "estimate", {})
    with pytest.raises(StageError):
        await move_stage(store, "deal", deal_id, orders, "no_such_stage")
    with pytest.raises(StageError):
        await move_stage(store, "deal", "no-such-deal", orders, "approval")


async def test_closing_a_lead_as_spam_marks_the_contact_and_its_conversations(
    store: Store, config: AppConfig
) -> None:
    await store.contacts.insert_one({"_id": "contact-1", "identities": ["phone:+79001234567"]})
    lead, _ = await create_lead(store, lead_doc(1))
    await store.conversations.insert_one(
        {"_id": "conv-1", "target": {"kind": "lead", "id": lead.id, "open": True}}
    )
    await move_stage(store, "lead", lead.id, config.pipeline("leads"), "spam")
    contact = await store.contacts.find_one({"_id": "contact-1"})
    conv = await store.conversations.find_one({"_id": "conv-1"})
    assert contact is not None
    assert conv is not None
    assert contact["spam"] is True
    assert conv["target"]["open"] is False
