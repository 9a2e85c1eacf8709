"""The declared shard keys (crm_store/sharding.py) against the index definitions
(crm_store/indexes.py): every unique index must hold on a sharded cluster."""

from __future__ import annotations

from pymongo import ASCENDING, IndexModel

from crm_store.indexes import INDEXES
from crm_store.sharding import HASHED, SHARD_KEYS, ShardKey, problems, unique_holds


def test_every_collection_has_a_shard_key_and_every_unique_index_holds() -> None:
    assert problems(INDEXES) == []


def test_mongodbs_rule() -> None:
    by_id = ShardKey((("_id", HASHED),), "r")
    by_contact = ShardKey((("contact_id", 1),), "r", id_per_shard="why")
    by_contact_hashed = ShardKey((("contact_id", HASHED),), "r", id_per_shard="why")
    unsharded = ShardKey(None, "r")
    assert unique_holds(by_id, ["_id"])
    assert unique_holds(ShardKey((("_id", 1),), "r"), ["_id"])
    assert not unique_holds(by_id, ["identities"])
    assert unique_holds(by_contact, ["contact_id", "open_contact"])
    assert unique_holds(by_contact, ["contact_id"])
    assert not unique_holds(by_contact, ["open_contact"])
    assert not unique_holds(by_contact, ["open_contact", "contact_id"])
    assert not unique_holds(by_contact, ["_id"])  # per shard only
    assert not unique_holds(ShardKey((("_id", 1), ("x", 1)), "r"), ["_id"])
    assert not unique_holds(by_contact_hashed, ["contact_id", "open_contact"])
    assert unique_holds(unsharded, ["anything"])


def test_the_check_fails_on_indexes_that_cannot_hold() -> None:
    # Today's layout before identities: the unique multikey index on contacts.identities.
    old = {
        **INDEXES,
        "contacts": [
            IndexModel([("identities", ASCENDING)], name="identities_unique", unique=True)
        ],
        "leads": [IndexModel([("open_contact", ASCENDING)], name="guard", unique=True)],
    }
    found = problems(old)
    assert len(found) == 2
    assert found[0].startswith("contacts.identities_unique: unique on ['identities']")
    assert found[1].startswith("leads.guard: unique on ['open_contact']")
    assert problems({"new_collection": []}) == [
        "new_collection: no shard key declared (crm_store/sharding.py SHARD_KEYS)"
    ]
    no_reason = {"leads": ShardKey((("contact_id", 1),), "r")}
    assert problems({"leads": []}, no_reason) == [
        "leads: sharded by ['contact_id'], so _id is unique per shard only; say why that "
        "suffices (id_per_shard) or shard by _id"
    ]


def test_the_identity_and_message_path_collections_are_sharded() -> None:
    for coll in ("intake", "identities", "contacts", "leads", "deals", "conversations", "messages"):
        assert SHARD_KEYS[coll].key is not None, coll
