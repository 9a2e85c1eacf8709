"""Store migrations (``omniroute db migrate``): idempotent, safe while the service runs.

**identities** (docs/scaling.md): contacts written before the ``identities`` collection
existed hold their keys only in ``contacts.identities``, under a unique multikey index
that a sharded cluster cannot enforce. The migration

1. claims every key of every live contact (not merged, not deleted) in ``identities``,
   contacts read in ``_id`` order, 500 at a time: the owners of the batch's keys are read
   first and only the missing keys are inserted, so a second run writes nothing;
2. reports **conflicts** — a key shown on two contacts (impossible under the old unique
   index; possible in a store restored or imported without it, or for a contact an old
   process wrote while this ran): the key stays with the contact that holds it in
   ``identities`` (the first scanned), as routing's rule for a conflicting identity
   does; the other contact keeps it as data, and the pair is listed for an operator to
   merge (``POST /api/v1/contacts/{id}/merge``). Nothing is merged automatically: two
   people can share a phone;
3. drops the unique ``identities_unique`` index, the retired indexes nothing reads any
   more (crm_store/indexes.py ``RETIRED_INDEXES``), and every index whose name is declared
   in crm_store/indexes.py with another key or other options (the unique open-lead and
   auto-deal guards now start with ``contact_id``, the shard key of leads and deals:
   docs/scaling.md), then creates every missing index — after step 1, so uniqueness is
   never unguarded (the old guards hold until their new forms exist: they are dropped
   and rebuilt one collection at a time, and a conflicting write in that moment is what
   the routing code already survives on MongoDB: a re-read of the winner).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from pymongo.errors import OperationFailure

from crm_store import identities as ident
from crm_store.indexes import INDEXES, RETIRED_INDEXES
from crm_store.store import Store

log = structlog.get_logger(__name__)

OLD_UNIQUE_INDEX = "identities_unique"
BATCH = 500
_PSEUDO = ("intake:", "merged:", "deleted:")


@dataclass(frozen=True, slots=True)
class Conflict:
    key: str
    owner: str  # the contact the key belongs to (identities)
    other: str  # a contact that shows it too


@dataclass(slots=True)
class MigrationReport:
    contacts: int = 0
    keys_written: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # "collection.index"
    created_indexes: int = 0

    @property
    def dropped_index(self) -> bool:
        return bool(self.dropped)

    @property
    def wrote(self) -> bool:
        return bool(self.keys_written or self.dropped or self.created_indexes)


async def old_layout(store: Store) -> bool:
    """Is the store still in the layout before ``identities`` (the contacts' unique
    ``identities_unique`` index exists)? One cheap index listing; the service migrates
    such a store when it starts (ingest/service.py)."""
    if "contacts" not in set(await store.db.list_collection_names()):
        return False
    return OLD_UNIQUE_INDEX in await store.contacts.index_information()


async def migrate_identities(store: Store, *, dry_run: bool = False) -> MigrationReport:
    """Run the identities migration (module doc); ``dry_run`` writes nothing."""
    report = MigrationReport()
    before = await _index_names(store)
    if not dry_run:
        await store["identities"].create_indexes(INDEXES["identities"])
    last: str | None = None
    while True:
        query = {"_id": {"$gt": last}} if last is not None else {}
        batch = [
            d
            async for d in store.contacts.find(
                query,
                {"identities": 1, "merged_into": 1, "deleted": 1},
                sort=[("_id", 1)],
                limit=BATCH,
            )
        ]
        if not batch:
            break
        last = batch[-1]["_id"]
        wanted: dict[str, list[str]] = {}
        for d in batch:
            if d.get("merged_into") or d.get("deleted"):
                continue
            report.contacts += 1
            keys = [k for k in d.get("identities") or [] if not k.startswith(_PSEUDO)]
            if keys:
                wanted[d["_id"]] = keys
        owned = await ident.owners(store, (k for ks in wanted.values() for k in ks))
        missing: dict[str, list[str]] = {}
        for cid, keys in wanted.items():
            for k in keys:
                if k not in owned:
                    missing.setdefault(cid, []).append(k)
                    owned[k] = cid  # the first contact of the scan that shows it
        if missing and not dry_run:
            owned.update(await ident.claim_many(store, missing))
        report.keys_written += sum(len(ks) for ks in missing.values())
        report.conflicts += [
            Conflict(k, owned[k], cid)
            for cid, keys in wanted.items()
            for k in keys
            if owned.get(k, cid) != cid
        ]
    outdated = await _outdated(store)
    if dry_run:
        report.dropped = [f"{c}.{n}" for c, n in outdated]
        return report
    for coll, name in outdated:
        try:
            await store[coll].drop_index(name)
            report.dropped.append(f"{coll}.{name}")
        except OperationFailure:  # another migrate dropped it at the same moment
            pass
        await store[coll].create_indexes(INDEXES[coll])
    await store.ensure_indexes()
    after = await _index_names(store)
    report.created_indexes = sum(len(after[c] - before.get(c, set())) for c in after)
    for c in report.conflicts:
        log.warning("identity_conflict", key=c.key, owner=c.owner, other=c.other)
    return report


async def _outdated(store: Store) -> list[tuple[str, str]]:
    """(collection, index) pairs to drop: the old unique identity index, the retired
    indexes (crm_store/indexes.py ``RETIRED_INDEXES``), and indexes declared under the
    same name with another key or other uniqueness."""
    out: list[tuple[str, str]] = []
    existing = set(await store.db.list_collection_names())
    for coll, models in INDEXES.items():
        if coll not in existing:
            continue
        info = await store[coll].index_information()
        if coll == "contacts" and OLD_UNIQUE_INDEX in info:
            out.append((coll, OLD_UNIQUE_INDEX))
        out += [(coll, name) for name in sorted(RETIRED_INDEXES.get(coll, ())) if name in info]
        for model in models:
            spec = model.document
            have = info.get(spec["name"])
            if have is None:
                continue
            want = list(spec["key"].items())
            same_key = len(have["key"]) == len(want) and all(
                k == wk and v == wv for (k, v), (wk, wv) in zip(have["key"], want, strict=False)
            )
            same_unique = bool(have.get("unique")) == bool(spec.get("unique"))
            if not (same_key and same_unique):
                out.append((coll, spec["name"]))
    return out


async def _index_names(store: Store) -> dict[str, set[str]]:
    names = set(await store.db.list_collection_names())
    out: dict[str, set[str]] = {}
    for coll in sorted(names):
        out[coll] = set((await store[coll].index_information()).keys())
    return out
