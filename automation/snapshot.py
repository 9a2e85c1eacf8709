"""Reading what the rules look at: one lead, deal or contact as a
:class:`~automation.conditions.Snapshot` (a handful of indexed reads, only those the
configured rules need) — or many at once for a batch of timers."""

from __future__ import annotations

from automation.conditions import Snapshot
from automation.evaluate import RuleBook
from crm_store import entities, tasks
from crm_store.store import Document, Store

CONTACT_FIELDS = {"name": 1, "responsible_id": 1, "company_id": 1}


async def load(store: Store, book: RuleBook, kind: str, entity_id: str) -> Snapshot | None:
    doc = await entities.get(store, kind, entity_id)
    if doc is None:
        return None
    contact: Document | None = doc
    if kind != "contact":
        contact = (
            await store.contacts.find_one({"_id": doc["contact_id"]}, CONTACT_FIELDS)
            if doc.get("contact_id")
            else None
        )
    return await _complete(store, book, kind, doc, contact)


async def load_many(
    store: Store, book: RuleBook, refs: list[tuple[str, str]]
) -> dict[tuple[str, str], Snapshot]:
    """Snapshots of many (kind, id) at once: one read per collection (plus the per-entity
    reads some rules need: tasks, won deals, the origin channel)."""
    docs: dict[tuple[str, str], Document] = {}
    for kind in {k for k, _ in refs}:
        ids = list({i for k, i in refs if k == kind})
        async for d in entities.collection(store, kind).find({"_id": {"$in": ids}}):
            docs[(kind, d["_id"])] = d
    contact_ids = list(
        {d["contact_id"] for (k, _), d in docs.items() if k != "contact" and d.get("contact_id")}
    )
    contacts: dict[str, Document] = {}
    if contact_ids:
        async for c in store.contacts.find({"_id": {"$in": contact_ids}}, CONTACT_FIELDS):
            contacts[c["_id"]] = c
    out: dict[tuple[str, str], Snapshot] = {}
    for (kind, entity_id), doc in docs.items():
        contact = doc if kind == "contact" else contacts.get(doc.get("contact_id") or "")
        out[(kind, entity_id)] = await _complete(store, book, kind, doc, contact)
    return out


async def _complete(
    store: Store, book: RuleBook, kind: str, doc: Document, contact: Document | None
) -> Snapshot:
    entity_id = doc["_id"]
    states = await tasks.states(store, entity_id) if book.needs_tasks else {}
    won = 0
    contact_id = contact["_id"] if contact else None
    if book.needs_won_deals and contact_id:
        won = await store.deals.count_documents(
            {"contact_id": contact_id, "outcome": "won", "deleted": {"$ne": True}}
        )
    channel = None
    if book.needs_channel and doc.get("origin_intake_id"):
        origin = await store.messages.find_one({"_id": doc["origin_intake_id"]}, {"channel": 1})
        channel = origin.get("channel") if origin else None
    return Snapshot.of(kind, doc, contact=contact, tasks=states, won_deals=won, channel=channel)
