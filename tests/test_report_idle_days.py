"""Overdue's forgotten deals from the idle days of the report rollups
(crm_store/reports/rollup.py ``report_idle_days``) equal the same count read from the
deals, and a brute force over the deals, around both thresholds: deals idle just before
and just after ``now - 15 days`` and ``now - 30 days``, at the local midnight of the
threshold's day and a millisecond before it, long ago, in the future, closed, in a
service pipeline, without a last activity or with one of the wrong type. Then deals move
(activity, a closing, a new idle deal, a deal handed to another department) and the
rollup worker, following their events, keeps the idle days equal to the brute force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from automation.calendar import WorkingCalendar
from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import events
from crm_store.reports import rollup
from crm_store.reports.common import By, Ctx, Group, Request
from crm_store.reports.overdue import overdue
from crm_store.store import Store

CONFIG = load_config(DEFAULT_CONFIG_DIR)
CAL = WorkingCalendar.from_config(CONFIG.calendar)
NOW = datetime(2026, 3, 20, 9, 17, 33, 250_000, tzinfo=UTC)
ANNA, OLGA, IVAN = "anna.smirnova", "olga.ivanova", "ivan.petrov"
DEPT = {ANNA: "sales", IVAN: "sales", OLGA: "wholesale"}


def midnight_of(at: datetime) -> datetime:
    return rollup.day_bounds(CAL, CAL.local(at).date().isoformat())[0]


def deals() -> list[dict[str, Any]]:
    first, second = NOW - timedelta(days=15), NOW - timedelta(days=30)
    ms, minute = timedelta(milliseconds=1), timedelta(minutes=1)
    idle: list[Any] = [
        first - minute,
        first + minute,  # the threshold's own day, after it: not forgotten yet
        first - ms,
        first,  # exactly 15 days: not yet
        midnight_of(first),
        midnight_of(first) - ms,
        second - minute,
        second + minute,
        second,
        midnight_of(second),
        midnight_of(second) - ms,
        NOW - timedelta(days=1),
        NOW - timedelta(days=400),
        NOW + timedelta(days=2),
        datetime(1970, 1, 1, tzinfo=UTC),
        None,
        "2026-01-01",
    ]
    out = []
    for i, at in enumerate(idle):
        owner = (ANNA, OLGA, IVAN)[i % 3]
        doc: dict[str, Any] = {
            "_id": f"idle-{i}",
            "pipeline_id": "orders",
            "stage_id": "new",
            "source_id": ("site", "phone")[i % 2],
            "responsible_id": owner,
            "open": True,
            "created_at": NOW - timedelta(days=500),
        }
        if at is not None:
            doc["last_activity_at"] = at
        out.append(doc)
    old = NOW - timedelta(days=90)
    out.append({**out[0], "_id": "closed", "open": False, "last_activity_at": old})
    out.append({**out[0], "_id": "service", "pipeline_id": "nps", "last_activity_at": old})
    return out


def brute(docs: list[dict[str, Any]], departments: frozenset[str] | None) -> dict[str, Any]:
    first, second = NOW - timedelta(days=15), NOW - timedelta(days=30)
    per: dict[str, list[int]] = {}
    for d in docs:
        at = d.get("last_activity_at")
        if not (d.get("open") is True and isinstance(at, datetime) and at < first):
            continue
        if d["pipeline_id"] == "nps":
            continue
        if departments is not None and DEPT[d["responsible_id"]] not in departments:
            continue
        cell = per.setdefault(d["responsible_id"], [0, 0])
        cell[0] += 1
        cell[1] += int(at < second)
    return {
        "forgotten_15d": sum(c[0] for c in per.values()),
        "forgotten_30d": sum(c[1] for c in per.values()),
        "rows": sorted([[u, a, b] for u, (a, b) in per.items()]),
    }


async def forgotten(store: Store, departments: frozenset[str] | None) -> tuple[Any, bool]:
    req = Request(
        start=NOW - timedelta(days=30),
        end=NOW,
        group=Group.MONTH,
        by=By.RESPONSIBLE,
        departments=departments,
        now=NOW,
    )
    ctx = Ctx(store, CONFIG, CAL, req)
    report = await overdue(ctx)
    table = next(t for t in report.tables if t.name == "forgotten_deals")
    got = {
        "forgotten_15d": report.totals["forgotten_15d"],
        "forgotten_30d": report.totals["forgotten_30d"],
        "rows": sorted(table.rows),
    }
    return got, ctx.rollup_lag is not None


async def check(store: Store, *, from_rollups: bool) -> None:
    docs = await store.deals.find({}).to_list()
    for departments in (None, frozenset({"sales"}), frozenset({"wholesale"})):
        got, read_rollups = await forgotten(store, departments)
        assert read_rollups == from_rollups
        assert got == brute(docs, departments), departments


async def touched(store: Store, deal_id: str, change: dict[str, Any], n: int) -> None:
    """A deal changed as the real code changes it: the document, then an event naming it —
    a new last activity as routing writes it (``$max``, then ``message.attached``), any
    other change with a ``deal.updated``-like event naming the deal."""
    await store.deals.update_one({"_id": deal_id}, change)
    if set(change) == {"$max"}:
        refs = {"message_id": f"m-{n}", "conversation_id": None, "deal_id": deal_id}
        data = {"channel": "api", "rule": "active_deal", "reason": "test", "automatic": False}
        ev = events.event("message.attached", refs, data, key=[deal_id, str(n)])
    else:
        fields = {"fields": sorted(change)}
        ev = events.event("deal.field_changed", {"deal_id": deal_id}, fields, key=[deal_id, str(n)])
    await events.append(store, [ev])


async def test_forgotten_deals_from_the_idle_days_equal_the_deals(store: Store) -> None:
    await store.deals.insert_many(deals())
    await check(store, from_rollups=False)
    await rollup.rebuild(store, CAL)
    idle_days = await store[rollup.IDLE_DAYS].count_documents({})
    assert idle_days >= 8  # the thresholds' days, the days before them, long ago, ...
    await check(store, from_rollups=True)
    # Deals move; the worker follows their events and marks the days they leave and enter.
    await touched(store, "idle-0", {"$max": {"last_activity_at": NOW - timedelta(hours=1)}}, 1)
    await touched(store, "idle-6", {"$set": {"open": False}}, 2)
    await touched(store, "idle-12", {"$set": {"responsible_id": OLGA}}, 3)
    await touched(store, "idle-15", {"$set": {"last_activity_at": NOW - timedelta(days=20)}}, 4)
    await store.deals.insert_one(
        {**deals()[1], "_id": "late", "last_activity_at": NOW - timedelta(days=31)}
    )
    await events.append(
        store,
        [events.event("deal.created", {"deal_id": "late"}, {}, key=["late"])],
    )
    worker = rollup.RollupWorker(store, CAL, owner="test", gap_grace_s=0.0)
    assert await worker.drain() >= 5
    await check(store, from_rollups=True)
    # A worker that finished its page marks only the days of documents that changed:
    # both the day a deal leaves and the one it enters.
    created = CAL.local(NOW - timedelta(days=500)).date().isoformat()
    marked = await store[rollup.MARKS].find_one({"_id": created})
    assert marked is not None
    await touched(store, "idle-1", {"$set": {"last_activity_at": NOW - timedelta(days=45)}}, 5)
    await touched(store, "idle-3", {"$max": {"last_activity_at": NOW}}, 6)
    await touched(store, "idle-12", {"$max": {"last_activity_at": NOW}}, 7)  # a whole day
    assert await worker.drain() == 3
    await check(store, from_rollups=True)
    # Activity alone moves no day total: the deals' creation day was not summed again.
    again = await store[rollup.MARKS].find_one({"_id": created})
    assert again is not None
    assert again["gen"] == marked["gen"]
    assert await store[rollup.IDLE_MARKS].count_documents({"dirty": True}) == 0
    # Without the rollups (not ready): the same figures from the deals.
    await rollup.set_ready(store, False)
    await check(store, from_rollups=False)


class Crash(Exception):
    """The process dying between a page's writes and its marks."""


async def dies_before_marks(worker: rollup.RollupWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's next page, failing right after its writes, before it marks their days
    (as a process killed there would; the next page is recomputed in full)."""

    async def crash(*_: object, **__: object) -> None:
        raise Crash

    real = rollup._touch
    monkeypatch.setattr(rollup, "_touch", crash)
    with pytest.raises(Crash):
        await worker.drain()
    monkeypatch.setattr(rollup, "_touch", real)


async def test_a_crash_after_a_deal_moved_leaves_no_day_counting_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deal's idle day is marked before its entity document moves: a worker that dies
    right after the write (before marking the days) leaves the day it left marked, and
    the next (full) page sums it — the full page itself could no longer know that day."""
    await store.deals.insert_many(deals())
    await rollup.rebuild(store, CAL)
    worker = rollup.RollupWorker(store, CAL, owner="test", gap_grace_s=0.0)
    await worker.drain()
    await touched(store, "idle-12", {"$max": {"last_activity_at": NOW}}, 1)  # 400 days idle
    await dies_before_marks(worker, monkeypatch)
    stored = await store[rollup.ENTITIES].find_one({"_id": "deal|idle-12"})
    assert stored is not None
    assert stored["idle_at"] == NOW  # the write happened, its marks did not
    assert await worker.drain() == 1
    await check(store, from_rollups=True)
