"""Appending domain events: one sequence reservation and one insert per call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from crm_store.documents import stable_id
from crm_store.routing_store import existing_ids, insert_new, reserve_sequence
from crm_store.store import Document, Store


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
        "_id": stable_id("event", type_, *key),
        "type": type_,
        "occurred_at": at or datetime.now(UTC),
        "refs": {k: v for k, v in refs.items() if v is not None},
        "data": data,
    }


async def append(store: Store, events: list[Document], *, maybe_written: bool = False) -> None:
    """Give ``events`` consecutive sequence numbers and insert them.

    ``maybe_written``: some may exist already (a re-run); they are skipped before
    numbers are reserved, so a re-run leaves no gap.
    """
    if maybe_written:
        seen = await existing_ids(store, "events", [e["_id"] for e in events])
        events = [e for e in events if e["_id"] not in seen]
    if not events:
        return
    first = await reserve_sequence(store, len(events))
    written = datetime.now(UTC)
    for i, e in enumerate(events):
        e["seq"] = first + i
        # Readers use it to tell a gap still being written from an abandoned one.
        e["written_at"] = written
    await insert_new(store, "events", events)
