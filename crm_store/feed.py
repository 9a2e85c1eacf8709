"""Reading the event log in order without ever skipping an event that is still coming.

Sequence numbers are reserved before the events are written, by several writers at
once, so seq 11 can be visible while seq 10 is still in flight. A reader that jumped to
11 would never see 10. So a read returns only the *contiguous* prefix after the cursor;
a hole is skipped only once the event after it was written more than ``gap_grace_s``
ago (its writer died between reserving and writing — the numbers are abandoned).

The cursor a reader gets back (``next_after``) covers every event it has been shown *or
that was filtered out*, so a consumer that stores it never misses or double-counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo import ASCENDING

from crm_store.events import FILLER
from crm_store.routing_store import find_in
from crm_store.store import Document, Store

GAP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class Page:
    events: list[Document]
    next_after: int


async def read(
    store: Store,
    after: int,
    *,
    limit: int = 100,
    types: Iterable[str] | None = None,
    until: int | None = None,
    gap_grace_s: float = GAP_GRACE_S,
    now: datetime | None = None,
) -> Page:
    """Events with ``after < seq (<= until)``, in order, up to the first young gap."""
    query: Document = {"seq": {"$gt": after}}
    if until is not None:
        query["seq"]["$lte"] = until
    wanted = set(types) if types else None
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=gap_grace_s)
    events: list[Document] = []
    cursor = after
    # Without a type filter every event read counts, so asking for more than `limit` only
    # makes the store find documents nobody reads (the embedded server computes the whole
    # limit); with one, read ahead past the events of other types.
    fetch = max(limit, 1) if wanted is None else max(limit, 50) * 4
    docs = store.events.find(
        query,
        {"written_at": 1, "seq": 1, "type": 1, "occurred_at": 1, "refs": 1, "data": 1},
        sort=[("seq", ASCENDING)],
        limit=fetch,
        batch_size=fetch,
    )
    async for doc in docs:
        seq = int(doc["seq"])
        if seq != cursor + 1:
            written = doc.get("written_at") or doc.get("occurred_at")
            if written is None or written > cutoff:
                break  # a hole that may still be filled: stop before it
        cursor = seq
        if doc["type"] == FILLER:  # a number whose event existed already: nothing to show
            continue
        if wanted is None or doc["type"] in wanted:
            events.append(doc)
            if len(events) >= limit:
                break
    return Page(events, cursor)


def envelope(doc: Document) -> Document:
    """The consumer-facing form of an event (docs/events.md)."""
    return {
        "id": doc["_id"],
        "type": doc["type"],
        "version": 1,
        "sequence": doc["seq"],
        "occurred_at": doc["occurred_at"],
        "refs": doc.get("refs", {}),
        "data": doc.get("data", {}),
    }


async def responsible_departments(
    store: Store, events: list[Document], department_of: dict[str, str]
) -> dict[str, set[str]]:
    """For each event id, the departments of the responsibles of the entities it names
    (lead, deal, contact) — read now, so reassignments count."""
    ids: dict[str, set[str]] = {"leads": set(), "deals": set(), "contacts": set()}
    for e in events:
        refs = e.get("refs", {})
        for key, coll in (("lead_id", "leads"), ("deal_id", "deals"), ("contact_id", "contacts")):
            if refs.get(key):
                ids[coll].add(refs[key])
    owner: dict[str, str | None] = {}
    for coll, wanted in ids.items():
        for d in await find_in(store[coll], "_id", wanted, {"responsible_id": 1}):
            owner[d["_id"]] = d.get("responsible_id")
    result: dict[str, set[str]] = {}
    for e in events:
        refs = e.get("refs", {})
        depts = set()
        for key in ("lead_id", "deal_id", "contact_id"):
            user = owner.get(refs.get(key) or "")
            if user and user in department_of:
                depts.add(department_of[user])
        result[e["_id"]] = depts
    return result
