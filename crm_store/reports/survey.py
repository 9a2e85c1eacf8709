"""Survey scores, from ``survey_answers`` (one document per survey sent for a deal:
``deal_id``, ``pipeline``, ``responsible_id``, ``department``, ``questions`` [keys],
``answers`` {key: 1..5}, ``sent_at``, ``answered_at`` (None until answered),
``expires_at``).

- ``sent``: surveys sent in the period; ``answered``: surveys answered in the period
  (bucketed by ``answered_at``); ``response_rate`` = answered among those sent in the
  period / sent;
- per question: the number of answers with a score (an integer 1..5; anything else is
  ignored), the average, and the count of each score 1..5;
- the key (``by``): the survey's pipeline, responsible or department (channel and source
  do not apply: ``—``). Department is the survey's own.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from crm_store.reports.common import Cell, Ctx, Report, Table, make_report, ratio
from crm_store.store import Document

SCORES = (1, 2, 3, 4, 5)
COLUMNS = ["question", "answers", "average", *(f"score_{s}" for s in SCORES)]


def _scores(doc: Document) -> dict[str, int]:
    answers = doc.get("answers")
    if not isinstance(answers, dict):
        return {}
    return {
        str(k): v
        for k, v in answers.items()
        if isinstance(v, int) and not isinstance(v, bool) and v in SCORES
    }


def _row(values: list[int]) -> list[Cell]:
    avg = round(sum(values) / len(values), 4) if values else None
    return [len(values), avg, *(values.count(s) for s in SCORES)]


async def survey(ctx: Ctx) -> Report:
    coll = ctx.store["survey_answers"]
    proj = {"answers": 1, "answered_at": 1, "pipeline": 1, "responsible_id": 1, "department": 1}
    answered = [
        d
        async for d in ctx.in_period(coll, "answered_at", proj)
        if ctx.visible(d.get("department")) and isinstance(d.get("answered_at"), datetime)
    ]
    sent = [
        d
        async for d in ctx.in_period(coll, "sent_at", {"department": 1, "answered_at": 1})
        if ctx.visible(d.get("department"))
    ]
    cells: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    per_user: dict[tuple[str, str], list[int]] = defaultdict(list)
    per_question: dict[str, list[int]] = defaultdict(list)
    for d in answered:
        key = ctx.key(
            pipeline=d.get("pipeline"),
            responsible=d.get("responsible_id"),
            department=d.get("department"),
        )
        period = ctx.period(d["answered_at"])
        for q, v in _scores(d).items():
            cells[(period, key, q)].append(v)
            per_user[(str(d.get("responsible_id") or "—"), q)].append(v)
            per_question[q].append(v)
    lead = ["period", *([ctx.req.by.value] if ctx.req.by else [])]
    scores = Table(
        name="scores",
        columns=[*lead, *COLUMNS],
        rows=[
            [p, *([k] if ctx.req.by else []), q, *_row(v)] for (p, k, q), v in sorted(cells.items())
        ],
    )
    users = Table(
        name="by_responsible",
        columns=["responsible", *COLUMNS],
        rows=[[u, q, *_row(v)] for (u, q), v in sorted(per_user.items())],
    )
    questions = Table(
        name="by_question",
        columns=COLUMNS,
        rows=[[q, *_row(v)] for q, v in sorted(per_question.items())],
    )
    every = [v for vs in per_question.values() for v in vs]
    totals: dict[str, Cell] = {
        "sent": len(sent),
        "answered": len(answered),
        "response_rate": ratio(sum(1 for d in sent if d.get("answered_at")), len(sent)),
        "average": _row(every)[1],
    }
    return make_report(ctx, "survey", totals, [scores, users, questions])
