"""Appending domain events: one sequence reservation and one insert per call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import BulkWriteError

from crm_store.documents import stable_id
from crm_store.intake import DUPLICATE_KEY
from crm_store.routing_store import existing_ids, reserve_sequence
from crm_store.store import Document, Store
from crm_store.wake import EVENTS, PROCESS, notify

MAX_RENUMBER = 5
# Stands in for a sequence number whose event turned out to be written already (a
# concurrent re-announcement lost on _id after reserving it): the sequence stays without
# holes. Readers skip it (crm_store/feed.py); it never reaches a consumer.
FILLER = "sequence.filler"


def event_id(type_: str, key: Sequence[str]) -> str:
    """The id of the ``type_`` event made unique by ``key``."""
    return stable_id("event", type_, *key)


def event(
    type_: str,
    refs: dict[str, str | None],
    data: dict[str, Any],
    *,
    key: Sequence[str],
    at: datetime | None = None,
) -> Document:
    """An event document whose id is derived from ``key`` (what makes it unique), so
    writing it again after a crash is a no-op."""
    return {
        "_id": event_id(type_, key),
        "type": type_,
        "occurred_at": at or datetime.now(UTC),
        "refs": {k: v for k, v in refs.items() if v is not None},
        "data": data,
    }


async def append(store: Store, events: list[Document], *, maybe_written: bool = False) -> None:
    """Give ``events`` consecutive sequence numbers and insert them.

    An event whose id exists already is skipped (it was written before: a re-run). With
    ``maybe_written`` those are looked up first, so a re-run reserves no numbers for them.
    An event that collides on ``seq`` (numbers handed out twice — never on MongoDB, but
    cheap to survive) is numbered again, never dropped.
    """
    unique: dict[str, Document] = {}
    for e in events:  # the same event may be announced twice in one batch
        unique.setdefault(e["_id"], e)
    events = list(unique.values())
    if maybe_written:
        seen = await existing_ids(store, "events", [e["_id"] for e in events])
        events = [e for e in events if e["_id"] not in seen]
    for _ in range(MAX_RENUMBER):
        if not events:
            return
        first = await reserve_sequence(store, len(events))
        written = datetime.now(UTC)
        for i, e in enumerate(events):
            e["seq"] = first + i
            # Readers use it to tell a gap still being written from an abandoned one.
            e["written_at"] = written
            e["writer"] = PROCESS  # whose hubs were woken already (crm_store/wake.py)
        try:
            await store.events.insert_many(events, ordered=False)
            notify(EVENTS)  # this process's live hubs look at once (crm_store/wake.py)
            return
        except BulkWriteError as exc:
            notify(EVENTS)  # some may be new
            errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # Duplicates on _id are done (their numbers get fillers); duplicates on seq go
            # round again.
            done = [events[int(e["index"])] for e in errors if "_id" in e.get("keyPattern", {})]
            await _fill(store, [int(e["seq"]) for e in done], written)
            events = [
                events[int(e["index"])] for e in errors if "_id" not in e.get("keyPattern", {})
            ]
    raise RuntimeError(f"could not number {len(events)} events after {MAX_RENUMBER} tries")


async def _fill(store: Store, seqs: list[int], at: datetime) -> None:
    """A filler for each reserved number whose event already existed."""
    fillers = [
        {
            "_id": stable_id("filler", str(seq)),
            "type": FILLER,
            "seq": seq,
            "occurred_at": at,
            "written_at": at,
            "refs": {},
            "data": {},
        }
        for seq in seqs
    ]
    if not fillers:
        return
    try:
        await store.events.insert_many(fillers, ordered=False)
    except BulkWriteError as exc:
        errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
