"""Every store call routing makes, in one place.

Reads are batched (one query per collection for a whole batch of messages); creations are
single inserts guarded by unique indexes, so a conflict means "someone else created it
first" and is answered by reading theirs. No find-and-modify on growing collections.

Every query is one that an index answers on the embedded server too, so none slows down
as the collections grow: no ``$or`` (the embedded server scans the collection for any
``$or``, even of indexed conditions — each branch is its own query here), and ``$in``
lists of at most ``ID_CHUNK`` values (it re-checks each hit against the whole list).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from crm_store import identities as ident
from crm_store.documents import ContactDoc, ConversationDoc, DealDoc, LeadDoc
from crm_store.intake import DUPLICATE_KEY, id_chunks
from crm_store.store import Collection, Document, Store, together

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class ContactState:
    """What routing needs to know about a set of contacts."""

    active_deal: dict[str, DealDoc] = field(default_factory=dict)
    open_lead: dict[str, LeadDoc] = field(default_factory=dict)
    history: set[str] = field(default_factory=set)
    # Leads/deals by the intake record that created them (for re-runs).
    created_by: dict[str, LeadDoc | DealDoc] = field(default_factory=dict)
    # For a contact of a company without an active deal of their own: the company's most
    # recently active open sales deal (docs/companies.md).
    company_deal: dict[str, DealDoc] = field(default_factory=dict)

    def merge(self, other: ContactState) -> None:
        self.active_deal.update(other.active_deal)
        self.company_deal.update(other.company_deal)
        self.open_lead.update(other.open_lead)
        self.history |= other.history
        self.created_by.update(other.created_by)


async def find_in(
    coll: Collection,
    field: str,
    values: Iterable[Any],
    projection: Document | None = None,
    extra: Document | None = None,
) -> list[Document]:
    """The documents whose ``field`` is one of ``values`` (and that match ``extra``),
    by ``$in`` queries of at most ``ID_CHUNK`` values."""
    out: list[Document] = []
    for chunk in id_chunks([v for v in values if v is not None]):
        query = {field: {"$in": chunk}, **(extra or {})}
        out += [d async for d in coll.find(query, projection)]
    return out


async def _first_of(coll: Collection, *queries: Document) -> Document | None:
    """The first document found by the first query that finds one (instead of an
    ``$or`` of the queries, which the embedded server answers with a scan)."""
    for query in queries:
        if (found := await coll.find_one(query)) is not None:
            return found
    return None


async def load_conversations(store: Store, ids: Iterable[str]) -> dict[str, ConversationDoc]:
    docs = await find_in(store.conversations, "_id", set(ids))
    return {d["_id"]: ConversationDoc.model_validate(d) for d in docs}


async def conversations_of(
    store: Store, wanted: dict[tuple[str, str], set[str]]
) -> dict[tuple[str, str, str], str]:
    """The conversations of stored messages (inbound or ours), by (channel, account,
    provider id): how a reply finds its thread."""
    out: dict[tuple[str, str, str], str] = {}
    for (channel, account), ids in wanted.items():
        docs = await find_in(
            store.messages,
            "provider_id",
            sorted(ids),
            {"channel": 1, "account": 1, "provider_id": 1, "conversation_id": 1},
            {"channel": channel, "account": account},
        )
        for d in docs:
            if d.get("conversation_id") and d.get("provider_id"):
                out[(d["channel"], d["account"], d["provider_id"])] = d["conversation_id"]
    return out


async def mark_failing_addresses(store: Store, addresses: Sequence[str]) -> list[tuple[str, str]]:
    """Mark the contacts holding these e-mail addresses as failing on them (a bounce);
    returns the (contact id, address) pairs (idempotent: a re-run marks nothing twice)."""
    keys = [f"email:{a}" for a in addresses]
    hits: list[tuple[str, str]] = []
    seen: set[str] = set()
    for c in await find_in(store.contacts, "identities", keys, {"identities": 1}):
        if c["_id"] not in seen:
            seen.add(c["_id"])
            hits += [(c["_id"], a) for a in addresses if f"email:{a}" in c["identities"]]
    for cid, addr in hits:
        await store.contacts.update_one({"_id": cid}, {"$addToSet": {"failing_emails": addr}})
    return hits


async def load_contacts(
    store: Store, identities: Iterable[str], ids: Iterable[str] = ()
) -> list[ContactDoc]:
    """The contacts owning any of ``identities`` (by the ``identities`` collection) or
    having any of ``ids``, each once. A merged contact found by a key is replaced by the
    one it was merged into; a deleted one, or a key whose contact is not written yet (its
    creator is between its two writes), counts as unknown."""
    owned = await ident.owners(store, identities)
    by_key, asked = set(owned.values()), set(ids)
    found: dict[str, Document] = {
        d["_id"]: d for d in await find_in(store.contacts, "_id", by_key | asked)
    }
    merged = {d["merged_into"] for i, d in found.items() if i in by_key and d.get("merged_into")}
    for d in await find_in(store.contacts, "_id", merged - found.keys()):
        found[d["_id"]] = d
    out: list[ContactDoc] = []
    for i, d in found.items():
        if i in by_key and (d.get("deleted") or d.get("merged_into")) and i not in asked:
            continue
        out.append(ContactDoc.model_validate(d))
    return out


async def load_contact_state(
    store: Store, contact_ids: Iterable[str], service_pipelines: Container[str] = ()
) -> ContactState:
    """What routing needs of these contacts. A deal in one of ``service_pipelines`` (after-
    sale work: an NPS survey, a warranty claim) is history, never the active deal: the
    customer's next message is not after-sale work."""
    ids = list(set(contact_ids))
    state = ContactState()
    if not ids:
        return state
    deal_docs, lead_docs = await together(
        find_in(store.deals, "contact_id", ids), find_in(store.leads, "contact_id", ids)
    )
    # The most recently active first (the active deal is the latest open one), across
    # the chunks as within one query.
    deal_docs.sort(key=lambda d: d.get("last_activity_at") or _EPOCH, reverse=True)
    for d in deal_docs:
        deal = DealDoc.model_validate(d)
        state.history.add(deal.contact_id)
        sales = deal.pipeline_id not in service_pipelines
        if deal.open and sales and deal.contact_id not in state.active_deal:
            state.active_deal[deal.contact_id] = deal
        if deal.origin_intake_id:
            state.created_by[deal.origin_intake_id] = deal
    for d in lead_docs:
        lead = LeadDoc.model_validate(d)
        state.history.add(lead.contact_id)
        if lead.open:
            state.open_lead[lead.contact_id] = lead
        if lead.origin_intake_id:
            state.created_by[lead.origin_intake_id] = lead
    await _load_company_deals(
        store, [i for i in ids if i not in state.active_deal], state, service_pipelines
    )
    return state


async def _load_company_deals(
    store: Store, ids: Sequence[str], state: ContactState, service_pipelines: Container[str]
) -> None:
    """``state.company_deal`` for the contacts ``ids`` that belong to a company."""
    company_of = {
        c["_id"]: c["company_id"]
        for c in await find_in(store.contacts, "_id", ids, {"company_id": 1})
        if isinstance(c.get("company_id"), str)
    }
    if not company_of:
        return
    docs = await find_in(
        store.deals,
        "company_id",
        set(company_of.values()),
        extra={"open": True, "deleted": {"$ne": True}},
    )
    docs.sort(key=lambda d: d.get("last_activity_at") or _EPOCH, reverse=True)
    latest: dict[str, DealDoc] = {}
    for d in docs:
        if d.get("pipeline_id") not in service_pipelines:
            latest.setdefault(d["company_id"], DealDoc.model_validate(d))
    for contact_id, company_id in company_of.items():
        if company_id in latest:
            state.company_deal[contact_id] = latest[company_id]


# Keys that only stand in for "no identity" (a one-off message): never claimed.
_PSEUDO = ("intake:", "merged:", "deleted:")


def _claimable(doc: Document) -> list[str]:
    keys = [k for k in doc.get("identities") or [] if not k.startswith(_PSEUDO)]
    return list(dict.fromkeys(keys))


async def _settle_owner(
    store: Store, keys: list[str], owned: dict[str, str], cid: str
) -> tuple[str, dict[str, str]]:
    """The contact a creator ``cid`` with ``keys`` joins (:func:`identities.winner`),
    after repairing what an interrupted merge or delete left: keys of a merged contact
    move to the one it was merged into, keys of a deleted one are taken over by ``cid``."""
    final = ident.winner(keys, owned, cid)
    for _ in range(3):
        if final == cid:
            break
        owner = await store.contacts.find_one({"_id": final}, {"merged_into": 1, "deleted": 1})
        if owner is None:  # being created (or its creator died): adopt it
            break
        theirs = [k for k in keys if owned.get(k) == final]
        if owner.get("merged_into"):
            await ident.repoint(store, theirs, final, owner["merged_into"])
        elif owner.get("deleted"):
            await ident.take_over(store, theirs, final, cid)
        else:
            break
        owned = {**owned, **await ident.owners(store, keys)}
        final = ident.winner(keys, owned, cid)
    return final, owned


# Backing off while the owners of a sender's keys are being created: then an owner still
# not written is adopted (its creator died between its two writes).
CLAIM_ATTEMPTS = 6
CLAIM_BACKOFF_S = 0.02


async def create_contact(store: Store, doc: Document) -> tuple[ContactDoc, bool]:
    """Get-or-create a contact (crm_store/identities.py). Its identities are claimed first;
    only a creator that holds every one of its keys writes its contact, so two contacts
    never share a key however the creators' key sets overlap. One that finds a key owned
    by a written contact joins it (the first such key, strongest first; a key owned by a
    third contact stays there); one that finds only owners still being created gives its
    keys back and tries again a little later — after a few tries it adopts the owner of
    its strongest key (writes that contact itself). True when this call wrote the contact."""
    cid: str = doc["_id"]
    keys = _claimable(doc)
    if not keys:
        return await _write_contact(store, doc, cid, [])
    owned: dict[str, str] = {}
    for attempt in range(CLAIM_ATTEMPTS):
        owned = await ident.claim(store, cid, keys)
        _, owned = await _settle_owner(store, keys, owned, cid)
        others = [o for k in keys if (o := owned.get(k, cid)) != cid]
        if not others:
            return await _write_contact(store, doc, cid, [k for k in keys if k in owned])
        live = {d["_id"] for d in await find_in(store.contacts, "_id", set(others), {"_id": 1})}
        mine = [k for k in keys if owned.get(k) == cid]
        if joined := next((o for o in others if o in live), None):
            await ident.repoint(store, mine, cid, joined)
            now = await ident.claim(store, joined, keys)
            return await _write_contact(
                store, doc, joined, [k for k in keys if now.get(k) == joined]
            )
        if attempt + 1 < CLAIM_ATTEMPTS:
            await ident.release(store, mine, cid)
            await asyncio.sleep(CLAIM_BACKOFF_S * (attempt + 1) * (0.5 + random.random()))
    final = ident.winner(keys, owned, cid)
    mine = [k for k in keys if owned.get(k) == cid]
    if final != cid and mine:
        await ident.repoint(store, mine, cid, final)
    return await _write_contact(
        store, doc, final, [k for k in keys if owned.get(k) in (cid, final)]
    )


async def _write_contact(
    store: Store, doc: Document, final: str, held: list[str]
) -> tuple[ContactDoc, bool]:
    """Insert the contact as ``final`` showing the keys it ``held``; when it exists, add
    the keys it does not show yet and answer it."""
    phones, emails = ident.split(held)
    new = {**doc, "_id": final}
    if held or _claimable(doc):
        new.update(identities=held, phones=phones, emails=emails)
    try:
        await store.contacts.insert_one(new)
    except DuplicateKeyError:
        existing = await store.contacts.find_one({"_id": final})
        if existing is None:
            raise
        missing = [k for k in held if k not in (existing.get("identities") or [])]
        if missing:
            await store.contacts.update_one({"_id": final}, ident.add_to_contact(missing))
            existing["identities"] = [*(existing.get("identities") or []), *missing]
        return ContactDoc.model_validate(existing), False
    return ContactDoc.model_validate(new), True


async def claim_contact_keys(store: Store, docs: Sequence[Document]) -> dict[str, str]:
    """The first step of :func:`create_contacts`: every identity of these contacts-to-be
    claimed in one ``insert_many``; the owner of each key afterwards. It reads nothing
    else of the documents, so it can run while their other fields are still being
    filled in (routing: the round-robin responsible)."""
    return await ident.claim_many(store, {d["_id"]: _claimable(d) for d in docs})


async def create_contacts(
    store: Store, docs: Sequence[Document], owned: dict[str, str] | None = None
) -> dict[str, tuple[ContactDoc, bool]]:
    """:func:`create_contact` of a batch, by the given ``_id``: every identity claimed in
    one ``insert_many`` (or already, ``owned``: what :func:`claim_contact_keys` answered
    for these documents), the contacts that won all their keys in another; a contact that
    lost a key (another creator, a sender known since the batch was read) takes the
    one-by-one path."""
    out: dict[str, tuple[ContactDoc, bool]] = {}
    if not docs:
        return out
    if owned is None:
        owned = await claim_contact_keys(store, docs)
    clean = [d for d in docs if all(owned.get(k) == d["_id"] for k in _claimable(d))]
    contested = [d for d in docs if d not in clean]
    inserted = await insert_new(store, "contacts", clean)
    for d in clean:
        if d["_id"] in inserted:
            out[d["_id"]] = (ContactDoc.model_validate(d), True)
    for d in clean:  # an earlier run of this batch wrote it
        if d["_id"] not in inserted:
            out[d["_id"]] = await _write_contact(store, d, d["_id"], _claimable(d))
    for d in contested:
        out[d["_id"]] = await create_contact(store, d)
    return out


async def create_lead(store: Store, doc: Document) -> tuple[LeadDoc, bool]:
    """Insert an open lead; the contact's existing open lead wins a conflict."""
    try:
        await store.leads.insert_one(doc)
    except DuplicateKeyError:
        existing = await _first_of(
            store.leads,
            {"_id": doc["_id"]},
            {"contact_id": doc["open_contact"], "open_contact": doc["open_contact"]},
        )
        if existing is None:
            raise
        return LeadDoc.model_validate(existing), False
    return LeadDoc.model_validate(doc), True


async def create_deal(store: Store, doc: Document) -> tuple[DealDoc, bool]:
    """Insert a routing-opened deal; the contact's existing one wins a conflict."""
    try:
        await store.deals.insert_one(doc)
    except DuplicateKeyError:
        existing = await _first_of(
            store.deals,
            {"_id": doc["_id"]},
            {"contact_id": doc["auto_open"], "auto_open": doc["auto_open"]},
        )
        if existing is None:
            raise
        return DealDoc.model_validate(existing), False
    return DealDoc.model_validate(doc), True


async def create_entities(
    store: Store, collection: str, guard: str, docs: Sequence[Document]
) -> dict[str, tuple[Document, bool]]:
    """:func:`create_lead` / :func:`create_deal` of a batch in one ``insert_many``, by the
    given ``_id``: the document and True where it was inserted; where it collided, the
    existing one (same id: an earlier run; else the contact's open one, by ``guard``)."""
    out: dict[str, tuple[Document, bool]] = {}
    inserted = await insert_new(store, collection, docs)
    for d in docs:
        if d["_id"] in inserted:
            out[d["_id"]] = (d, True)
            continue
        existing = await _first_of(
            store[collection], {"_id": d["_id"]}, {"contact_id": d[guard], guard: d[guard]}
        )
        if existing is None:  # closed in between: the caller decides again
            continue
        out[d["_id"]] = (existing, False)
    return out


async def reserve_turns(store: Store, counter: str, count: int) -> int:
    """Reserve ``count`` consecutive round-robin turns of a line with one ``$inc`` (the
    ``counters`` collection is tiny: find-and-modify is fine); returns the first."""
    doc = await store.counters.find_one_and_update(
        {"_id": counter},
        {"$inc": {"value": count}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    last = int(doc["value"]) if doc else count
    return last - count + 1


async def ensure_counter(store: Store, counter: str) -> None:
    await store.counters.update_one({"_id": counter}, {"$setOnInsert": {"value": 0}}, upsert=True)


async def next_turn(store: Store, counter: str) -> int:
    """Increment a named counter (a tiny collection: find-and-modify is fine here)."""
    doc = await store.counters.find_one_and_update(
        {"_id": counter},
        {"$inc": {"value": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return int(doc["value"]) if doc else 1


async def reserve_sequence(store: Store, count: int) -> int:
    """Reserve ``count`` consecutive event sequence numbers; returns the first."""
    doc = await store.counters.find_one_and_update(
        {"_id": "events"},
        {"$inc": {"value": count}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    last = int(doc["value"]) if doc else count
    return last - count + 1


async def existing_ids(store: Store, collection: str, ids: Sequence[str]) -> set[str]:
    return {d["_id"] for d in await find_in(store[collection], "_id", ids, {"_id": 1})}


async def insert_new(store: Store, collection: str, docs: Sequence[Document]) -> set[str]:
    """Insert documents, ignoring those whose ``_id`` exists; returns the ids inserted."""
    if not docs:
        return set()
    ids = [d["_id"] for d in docs]
    try:
        await store[collection].insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        failed = {int(e["index"]) for e in errors}
        return {i for n, i in enumerate(ids) if n not in failed}
    return set(ids)


# Update operators whose effect on a document that does not exist yet is to set the value.
_SETTING = ("$setOnInsert", "$set", "$max", "$min", "$inc")


def as_inserted(doc_id: str, update: Document) -> Document | None:
    """The document that an upsert of ``update`` by ``{"_id": doc_id}`` creates when
    nothing matches; None for an update this does not model (another operator, a dotted
    path, a field set twice) — upsert that one."""
    doc: Document = {"_id": doc_id}
    for op, fields in update.items():
        if op not in (*_SETTING, "$addToSet") or not isinstance(fields, dict):
            return None
        for name, value in fields.items():
            if "." in name or name.startswith("$") or name in doc:
                return None
            if op == "$addToSet":
                each = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
                value = list(dict.fromkeys(each)) if all(isinstance(v, str) for v in each) else None
                if value is None:
                    return None
            doc[name] = value
    return doc


async def upsert_many(
    store: Store,
    collection: str,
    new: Sequence[tuple[Document, UpdateOne]],
    ops: Sequence[UpdateOne] = (),
) -> None:
    """Upserts of documents that did not exist when read (``new``: the document the upsert
    would create, :func:`as_inserted`, and the upsert) in one ``insert_many``, then
    ``ops`` with the upserts of those that turned out to exist (an earlier run, another
    process) in one :func:`bulk_update`.

    Same outcome as one bulk write of all the upserts, but the embedded server runs the
    operations of a bulk write one at a time with other clients' commands in between:
    under an e-mail sync's multi-MB intake writes a bulk of 60 upserts took ~0.5 s, an
    ``insert_many`` of the same documents ~0.05 s."""
    inserted = await insert_new(store, collection, [d for d, _ in new])
    rest = [op for d, op in new if d["_id"] not in inserted]
    await bulk_update(store, collection, [*rest, *ops])


async def bulk_updates(store: Store, *groups: tuple[str, Sequence[UpdateOne]]) -> None:
    """:func:`bulk_update` of independent collections at once (:func:`together`)."""
    await together(*(bulk_update(store, coll, ops) for coll, ops in groups if ops))


async def bulk_update(store: Store, collection: str, ops: Sequence[UpdateOne]) -> None:
    """Apply updates in one round trip.

    A duplicate-key error is retried once: two processes upserting the same new document
    race, and the loser's retry updates the winner's. What still conflicts after that (an
    ``$addToSet`` of an identity that belongs to another contact) is skipped — merging
    contacts is an operator's decision.
    """
    pending = list(ops)
    for _ in range(2):
        if not pending:
            return
        try:
            await store[collection].bulk_write(pending, ordered=False)
        except BulkWriteError as exc:
            errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            pending = [pending[int(e["index"])] for e in errors]
        else:
            return


def touch_ops(ids: Iterable[str], at: datetime) -> list[UpdateOne]:
    return [UpdateOne({"_id": i}, {"$max": {"last_activity_at": at}}) for i in set(ids)]
