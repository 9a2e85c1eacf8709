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
    READ_BATCH,
    Cell,
    Counter,
    Ctx,
    Report,
    Table,
    by_field,
    by_ids,
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


async def funnel(ctx: Ctx) -> Report:
    service = ctx.config.service_pipelines()
    leads = await ctx.store.leads.find(
        {"created_at": ctx.range()}, PROJ, batch_size=READ_BATCH
    ).to_list()
    deals = await ctx.store.deals.find(
        {"created_at": ctx.range()}, PROJ, batch_size=READ_BATCH
    ).to_list()
    deals = [d for d in deals if d.get("pipeline_id") not in service]

    def seen(d: Document) -> bool:
        return ctx.visible(ctx.department_of_user(d.get("responsible_id")))

    leads, deals = [d for d in leads if seen(d)], [d for d in deals if seen(d)]
    lead_by_id = {d["_id"]: d for d in leads}
    converted = {
        d["converted_from"]
        for d in await by_field(
            ctx.store.deals, "converted_from", list(lead_by_id), {"converted_from": 1}, {}
        )
    }
    origin = [d.get("origin_intake_id") for d in [*leads, *deals]]
    parents = [d["converted_from"] for d in deals if d.get("converted_from")]
    parent_docs = {
        d["_id"]: d for d in await by_ids(ctx.store.leads, parents, {"origin_intake_id": 1})
    }
    origin += [d.get("origin_intake_id") for d in parent_docs.values()]
    channels = {
        m["_id"]: m.get("channel")
        for m in await by_ids(ctx.store.messages, [o for o in origin if o], {"channel": 1})
    }

    def key(d: Document) -> str:
        intake = d.get("origin_intake_id") or parent_docs.get(
            d.get("converted_from") or "", {}
        ).get("origin_intake_id")
        return ctx.key(
            channel=channels.get(intake or ""),
            source=d.get("source_id"),
            pipeline=d.get("pipeline_id"),
            responsible=d.get("responsible_id"),
            department=ctx.department_of_user(d.get("responsible_id")),
        )

    out = Counter(METRICS)
    for d in leads:
        period = ctx.period(d["created_at"])
        out.add(period, key(d), "leads")
        if d["_id"] in converted:
            out.add(period, key(d), "converted")
    for d in deals:
        period = ctx.period(d["created_at"])
        out.add(period, key(d), "deals")
        result = outcome(ctx, d)
        metric = "won" if result is StageOutcome.WON else "open_deals"
        metric = "lost" if result is StageOutcome.FAILED else metric
        out.add(period, key(d), metric)
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
    stages = await _stage_times(ctx, leads, deals)
    reasons = _lost_reasons(ctx, [*leads, *deals])
    return make_report(ctx, "funnel", totals, [table, stages, reasons])


async def _stage_times(ctx: Ctx, leads: list[Document], deals: list[Document]) -> Table:
    cohort = {d["_id"]: d for d in [*leads, *deals]}
    moves: dict[str, list[tuple[datetime, str | None, str]]] = defaultdict(list)
    query = {
        "type": {"$in": ["lead.stage_changed", "deal.stage_changed"]},
        "occurred_at": {"$gte": ctx.req.start},
    }
    proj = {"refs": 1, "occurred_at": 1, "data.from": 1, "data.to": 1}
    async for ev in ctx.store.events.find(query, proj, batch_size=READ_BATCH):
        refs = ev.get("refs") or {}
        data = ev.get("data") or {}
        eid = refs.get("deal_id") if ev.get("type", "").startswith("deal") else refs.get("lead_id")
        eid = eid or refs.get("lead_id") or refs.get("deal_id")
        if isinstance(eid, str) and eid in cohort and isinstance(ev.get("occurred_at"), datetime):
            moves[eid].append((ev["occurred_at"], data.get("from"), str(data.get("to"))))
    stays: dict[tuple[str, str], list[float]] = defaultdict(list)
    for eid, doc in cohort.items():
        changes = sorted(moves.get(eid, []), key=lambda m: m[0])
        if not changes:
            continue
        stage, since = changes[0][1] or "", doc["created_at"]
        for at, _frm, to in changes:
            if stage:
                stays[(str(doc.get("pipeline_id")), stage)].append((at - since).total_seconds())
            stage, since = to, at
    rows: list[list[Cell]] = [[p, s, len(v), median(v)] for (p, s), v in sorted(stays.items())]
    return Table(
        name="time_in_stage", columns=["pipeline", "stage", "stays", "median_s"], rows=rows
    )


def _lost_reasons(ctx: Ctx, docs: list[Document]) -> Table:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for d in docs:
        if outcome(ctx, d) is StageOutcome.FAILED:
            reason = (d.get("fields") or {}).get("lost_reason") or "unspecified"
            counts[(str(d.get("pipeline_id")), str(reason))] += 1
    rows: list[list[Cell]] = [[p, r, n] for (p, r), n in sorted(counts.items())]
    return Table(name="lost_reasons", columns=["pipeline", "reason", "count"], rows=rows)
