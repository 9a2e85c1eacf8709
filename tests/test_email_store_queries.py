"""The store reads and writes of the mail intake and routing that were rewritten for speed
on the embedded server (``$in`` lists in groups, no ``$or``, the claim's index query):
each must still find exactly what the single query found, across group boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from crm_store import intake
from crm_store import routing_store as rs
from crm_store.documents import intake_id
from crm_store.store import Document, Store
from ingest.mail_sync import _stored

MORE_THAN_A_CHUNK = intake.ID_CHUNK * 2 + 37


def record(n: int, **extra: Any) -> Document:
    pid = f"m-{n:04d}@example.test"
    return {
        "_id": intake_id("email", "sales", pid),
        "channel": "email",
        "account": "sales",
        "provider_id": pid,
        "source_id": "mail_sales",
        "message": {
            "channel": "email",
            "account": "sales",
            "provider_id": pid,
            "sender": {"email": f"c{n}@example.test"},
            "text": "hello",
            "meta": {"content_hash": f"h{n}"},
        },
        "received_at": datetime.now(UTC),
        **extra,
    }


async def test_stored_finds_every_record_across_groups(store: Store) -> None:
    docs = [record(n) for n in range(MORE_THAN_A_CHUNK)]
    await intake.accept(store, docs, "me", 300)
    ids = [d["_id"] for d in docs]
    absent = [intake_id("email", "sales", f"absent-{n}") for n in range(30)]
    found = await _stored(store, [*absent, *ids, ids[0]], {"message.meta.content_hash": 1})
    assert set(found) == set(ids)
    assert found[ids[5]]["message"]["meta"]["content_hash"] == "h5"
    assert await _stored(store, []) == {}


async def test_renew_and_mark_routed_reach_every_record(store: Store) -> None:
    docs = [record(n) for n in range(MORE_THAN_A_CHUNK)]
    await intake.accept(store, docs, "me", 5)
    ids = [d["_id"] for d in docs]
    await intake.renew(store, ids, "me", 3600)
    soon = datetime.now(UTC) + timedelta(seconds=60)
    assert await store.intake.count_documents({"lease_until": {"$lt": soon}}) == 0
    await intake.mark_routed(store, ids[:-1])
    assert await store.intake.count_documents({"status": "routed"}) == len(ids) - 1
    left = await store.intake.find_one({"status": "pending"})
    assert left is not None
    assert (left["_id"], left["owner"]) == (ids[-1], "me")


async def test_claim_skips_records_still_in_our_queue(store: Store) -> None:
    # Ours, expired: 0–2 still queued here, 8 written by a request that then failed (in
    # no queue); a dead process's, expired: 3–7; a live process's: 9.
    await intake.accept(store, [record(n) for n in (0, 1, 2, 8)], "me", -60)
    await intake.accept(store, [record(n) for n in range(3, 8)], "dead", -60)
    await intake.accept(store, [record(9)], "alive", 300)
    queued = {record(n)["_id"] for n in range(3)}
    first = await intake.claim_expired(store, "me", 300, 2, queued)
    rest = await intake.claim_expired(store, "me", 300, 10, queued)
    got = [d.id for d in first + rest]
    assert len(first) == 2
    assert sorted(got) == sorted(record(n)["_id"] for n in (3, 4, 5, 6, 7, 8))
    assert await intake.claim_expired(store, "me", 300, 10, queued) == []
    # Another process may take our queued ones once they expired, never the live one.
    theirs = await intake.claim_expired(store, "other", 300, 10)
    assert sorted(d.id for d in theirs) == sorted(record(n)["_id"] for n in range(3))


async def test_contacts_by_identity_or_id_each_once(store: Store) -> None:
    contacts = [
        {"_id": f"contact-{n}", "identities": [f"email:c{n}@example.test", f"phone:+7900{n:07d}"]}
        for n in range(MORE_THAN_A_CHUNK)
    ]
    await store.contacts.insert_many(contacts)
    await store["identities"].insert_many(
        [{"_id": k, "contact_id": c["_id"]} for c in contacts for k in c["identities"]]
    )
    keys = [f"email:c{n}@example.test" for n in range(0, MORE_THAN_A_CHUNK, 2)]
    ids = [f"contact-{n}" for n in range(0, MORE_THAN_A_CHUNK, 3)]
    got = await rs.load_contacts(store, [*keys, "email:nobody@example.test"], ids)
    expected = {f"contact-{n}" for n in range(MORE_THAN_A_CHUNK) if n % 2 == 0 or n % 3 == 0}
    assert sorted(c.id for c in got) == sorted(expected)
    assert await rs.load_contacts(store, [], []) == []
    # A creation that collides on an identity answers with the owner.
    owner, created = await rs.create_contact(
        store, {"_id": "contact-new", "identities": ["phone:+79000000004", "email:x@example.test"]}
    )
    assert (owner.id, created) == ("contact-4", False)
    same, created = await rs.create_contact(
        store, {"_id": "contact-7", "identities": ["email:other@example.test"]}
    )
    assert (same.id, created) == ("contact-7", False)


async def test_contact_state_across_groups_picks_the_latest_open_deal(store: Store) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    n_contacts = MORE_THAN_A_CHUNK
    deals: list[Document] = []
    for n in range(n_contacts):
        for k, is_open in enumerate((True, True, False)):
            deals.append(
                {
                    "_id": f"deal-{n}-{k}",
                    "contact_id": f"contact-{n}",
                    "open": is_open,
                    "pipeline_id": "p",
                    "stage_id": "s",
                    # The closed one is the most recent: not the active deal.
                    "last_activity_at": t0 + timedelta(hours=k + n),
                    "origin_intake_id": f"intake-{n}-{k}",
                }
            )
    await store.deals.insert_many(deals)
    await store.leads.insert_one(
        {"_id": "lead-1", "contact_id": "contact-3", "pipeline_id": "p", "stage_id": "s"}
    )
    state = await rs.load_contact_state(store, [f"contact-{n}" for n in range(n_contacts)])
    assert len(state.active_deal) == n_contacts
    assert all(state.active_deal[f"contact-{n}"].id == f"deal-{n}-1" for n in range(n_contacts))
    assert state.open_lead["contact-3"].id == "lead-1"
    assert len(state.history) == n_contacts
    assert state.created_by["intake-5-2"].id == "deal-5-2"
