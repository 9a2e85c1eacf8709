"""Responsiveness from the day totals' episode rows (crm_store/reports/rollup.py
``EPISODE_ROW``) equals responsiveness from the collections — for whole local days (the
day rows), for a period cut inside days (``report_episodes``), for the admin and one
department — and stays equal when an episode's start moves to another day: a customer's
message that arrives late but is dated before the episode, followed by the rollup
worker; also when the worker dies between writing the episode and marking its days."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from automation.calendar import WorkingCalendar
from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import events
from crm_store.reports import rollup
from crm_store.reports.common import By, Ctx, Group, Request
from crm_store.reports.responsiveness import responsiveness
from crm_store.store import Store
from tests.test_report_idle_days import dies_before_marks

CONFIG = load_config(DEFAULT_CONFIG_DIR)
CAL = WorkingCalendar.from_config(CONFIG.calendar)
MSK = ZoneInfo("Europe/Moscow")
NOW = datetime(2026, 3, 20, 9, 0, tzinfo=MSK)
ANNA, OLGA = "anna.smirnova", "olga.ivanova"
WHOLE = (datetime(2026, 3, 1, tzinfo=MSK), datetime(2026, 3, 20, tzinfo=MSK))
CUT = (datetime(2026, 3, 4, 13, 30, tzinfo=MSK), datetime(2026, 3, 12, 9, 45, tzinfo=MSK))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=MSK)


def conversations() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Conversations in two departments: answered (in working hours, over a weekend,
    by automation only), closed unanswered, still waiting; two episodes starting at the
    same instant (one row, counted twice)."""
    convs, msgs = [], []
    plan: list[tuple[str, str, str, list[tuple[str, datetime]]]] = [
        ("c-mon", "sales", ANNA, [("in", at(2, 10)), ("reply", at(2, 10, 20))]),
        ("c-fri", "sales", ANNA, [("in", at(6, 17, 50)), ("reply", at(9, 11))]),
        ("c-auto", "wholesale", OLGA, [("in", at(5, 9)), ("auto", at(5, 9, 1))]),
        ("c-twin-1", "wholesale", OLGA, [("in", at(11, 12)), ("reply", at(11, 13))]),
        ("c-twin-2", "wholesale", OLGA, [("in", at(11, 12)), ("reply", at(11, 13))]),
        ("c-late", "sales", ANNA, [("in", at(12, 10)), ("reply", at(12, 10, 5))]),
        ("c-wait", "sales", None, [("in", at(18, 16))]),
        ("c-edge", "sales", ANNA, [("in", at(4, 13, 30)), ("in", at(12, 9, 45))]),
    ]
    for cid, dept, owner, items in plan:
        convs.append(
            {
                "_id": cid,
                "channel": "telegram",
                "department": dept,
                "assignee_id": owner,
                # c-late's conversation began long before (its creation day is not
                # the episode's).
                "created_at": at(1, 9) if cid == "c-late" else items[0][1],
            }
        )
        for n, (kind, when) in enumerate(items):
            msgs.append(message(cid, n, kind, when))
    return convs, msgs


def message(cid: str, n: int, kind: str, when: datetime) -> dict[str, Any]:
    out = kind != "in"
    return {
        "_id": f"{cid}-m{n}",
        "conversation_id": cid,
        "channel": "telegram",
        "source_id": "telegram-bot",
        "direction": "out" if out else "in",
        "author_id": (ANNA if kind == "reply" else None),
        "automatic": kind == "auto",
        "received_at": when,
    }


async def report(
    store: Store, period: tuple[datetime, datetime], departments: frozenset[str] | None
) -> tuple[Any, bool]:
    req = Request(
        start=period[0],
        end=period[1],
        group=Group.DAY,
        by=By.RESPONSIBLE,
        departments=departments,
        now=NOW,
    )
    ctx = Ctx(store, CONFIG, CAL, req)
    r = await responsiveness(ctx)
    tables = {t.name: t.rows for t in r.tables if t.name != "missed_calls"}
    return (r.totals, tables), ctx.rollup_lag is not None


async def check(store: Store) -> Any:
    """Each period and scope from the rollups, then from the collections: equal."""
    seen = {}
    for period in (WHOLE, CUT):
        for departments in (None, frozenset({"wholesale"})):
            from_rollups, read = await report(store, period, departments)
            assert read
            await rollup.set_ready(store, False)
            try:
                from_collections, read = await report(store, period, departments)
            finally:
                await rollup.set_ready(store, True)
            assert not read
            assert from_rollups == from_collections, (period, departments)
            seen[(period, departments)] = from_rollups
    return seen


async def moved_late(store: Store) -> None:
    """c-late's customer wrote on the evening of the 10th; the message arrives now (after
    the episode of the 12th was rolled up) and the routing's event names the conversation:
    the episode now starts on the 10th."""
    await store.messages.insert_one(message("c-late", 9, "in", at(10, 21)))
    refs = {"message_id": "c-late-m9", "conversation_id": "c-late"}
    data = {"channel": "telegram", "rule": "active_deal", "reason": "test", "automatic": False}
    await events.append(store, [events.event("message.attached", refs, data, key=["c-late-m9"])])


def day_rows(seen: Any) -> dict[str, int]:
    (_, tables) = seen[(WHOLE, None)]
    out: dict[str, int] = {}
    for period, _, episodes, *_ in tables["first_response"]:
        out[period] = out.get(period, 0) + episodes
    return out


async def test_episode_rows_equal_the_collections(store: Store) -> None:
    convs, msgs = conversations()
    await store.conversations.insert_many(convs)
    await store.messages.insert_many(msgs)
    await rollup.rebuild(store, CAL)
    seen = await check(store)
    totals, _ = seen[(WHOLE, None)]
    # Every conversation starts one episode; c-edge's second message is within it.
    assert (totals["episodes"], totals["answered"], totals["waiting"]) == (8, 5, 3)
    assert seen[(WHOLE, frozenset({"wholesale"}))][0]["episodes"] == 3
    assert seen[(CUT, None)][0]["episodes"] == 5  # c-edge starts at CUT's first instant
    worker = rollup.RollupWorker(store, CAL, owner="test", gap_grace_s=0.0)
    # A first page (recomputed in full), so the next is the worker's usual page: only what
    # changed is written and only its days are marked.
    await unrelated_event(store)
    assert await worker.drain() == 1
    assert not worker._full
    await moved_late(store)
    assert await worker.drain() == 1
    seen = await check(store)
    rows = day_rows(seen)
    assert rows.get("2026-03-10") == 1
    assert "2026-03-12" not in rows  # the day the episode left counts it no more
    # Day totals summed by a process of an older version (no episode rows): the episodes
    # are read from report_episodes instead of counting none.
    await store[rollup.DAYS].update_one({"_id": "2026-03-10"}, {"$unset": {"episodes": ""}})
    assert day_rows(await check(store)).get("2026-03-10") == 1


async def unrelated_event(store: Store) -> None:
    """An event naming a conversation whose rollups it does not change (a receipt)."""
    refs = {"message_id": "c-mon-m1", "conversation_id": "c-mon"}
    data = {"channel": "telegram", "status": "read"}
    await events.append(store, [events.event("message.status", refs, data, key=["c-mon-m1"])])


async def test_a_crash_after_an_episode_moved_leaves_no_day_counting_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dying after rewriting an episode and before marking its days: the next
    (full) page finds only the new start, and still marks the day the episode left (by
    the conversation's message there), so no day counts it twice."""
    convs, msgs = conversations()
    await store.conversations.insert_many(convs)
    await store.messages.insert_many(msgs)
    await rollup.rebuild(store, CAL)
    worker = rollup.RollupWorker(store, CAL, owner="test", gap_grace_s=0.0)
    await worker.drain()
    await moved_late(store)
    await dies_before_marks(worker, monkeypatch)
    stored = await store[rollup.EPISODES].find_one({"_id": "c-late|1"})
    assert stored is not None
    assert stored["start"] == at(10, 21)  # the write happened, its marks did not
    assert await worker.drain() == 1
    rows = day_rows(await check(store))
    assert rows.get("2026-03-10") == 1
    assert "2026-03-12" not in rows


async def test_a_busy_day_is_summed_again_only_after_its_wait(store: Store) -> None:
    """With a share of the time below 1, a day just summed waits d × (1/share − 1) before
    the next sum: marked again meanwhile, it stays dirty (nothing lost) and is summed once
    its wait is over."""
    convs, msgs = conversations()
    await store.conversations.insert_many(convs)
    await store.messages.insert_many(msgs)
    await rollup.rebuild(store, CAL)
    marks = store[rollup.MARKS]
    await rollup.mark_days(store, ["2026-03-12"])
    before = datetime.now(MSK)
    assert await rollup.refresh_days(store, CAL, share=0.5) == 1
    mark = await marks.find_one({"_id": "2026-03-12"})
    assert mark is not None
    assert mark["dirty"] is False
    assert mark["next_at"] >= before
    # A late message on that day, its mark, and a pass within the wait: not summed yet.
    await store.messages.insert_one(message("c-late", 8, "in", at(12, 9)))
    await rollup.recompute(store, CAL, ["c-late"])
    # (every day it marked is still within a wait)
    await marks.update_many({}, {"$set": {"next_at": datetime(2100, 1, 1, tzinfo=MSK)}})
    assert await rollup.refresh_days(store, CAL, share=0.5) == 0
    assert (await marks.find_one({"_id": "2026-03-12"}) or {})["dirty"] is True
    # The wait over: summed, and equal to the collections again.
    await marks.update_many({}, {"$set": {"next_at": before}})
    assert await rollup.refresh_days(store, CAL, share=0.5) >= 1
    assert not await marks.count_documents({"dirty": True})
    await check(store)
    # Share 1 (the default): no wait at all.
    await rollup.mark_days(store, ["2026-03-12"])
    await marks.update_one(
        {"_id": "2026-03-12"}, {"$set": {"next_at": datetime(2100, 1, 1, tzinfo=MSK)}}
    )
    assert await rollup.refresh_days(store, CAL) == 1


async def test_a_page_longer_than_the_lease_keeps_the_rollups_maintained(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker renews its lease while it works on a page: the reports keep reading the
    rollups during a page that takes longer than the lease (a burst on a busy store)."""
    convs, msgs = conversations()
    await store.conversations.insert_many(convs)
    await store.messages.insert_many(msgs)
    await rollup.rebuild(store, CAL)
    worker = rollup.RollupWorker(store, CAL, owner="test", gap_grace_s=0.0, lease_s=0.3)
    real = rollup.recompute
    slow = asyncio.Event()

    async def slow_recompute(*args: Any, **kwargs: Any) -> int:
        slow.set()
        await asyncio.sleep(1.2)  # four leases
        return await real(*args, **kwargs)

    monkeypatch.setattr(rollup, "recompute", slow_recompute)
    await unrelated_event(store)
    page = asyncio.create_task(worker.drain())
    await slow.wait()
    seen = []
    for _ in range(5):
        await asyncio.sleep(0.2)
        seen.append((await rollup.status(store)).maintained)
    assert await page == 1
    assert all(seen), seen
