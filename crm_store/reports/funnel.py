"""The sales funnel of the period's cohort.

- ``leads``: leads created in the period; ``converted``: those of them converted into a
  deal (a deal whose ``converted_from`` is the lead), whenever that happened;
- ``deals``: deals created in the period (converted from a lead or opened directly by a
  "no leads" source), service pipelines (NPS) excluded; ``won`` / ``lost``: those of them
  whose current stage's outcome is ``won`` / ``failed``; ``open_deals`` the rest;
- rates: ``lead_conversion`` = converted / leads, ``win_rate`` = won / (won + lost),
  ``deal_win_share`` = won / deals;
- the key (``by``) of a lead or deal: its source, the channel of the message that opened
  it (a converted deal: its lead's), its pipeline, responsible and their department;
- **time in stage**: for every lead and deal of the cohort, each completed stay in a
  stage — from entering it (creation, or the ``*.stage_changed`` event moving it there)
  to the next stage change; median per pipeline and stage, in calendar seconds;
- **lost reasons**: cohort leads and deals now in a ``failed`` stage, counted by the
  ``lost_reason`` field (``unspecified`` when empty).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from config.models import StageOutcome
from crm_store.reports.common import (
    Cell,
    Counter,
    Ctx,
    Report,
    Table,
    by_field,
    by_ids,
    in_windows,
    make_report,
    median,
    ratio,
)
from crm_store.store import Document

METRICS = ["leads", "converted", "deals", "won", "lost", "open_deals"]
PROJ = {
    "created_at": 1,
    "source_id": 1,
    "pipeline_id": 1,
    "stage_id": 1,
    "responsible_id": 1,
    "origin_intake_id": 1,
    "converted_from": 1,
    "fields.lost_reason": 1,
}


def outcome(ctx: Ctx, doc: Document) -> StageOutcome | None:
    p = next((p for p in ctx.config.pipelines.pipelines if p.id == doc.get("pipeline_id")), None)
    stage = next((s for s in p.stages if s.id == doc.get("stage_id")), None) if p else None
    return stage.outcome if stage else None


async def _cohort(ctx: Ctx) -> tuple[list[Document], list[Document]]:
    """The period's visible leads and deals (service pipelines excluded), each with
    ``channel``, ``lost_reason``, ``stays`` [(stage, seconds)] and, for a lead,
    ``converted`` — computed from the collections."""
    service = ctx.config.service_pipelines()
    leads = [d async for d in ctx.in_period(ctx.store.leads, "created_at", PROJ)]
    deals = [d async for d in ctx.in_period(ctx.store.deals, "created_at", PROJ)]
    deals = [d for d in deals if d.get("pipeline_id") not in service]

    def seen(d: Document) -> bool:
        return ctx.visible(ctx.department_of_user(d.get("responsible_id")))

    leads, deals = [d for d in leads if seen(d)], [d for d in deals if seen(d)]
    converted = {
        d["converted_from"]
        for d in await by_field(
            ctx.store.deals, "converted_from", [d["_id"] for d in leads], {"converted_from": 1}, {}
        )
    }
    parents = [d["converted_from"] for d in deals if d.get("converted_from")]
    parent_docs = {
        d["_id"]: d for d in await by_ids(ctx.store.leads, parents, {"origin_intake_id": 1})
    }

    def intake(d: Document) -> str | None:
        own = d.get("origin_intake_id")
        return own or parent_docs.get(d.get("converted_from") or "", {}).get("origin_intake_id")

    origin = [i for i in (intake(d) for d in [*leads, *deals]) if i]
    channels = {
        m["_id"]: m.get("channel") for m in await by_ids(ctx.store.messages, origin, {"channel": 1})
    }
    moves = await _moves(ctx, {d["_id"] for d in [*leads, *deals]})
    for d in [*leads, *deals]:
        d["channel"] = channels.get(intake(d) or "")
        d["lost_reason"] = (d.get("fields") or {}).get("lost_reason")
        d["stays"] = stays_of(d["created_at"], moves.get(d["_id"], []))
    for d in leads:
        d["converted"] = d["_id"] in converted
    return leads, deals


Stays = dict[tuple[str, str], list[float]]


def _stays(docs: list[Document]) -> Stays:
    stays: Stays = defaultdict(list)
    for d in docs:
        for stage, seconds in d.get("stays") or []:
            stays[(str(d.get("pipeline_id")), str(stage))].append(float(seconds))
    return stays


async def _cohort_rollup(ctx: Ctx) -> tuple[list[Document], list[Document], Stays] | None:
    """The cohort summed per day and key from ``report_days`` (crm_store/reports/
    rollup.py): rows with a count ``n``, and the stays. None when the rollups are not
    usable or the period is not whole local days."""
    from crm_store.reports import rollup

    days = await rollup.days_range(ctx)
    if days is None:
        return None
    service = ctx.config.service_pipelines()
    leads: list[Document] = []
    deals: list[Document] = []
    stays: Stays = defaultdict(list)
    proj = {"leads": 1, "deals": 1, "stays": 1}
    async for day in rollup.read_days(ctx.store, days, proj):
        at = rollup.noon(ctx.cal, day["_id"])
        for kind, out in (("leads", leads), ("deals", deals)):
            for values in day.get(kind) or []:
                row = rollup.unpack(rollup.FUNNEL_ROW, values)
                if kind == "deals" and row.get("pipeline_id") in service:
                    continue
                if ctx.visible(ctx.department_of_user(row.get("responsible_id"))):
                    out.append(row | {"created_at": at})
        for values in day.get("stays") or []:
            row = rollup.unpack(rollup.STAY_ROW, values, "seconds")
            if row.get("kind") == "deal" and row.get("pipeline_id") in service:
                continue
            if ctx.visible(ctx.department_of_user(row.get("responsible_id"))):
                stays[(str(row.get("pipeline_id")), str(row.get("stage")))] += row["seconds"]
    return leads, deals, stays


async def funnel(ctx: Ctx) -> Report:
    cohort = await _cohort_rollup(ctx)
    if cohort is not None:
        leads, deals, stays = cohort
    else:
        leads, deals = await _cohort(ctx)
        stays = _stays([*leads, *deals])

    def key(d: Document) -> str:
        return ctx.key(
            channel=d.get("channel"),
            source=d.get("source_id"),
            pipeline=d.get("pipeline_id"),
            responsible=d.get("responsible_id"),
            department=ctx.department_of_user(d.get("responsible_id")),
        )

    out = Counter(METRICS)
    for d in leads:
        period, n = ctx.period(d["created_at"]), int(d.get("n", 1))
        out.add(period, key(d), "leads", n)
        if d.get("converted"):
            out.add(period, key(d), "converted", n)
    for d in deals:
        period, n = ctx.period(d["created_at"]), int(d.get("n", 1))
        out.add(period, key(d), "deals", n)
        result = outcome(ctx, d)
        metric = "won" if result is StageOutcome.WON else "open_deals"
        metric = "lost" if result is StageOutcome.FAILED else metric
        out.add(period, key(d), metric, n)
    table = out.table("funnel", ctx.req.by)
    table.columns += ["lead_conversion", "win_rate"]
    i = {c: n for n, c in enumerate(table.columns)}
    for row in table.rows:
        row += [
            ratio(int(row[i["converted"]] or 0), int(row[i["leads"]] or 0)),
            ratio(int(row[i["won"]] or 0), int(row[i["won"]] or 0) + int(row[i["lost"]] or 0)),
        ]
    t = out.totals
    totals: dict[str, Cell] = {
        **t,
        "lead_conversion": ratio(t["converted"], t["leads"]),
        "win_rate": ratio(t["won"], t["won"] + t["lost"]),
        "deal_win_share": ratio(t["won"], t["deals"]),
    }
    reasons = _lost_reasons(ctx, [*leads, *deals])
    return make_report(ctx, "funnel", totals, [table, stage_table(stays), reasons])


STAGE_EVENTS = ["lead.stage_changed", "deal.stage_changed"]
Move = tuple[datetime, str | None, str]  # when, from, to


def stage_event_entity(ev: Document) -> str | None:
    """The lead or deal a ``*.stage_changed`` event moved: a deal event's ``deal_id``,
    a lead event's ``lead_id``, else whichever it names."""
    refs = ev.get("refs") or {}
    eid = refs.get("deal_id") if str(ev.get("type", "")).startswith("deal") else refs.get("lead_id")
    eid = eid or refs.get("lead_id") or refs.get("deal_id")
    return eid if isinstance(eid, str) and isinstance(ev.get("occurred_at"), datetime) else None


def stage_move(ev: Document) -> Move:
    data = ev.get("data") or {}
    return (ev["occurred_at"], data.get("from"), str(data.get("to")))


def stays_of(created_at: datetime, moves: list[Move]) -> list[tuple[str, float]]:
    """Completed stays (stage, seconds) of one lead or deal: from entering a stage
    (creation, or the move into it) to the next move (pure; the rollups store it)."""
    out: list[tuple[str, float]] = []
    changes = sorted(moves, key=lambda m: m[0])
    if not changes:
        return out
    stage, since = changes[0][1] or "", created_at
    for at, _frm, to in changes:
        if stage:
            out.append((stage, (at - since).total_seconds()))
        stage, since = to, at
    return out


def stage_table(stays: dict[tuple[str, str], list[float]]) -> Table:
    rows: list[list[Cell]] = [[p, s, len(v), median(v)] for (p, s), v in sorted(stays.items())]
    return Table(
        name="time_in_stage", columns=["pipeline", "stage", "stays", "median_s"], rows=rows
    )


async def _moves(ctx: Ctx, cohort: set[str]) -> dict[str, list[Move]]:
    """The stage moves of the cohort, from the stage events since the period's start."""
    moves: dict[str, list[Move]] = defaultdict(list)
    proj = {"type": 1, "refs": 1, "occurred_at": 1, "data.from": 1, "data.to": 1}
    # One type at a time: an equality and a range are what the embedded server answers
    # from the (type, occurred_at) index; with `$in` it scanned the whole log per window.
    for type_ in STAGE_EVENTS:
        query = {"type": type_}
        start = ctx.req.start
        async for ev in in_windows(ctx.store.events, query, "occurred_at", start, None, proj):
            eid = stage_event_entity(ev)
            if eid is not None and eid in cohort:
                moves[eid].append(stage_move(ev))
    return moves


def _lost_reasons(ctx: Ctx, docs: list[Document]) -> Table:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for d in docs:
        if outcome(ctx, d) is StageOutcome.FAILED:
            reason = d.get("lost_reason") or "unspecified"
            counts[(str(d.get("pipeline_id")), str(reason))] += int(d.get("n", 1))
    rows: list[list[Cell]] = [[p, r, n] for (p, r), n in sorted(counts.items())]
    return Table(name="lost_reasons", columns=["pipeline", "reason", "count"], rows=rows)
