"""Routing inserts the conversations a batch opens instead of upserting them
(routing_store.as_inserted / upsert_many): the inserted document must be the one the
upsert would have created, and a conversation that exists after all (a re-run, another
process) must still get the upsert."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import UpdateOne

from crm_store import routing_store as rs
from crm_store.store import Document, Store


def conversation_update(n: int, at: datetime) -> Document:
    """An update as routing/router.py builds it for a new conversation."""
    return {
        "$setOnInsert": {
            "channel": "email",
            "account": "sales",
            "thread": f"sender:email:c{n}@example.test",
            "created_at": at,
            "origin_intake_id": f"in-{n}",
        },
        "$max": {"last_message_at": at, "last_inbound_at": at},
        "$set": {
            "last_inbound": {"provider_id": f"<{n}@x>", "references": [], "text": "hi"},
            "status": "open",
            "snoozed_until": None,
            "target": {"kind": "lead", "id": f"lead-{n}", "open": True},
            "contact_id": f"contact-{n}",
        },
        "$addToSet": {"sender_keys": {"$each": [f"email:c{n}@x", "phone:+1", f"email:c{n}@x"]}},
        "$inc": {"message_count": 1, "unread": 1},
    }


def ids(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"conv-{run}-{i}" for i in range(n)]


async def test_inserted_document_is_what_the_upsert_creates(store: Store) -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    upserted, inserted = ids(2)
    update = conversation_update(1, at)
    await store.conversations.update_one({"_id": upserted}, update, upsert=True)
    doc = rs.as_inserted(inserted, update)
    assert doc is not None
    await store.conversations.insert_one(doc)
    a = await store.conversations.find_one({"_id": upserted}, {"_id": 0})
    b = await store.conversations.find_one({"_id": inserted}, {"_id": 0})
    assert a == b
    assert b is not None
    assert b["sender_keys"] == ["email:c1@x", "phone:+1"]


@pytest.mark.parametrize(
    "update",
    [
        {"$set": {"target.id": "x"}},
        {"$push": {"sender_keys": "k"}},
        {"$unset": {"status": ""}},
        {"$set": {"a": 1}, "$setOnInsert": {"a": 2}},
        {"$addToSet": {"sender_keys": {"$each": [{"k": 1}]}}},
    ],
)
def test_updates_it_does_not_model_stay_upserts(update: dict[str, Any]) -> None:
    assert rs.as_inserted("c", update) is None


async def test_upsert_many_falls_back_to_the_upsert_for_an_existing_document(
    store: Store,
) -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    fresh, existing, other = ids(3)
    # Written by an earlier run after this batch was read: one message counted already.
    await store.conversations.insert_one(
        {"_id": existing, "message_count": 1, "unread": 0, "status": "closed"}
    )
    await store.conversations.insert_one({"_id": other, "message_count": 5})
    new = []
    for i, cid in enumerate((fresh, existing)):
        update = conversation_update(i, at)
        doc = rs.as_inserted(cid, update)
        assert doc is not None
        new.append((doc, UpdateOne({"_id": cid}, update, upsert=True)))
    ops = [UpdateOne({"_id": other}, {"$inc": {"message_count": 1}})]
    await rs.upsert_many(store, "conversations", new, ops)

    got = {d["_id"]: d async for d in store.conversations.find({"_id": {"$in": ids_of(new)}})}
    assert got[fresh]["message_count"] == 1
    assert got[fresh]["origin_intake_id"] == "in-0"
    # The existing one was updated, not replaced: its count went on, $setOnInsert did not apply.
    assert got[existing]["message_count"] == 2
    assert got[existing]["unread"] == 1
    assert "origin_intake_id" not in got[existing]
    assert got[existing]["target"]["id"] == "lead-1"
    other_doc = await store.conversations.find_one({"_id": other})
    assert other_doc is not None
    assert other_doc["message_count"] == 6


def ids_of(new: list[tuple[Document, UpdateOne]]) -> list[str]:
    return [d["_id"] for d, _ in new]
