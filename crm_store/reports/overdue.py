"""Overdue work.

- **tasks** whose deadline falls in the period (bucketed by deadline): ``tasks_due``;
  ``overdue_open`` — still open and the deadline has passed at the time of the report;
  ``completed_late`` — done after the deadline (``completed_at > deadline``);
  ``completed_on_time``; responsible = the assignee, department = the assignee's;
- **reminders fired**: ``timer.fired`` events that occurred in the period, per rule id
  (the seeds' ``lead-untouched`` and ``payment-reminder`` are in the totals by name);
  responsible and department are the lead's or deal's;
- **forgotten deals** (a snapshot at the time of the report, not bucketed): open deals of
  sales pipelines (service pipelines such as NPS excluded) with no activity
  (``last_activity_at``) for at least 15 days (``forgotten_15d``, includes the older
  ones) and at least 30 days (``forgotten_30d``) — the head-of-sales escalation's
  thresholds. Read from the idle days of the report rollups when they are usable
  (``rollup_lag`` is then set), else from the deals.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from crm_store.reports import rollup
from crm_store.reports.common import (
    Cell,
    Counter,
    Ctx,
    Report,
    Table,
    by_ids,
    in_windows,
    make_report,
)
from crm_store.store import Document

TASK_METRICS = ["tasks_due", "overdue_open", "completed_late", "completed_on_time"]
SEED_RULES = ("lead-untouched", "payment-reminder")
FORGOTTEN_DAYS = (15, 30)


async def _entities(ctx: Ctx, lead_ids: list[str], deal_ids: list[str]) -> dict[str, Document]:
    proj = {"pipeline_id": 1, "source_id": 1, "responsible_id": 1}
    out = {d["_id"]: d for d in await by_ids(ctx.store.leads, lead_ids, proj)}
    out.update({d["_id"]: d for d in await by_ids(ctx.store.deals, deal_ids, proj)})
    return out


async def _tasks(ctx: Ctx) -> Counter:
    out = Counter(TASK_METRICS)
    proj = {"deadline": 1, "status": 1, "completed_at": 1, "assignee_id": 1, "entity": 1}
    docs = [
        d
        async for d in ctx.in_period(ctx.store["tasks"], "deadline", proj)
        if ctx.visible(ctx.department_of_user(d.get("assignee_id")))
    ]
    ents: dict[str, Document] = {}
    if ctx.req.by is not None and ctx.req.by.value in ("pipeline", "source"):
        ids = [(d.get("entity") or {}).get("id") for d in docs]
        ents = await _entities(ctx, [i for i in ids if i], [i for i in ids if i])
    for d in docs:
        ent = ents.get((d.get("entity") or {}).get("id") or "", {})
        key = ctx.key(
            source=ent.get("source_id"),
            pipeline=ent.get("pipeline_id"),
            responsible=d.get("assignee_id"),
            department=ctx.department_of_user(d.get("assignee_id")),
        )
        period = ctx.period(d["deadline"])
        out.add(period, key, "tasks_due")
        done = d.get("completed_at")
        if d.get("status") == "done" and isinstance(done, datetime):
            out.add(period, key, "completed_late" if done > d["deadline"] else "completed_on_time")
        elif d.get("status") != "done" and d["deadline"] < ctx.req.now:
            out.add(period, key, "overdue_open")
    return out


async def _reminders(ctx: Ctx) -> tuple[Table, dict[str, int]]:
    proj = {"refs": 1, "data.rule_id": 1, "occurred_at": 1}
    fired = {"type": "timer.fired"}
    events = [e async for e in ctx.in_period(ctx.store.events, "occurred_at", proj, fired)]
    lead_ids = [i for e in events if (i := (e.get("refs") or {}).get("lead_id"))]
    deal_ids = [i for e in events if (i := (e.get("refs") or {}).get("deal_id"))]
    ents = await _entities(ctx, lead_ids, deal_ids)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    per_rule: dict[str, int] = defaultdict(int)
    for e in events:
        refs = e.get("refs") or {}
        ent = ents.get(refs.get("deal_id") or refs.get("lead_id") or "", {})
        dept = ctx.department_of_user(ent.get("responsible_id"))
        if not ctx.visible(dept):
            continue
        rule = str((e.get("data") or {}).get("rule_id") or "—")
        key = ctx.key(
            source=ent.get("source_id"),
            pipeline=ent.get("pipeline_id"),
            responsible=ent.get("responsible_id"),
            department=dept,
        )
        counts[(ctx.period(e["occurred_at"]), key, rule)] += 1
        per_rule[rule] += 1
    lead = ["period", *([ctx.req.by.value] if ctx.req.by else [])]
    rows: list[list[Cell]] = [
        [p, *([k] if ctx.req.by else []), r, n] for (p, k, r), n in sorted(counts.items())
    ]
    totals = {f"reminders_{r}": per_rule.get(r, 0) for r in SEED_RULES}
    totals["reminders_all"] = sum(per_rule.values())
    return Table(name="reminders", columns=[*lead, "rule_id", "fired"], rows=rows), totals


# (the deal's attributes, counted in forgotten_15d, counted in forgotten_30d)
Idle = tuple[Document, int, int]


async def _idle_from_deals(ctx: Ctx, first: datetime, second: datetime) -> AsyncIterator[Idle]:
    """Every open deal idle since before ``first`` (the collection: no rollups)."""
    proj = {"pipeline_id": 1, "source_id": 1, "responsible_id": 1, "last_activity_at": 1}
    idle = in_windows(ctx.store.deals, {"open": True}, "last_activity_at", None, first, proj)
    async for d in idle:
        yield d, 1, int(d["last_activity_at"] < second)


async def _idle_from_rollup(
    ctx: Ctx, first: datetime, second: datetime, st: rollup.Status
) -> AsyncIterator[Idle]:
    """The same from the idle days (crm_store/reports/rollup.py): whole local days before
    each threshold's day from ``report_idle_days``, the threshold's own day up to the
    threshold from the deals' entity documents."""
    ctx.rollup_lag = st.lag
    day_first = rollup.day_bounds(ctx.cal, ctx.cal.local(first).date().isoformat())[0]
    day_second = rollup.day_bounds(ctx.cal, ctx.cal.local(second).date().isoformat())[0]
    days = in_windows(ctx.store[rollup.IDLE_DAYS], {}, "start", None, day_first, None)
    async for doc in days:
        both = int(doc["start"] < day_second)
        for row in doc.get("rows") or []:
            attrs = rollup.unpack(rollup.IDLE_ROW, row)
            yield attrs, attrs["n"], attrs["n"] * both
    proj = {"_id": 0, **dict.fromkeys(rollup.IDLE_ROW, 1)}
    deal = {"kind": "deal"}
    ents = ctx.store[rollup.ENTITIES]
    async for d in in_windows(ents, deal, "idle_at", day_first, first, proj):
        yield d, 1, 0
    async for d in in_windows(ents, deal, "idle_at", day_second, second, proj):
        yield d, 0, 1


async def _forgotten(ctx: Ctx) -> tuple[Table, dict[str, int]]:
    first = ctx.req.now - timedelta(days=FORGOTTEN_DAYS[0])
    second = ctx.req.now - timedelta(days=FORGOTTEN_DAYS[1])
    service = ctx.config.service_pipelines()
    st = await rollup.status(ctx.store)
    idle = (
        _idle_from_rollup(ctx, first, second, st)
        if st.usable
        else _idle_from_deals(ctx, first, second)
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = [0, 0]
    async for d, n15, n30 in idle:
        dept = ctx.department_of_user(d.get("responsible_id"))
        if d.get("pipeline_id") in service or not ctx.visible(dept):
            continue
        key = ctx.key(
            source=d.get("source_id"),
            pipeline=d.get("pipeline_id"),
            responsible=d.get("responsible_id"),
            department=dept,
        )
        for cell in (counts[key], total):
            cell[0] += n15
            cell[1] += n30
    cols = [ctx.req.by.value if ctx.req.by else "all", "forgotten_15d", "forgotten_30d"]
    rows: list[list[Cell]] = [[k or "all", a, b] for k, (a, b) in sorted(counts.items())]
    return Table(name="forgotten_deals", columns=cols, rows=rows), {
        "forgotten_15d": total[0],
        "forgotten_30d": total[1],
    }


async def overdue(ctx: Ctx) -> Report:
    # Three independent reads: while the store answers one, this process decodes another
    # (a failing one cancels the others).
    async with asyncio.TaskGroup() as tg:
        due = tg.create_task(_tasks(ctx))
        fired = tg.create_task(_reminders(ctx))
        idle = tg.create_task(_forgotten(ctx))
    tasks, (reminders, r_totals), (forgotten, f_totals) = (
        due.result(),
        fired.result(),
        idle.result(),
    )
    totals: dict[str, Cell] = {**tasks.totals, **r_totals, **f_totals}
    return make_report(
        ctx, "overdue", totals, [tasks.table("tasks", ctx.req.by), reminders, forgotten]
    )
