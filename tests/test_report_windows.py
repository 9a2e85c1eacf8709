"""Reports read time ranges in windows (crm_store/reports/common.in_windows): every
matching document exactly once whatever the density, with each read bounded.

The data is what a year of a store holds at its awkward edges: a dense hour, a sparse
year, one instant shared by hundreds of documents, a few documents decades back behind a
long gap, some dated in the future, and documents whose key is missing, null or a string
(a range of dates matches none of them, on MongoDB as here). Every answer is compared with
a brute-force filter of the inserted documents; a command listener records how many
documents each window's find returned.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, monitoring

from crm_store.reports.common import WINDOW_DOCS, in_windows
from crm_store.store import Document, Store

NOW = datetime.now(UTC).replace(microsecond=0)
BURST_AT = NOW - timedelta(days=3)
BURST = 600  # one instant: a window cannot split it


class FindSizes(monitoring.CommandListener):
    """What each ``find`` on the ``facts`` collection returned: its documents' instants."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.reads: list[list[Any]] = []
        self.cursors: dict[int, list[Any]] = {}  # an open cursor → its read
        self.more: dict[int, int] = {}  # a getMore's request → its cursor

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        if (event.command_name == "find" and cmd.get("find") == "facts") or (
            event.command_name == "getMore" and cmd.get("collection") == "facts"
        ):
            self.ids.add(event.request_id)
            if event.command_name == "getMore":
                self.more[event.request_id] = cmd["getMore"]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id not in self.ids:
            return
        cursor = event.reply["cursor"]
        if "firstBatch" in cursor:
            read: list[Any] = []
            self.reads.append(read)
        else:
            read = self.cursors.pop(self.more.pop(event.request_id), [])
        read += [d.get("at") for d in cursor.get("firstBatch", cursor.get("nextBatch", []))]
        if cursor["id"]:
            self.cursors[cursor["id"]] = read

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.ids.discard(event.request_id)


def facts() -> list[Document]:
    rnd = random.Random(7)
    at: list[Any] = []
    at += [NOW - timedelta(hours=1, seconds=10 * i) for i in range(3000)]  # a dense stretch
    at += [NOW - timedelta(days=rnd.uniform(0, 365)) for _ in range(400)]  # a sparse year
    at += [BURST_AT] * BURST
    at += [datetime(1995, 5, 1, tzinfo=UTC) + timedelta(days=i) for i in range(3)]  # far back
    at += [NOW + timedelta(days=i + 1) for i in range(5)]  # the future
    at += [None, "2026-01-01", 17]  # null, a string, a number: never in a date range
    docs: list[Document] = [
        {"_id": f"f{i}", "kind": "other" if i % 10 == 0 else "lead", "at": a}
        for i, a in enumerate(at)
    ]
    docs.append({"_id": "no-key", "kind": "lead"})
    return docs


def brute(docs: list[Document], lo: datetime | None, hi: datetime | None) -> Counter[str]:
    return Counter(
        d["_id"]
        for d in docs
        if d["kind"] == "lead"
        and isinstance(d.get("at"), datetime)
        and (lo is None or d["at"] >= lo)
        and (hi is None or d["at"] < hi)
    )


async def test_windows_read_each_document_once_in_bounded_reads(
    mongo_uri: str, db_name: str
) -> None:
    sizes = FindSizes()
    store = Store.open(mongo_uri, db_name, event_listeners=[sizes])
    docs = facts()
    try:
        coll = store["facts"]
        await coll.create_indexes([IndexModel([("kind", ASCENDING), ("at", ASCENDING)])])
        await coll.insert_many([dict(d) for d in docs])
        # The stored dates come back as whole milliseconds, naive: compare in that form.
        for d in docs:
            if isinstance(d.get("at"), datetime):
                d["at"] = d["at"].replace(microsecond=d["at"].microsecond // 1000 * 1000)
        bounds: list[tuple[datetime | None, datetime | None]] = [
            (None, None),
            (None, NOW - timedelta(days=30)),
            (NOW - timedelta(days=30), NOW),
            (NOW - timedelta(hours=7), NOW - timedelta(hours=2, seconds=1)),  # inside it
            (BURST_AT, BURST_AT + timedelta(milliseconds=1)),  # exactly the burst
            (BURST_AT - timedelta(milliseconds=1), BURST_AT),  # just before it: nothing
            (NOW - timedelta(days=400), None),
            (NOW, NOW - timedelta(days=1)),  # an empty period
        ]
        for lo, hi in bounds:
            sizes.reads.clear()
            got = Counter(
                [d["_id"] async for d in in_windows(coll, {"kind": "lead"}, "at", lo, hi, None)]
            )
            want = brute(docs, lo, hi)
            assert got == want, (lo, hi, len(got), len(want))
            assert max(got.values(), default=1) == 1, (lo, hi)  # none read twice
            # Each window holds about WINDOW_DOCS; only a read that is nearly all one instant
            # may exceed four times that (a window is never narrower than a millisecond).
            # A read after an empty one may meet a cliff (a quiet stretch, then a dense
            # one): at most one such read a walk.
            cliffs = 0
            for before, read in zip([[None], *sizes.reads], sizes.reads, strict=False):
                if len(read) > 4 * WINDOW_DOCS and Counter(read).most_common(1)[0][1] < 0.9 * len(
                    read
                ):
                    assert not before, (lo, hi, len(before), len(read))
                    cliffs += 1
            assert cliffs <= 1, (lo, hi, [len(r) for r in sizes.reads])
        # Inside the dense stretch every window but the first and the last holds a quarter
        # to four times WINDOW_DOCS.
        sizes.reads.clear()
        lo, hi = NOW - timedelta(hours=7), NOW - timedelta(hours=2)
        _ = [d async for d in in_windows(coll, {}, "at", lo, hi, None)]
        lengths = [len(r) for r in sizes.reads]
        assert all(WINDOW_DOCS / 4 <= n <= 4 * WINDOW_DOCS for n in lengths[1:-1]), lengths
        sizes.reads.clear()
        whole = [d async for d in in_windows(coll, {"kind": "lead"}, "at", None, None, None)]
        assert len(sizes.reads) < 3 * len(whole) / WINDOW_DOCS + 60, len(sizes.reads)
    finally:
        await store.close()
