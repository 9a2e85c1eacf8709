"""Responsiveness: how fast the team answers.

**First response time** is measured per *episode* of a conversation:

- the conversation's messages and closings are put in time order (an inbound message
  before a reply and a reply before a closing at the same instant);
- an episode **starts** at the first inbound message that is not automatic (auto-replies
  and bounces do not start the clock) since the conversation opened or was last closed;
- it is **answered** by the first operator reply after that: an outbound message with an
  author (an operator) that is not automatic. Messages sent by automation and internal
  notes never count; nor do later customer messages within the same episode;
- a **closing** (``conversation.closed``) ends the episode; if it was not answered it
  counts as *closed unanswered*. A conversation reopened afterwards (by the customer
  writing again or by an operator) starts a new episode with its next inbound message;
- an episode belongs to the period of its start; its responsible is the operator who
  answered it (else the conversation's assignee) and its department the conversation's.

Response times are given in working seconds (automation/calendar.py: working days and
hours in the company's time zone; crm_store/reports/working_time.py) and in calendar
seconds, as nearest-rank p50 and p90.

**Waiting over X**: episodes started in the period still unanswered and not closed at
the time of the report, waiting longer than ``wait_over`` calendar minutes.

**Missed calls called back**: inbound calls that started in the period and were missed
(volume.py), and of them those followed by an outbound call to the same number that
started within ``callback_within`` calendar minutes after the missed call ended (or
started, when no end is known).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from crm_store.reports.common import (
    Cell,
    Ctx,
    Report,
    Table,
    by_field,
    in_windows,
    make_report,
    percentile,
    ratio,
)
from crm_store.reports.volume import inbound_calls, is_missed, period_calls
from crm_store.reports.working_time import calendar_seconds, working_seconds
from crm_store.store import Document

YIELD_EVERY = 500
# Ties at one instant: the customer's message, then the reply, then the closing.
_ORDER = {"in": 0, "reply": 1, "close": 2}


@dataclass(slots=True)
class Episode:
    conversation_id: str
    start: datetime
    source_id: str | None
    answered_at: datetime | None = None
    answered_by: str | None = None
    closed: bool = False
    work_s: float | None = None  # precomputed by the rollups
    calendar_s: float | None = None


def episodes(conversation_id: str, timeline: list[tuple[datetime, str, Document]]) -> list[Episode]:
    """The episodes of one conversation from its (time, kind, doc) items (see module doc);
    kind is ``in`` (a non-automatic inbound message), ``reply`` (an operator's reply) or
    ``close``."""
    out: list[Episode] = []
    current: Episode | None = None
    for at, kind, doc in sorted(timeline, key=lambda x: (x[0], _ORDER[x[1]])):
        if kind == "in":
            if current is None:
                current = Episode(conversation_id, at, doc.get("source_id"))
                out.append(current)
        elif kind == "reply":
            if current is not None and current.answered_at is None:
                current.answered_at = at
                current.answered_by = doc.get("author_id")
        elif current is not None:
            current.closed = current.answered_at is None
            current = None
    return out


def kind_of(doc: Document) -> str | None:
    direction = doc.get("direction")
    if direction == "in":
        return None if doc.get("automatic") else "in"
    if direction == "out" and doc.get("author_id") and not doc.get("automatic"):
        return "reply"
    return None  # a note, an automatic send


# An episode with its conversation's channel, department and assignee.
Counted = tuple[Episode, Document]
_CONV = ("channel", "department", "assignee_id")


async def _rollup_episodes(ctx: Ctx) -> list[Counted] | None:
    """The episodes from the rollups (crm_store/reports/rollup.py) when they are usable:
    the day totals' episode rows for a period of whole local days (one document a day),
    else ``report_episodes``; None when the rollups are not usable."""
    from crm_store.reports import rollup

    days = await rollup.days_range(ctx)
    if days is not None:
        found: list[Counted] = []
        async for day in rollup.read_days(ctx.store, days, {"episodes": 1}):
            if "episodes" not in day:  # summed by a process of an older version
                found = []
                break
            for values in day["episodes"]:
                r = rollup.unpack(rollup.EPISODE_ROW, values)
                if ctx.visible(r["department"]):
                    found += [(_episode("", r), {k: r[k] for k in _CONV})] * int(r["n"])
        else:
            return found
    st = await rollup.status(ctx.store)
    if not st.usable:
        return None
    ctx.rollup_lag = st.lag
    found = []
    async for d in ctx.in_period(ctx.store[rollup.EPISODES], "start", None):
        if ctx.visible(d.get("department")):
            found.append((_episode(d["conversation_id"], d), {k: d.get(k) for k in _CONV}))
    return found


def _episode(conversation_id: str, d: Document) -> Episode:
    """An episode from its rollup document or day row."""
    return Episode(
        conversation_id,
        d["start"],
        d.get("source_id"),
        d.get("answered_at"),
        d.get("answered_by"),
        bool(d.get("closed")),
        d.get("work_s"),
        d.get("calendar_s"),
    )


async def _episodes(ctx: Ctx) -> list[Counted]:
    """Every episode that started in the period, of conversations the caller sees."""
    from_rollup = await _rollup_episodes(ctx)
    if from_rollup is not None:
        return from_rollup
    started = await (
        await ctx.store.messages.aggregate(
            [
                {"$match": {"direction": "in", "received_at": ctx.range()}},
                {"$group": {"_id": "$conversation_id"}},
            ]
        )
    ).to_list()
    conv_ids = [g["_id"] for g in started if isinstance(g["_id"], str)]
    convs = await ctx.conversations(conv_ids)
    conv_ids = [c for c in conv_ids if ctx.visible(convs.get(c, {}).get("department"))]
    timelines: dict[str, list[tuple[datetime, str, Document]]] = defaultdict(list)
    proj = {"conversation_id": 1, "direction": 1, "automatic": 1, "author_id": 1}
    proj |= {"received_at": 1, "source_id": 1}
    for m in await by_field(ctx.store.messages, "conversation_id", conv_ids, proj, {}):
        kind = kind_of(m)
        if kind is not None and isinstance(m.get("received_at"), datetime):
            timelines[m["conversation_id"]].append((m["received_at"], kind, m))
    wanted = set(conv_ids)
    # Closings since the oldest of these conversations began: none before matters.
    began = [c["created_at"] for c in map(convs.get, conv_ids) if c and c.get("created_at")]
    since = min(began) if began and len(began) == len(conv_ids) else None
    query: Document = {"type": "conversation.closed"}
    proj = {"refs.conversation_id": 1, "occurred_at": 1}
    async for ev in in_windows(ctx.store.events, query, "occurred_at", since, None, proj):
        cid = (ev.get("refs") or {}).get("conversation_id")
        if cid in wanted and isinstance(ev.get("occurred_at"), datetime):
            timelines[cid].append((ev["occurred_at"], "close", ev))
    return [
        (e, convs.get(cid, {}))
        for cid in conv_ids
        for e in episodes(cid, timelines[cid])
        if ctx.req.start <= e.start < ctx.req.end
    ]


RESPONSE_COLUMNS = [
    "episodes",
    "answered",
    "closed_unanswered",
    "waiting",
    "waiting_over",
    "frt_work_p50_s",
    "frt_work_p90_s",
    "frt_calendar_p50_s",
    "frt_calendar_p90_s",
]


@dataclass(slots=True)
class _Cell:
    episodes: int = 0
    closed: int = 0
    waiting: int = 0
    waiting_over: int = 0
    work: list[float] = field(default_factory=list)
    calendar: list[float] = field(default_factory=list)

    def row(self) -> list[Cell]:
        return [
            self.episodes,
            len(self.work),
            self.closed,
            self.waiting,
            self.waiting_over,
            percentile(self.work, 50),
            percentile(self.work, 90),
            percentile(self.calendar, 50),
            percentile(self.calendar, 90),
        ]


async def responsiveness(ctx: Ctx) -> Report:
    # The missed calls are read while the episodes are (independent reads; a failing one
    # cancels the other).
    async with asyncio.TaskGroup() as tg:
        callbacks_read = tg.create_task(_callbacks(ctx))
        episodes_read = tg.create_task(_episodes(ctx))
    found = episodes_read.result()
    cells: dict[tuple[str, str], _Cell] = defaultdict(_Cell)
    per_user: dict[str, _Cell] = defaultdict(_Cell)
    total = _Cell()
    over = timedelta(minutes=ctx.req.wait_over_min)
    for i, (e, conv) in enumerate(found):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)  # let the process's webhooks in between
        responsible = e.answered_by or conv.get("assignee_id")
        key = ctx.key(
            channel=conv.get("channel"),
            source=e.source_id,
            responsible=responsible,
            department=conv.get("department"),
        )
        targets = (cells[(ctx.period(e.start), key)], per_user[responsible or "—"], total)
        for cell in targets:
            cell.episodes += 1
            if e.answered_at is not None:
                if e.work_s is None:
                    e.work_s = working_seconds(ctx.cal, e.start, e.answered_at)
                    e.calendar_s = calendar_seconds(e.start, e.answered_at)
                cell.work.append(e.work_s)
                cell.calendar.append(e.calendar_s or 0.0)
            elif e.closed:
                cell.closed += 1
            else:
                cell.waiting += 1
                if ctx.req.now - e.start > over:
                    cell.waiting_over += 1
    lead_cols = ["period", *([ctx.req.by.value] if ctx.req.by else [])]
    main = Table(
        name="first_response",
        columns=[*lead_cols, *RESPONSE_COLUMNS],
        rows=[[p, *([k] if ctx.req.by else []), *c.row()] for (p, k), c in sorted(cells.items())],
    )
    users = Table(
        name="by_responsible",
        columns=["responsible", *RESPONSE_COLUMNS],
        rows=[[u, *c.row()] for u, c in sorted(per_user.items())],
    )
    callbacks, cb_totals = callbacks_read.result()
    totals = dict(zip(RESPONSE_COLUMNS, total.row(), strict=True)) | cb_totals
    totals["wait_over_min"] = ctx.req.wait_over_min
    totals["callback_within_min"] = ctx.req.callback_within_min
    return make_report(ctx, "responsiveness", totals, [main, users, callbacks])


async def _callbacks(ctx: Ctx) -> tuple[Table, dict[str, Cell]]:
    within = timedelta(minutes=ctx.req.callback_within_min)
    calls = await period_calls(ctx)
    missed = [c for c in await inbound_calls(ctx, calls) if is_missed(c)]
    # A call back starts after its missed call ended, so the period's calls hold every one
    # but those started after the period's end, read here — and, for a call whose report
    # ended it before it started, those before the period's start.
    sinces = [c.get("ended_at") or c["started_at"] for c in missed]
    proj = {"customer": 1, "started_at": 1, "direction": 1}
    if sinces and max(sinces) + within >= ctx.req.end:
        until = max(sinces) + within + timedelta(milliseconds=1)  # inclusive (BSON: ms)
        later = in_windows(ctx.store["calls"], {}, "started_at", ctx.req.end, until, proj)
        calls += [d async for d in later]
    if sinces and min(sinces) < ctx.req.start:
        early = in_windows(ctx.store["calls"], {}, "started_at", min(sinces), ctx.req.start, proj)
        calls += [d async for d in early]
    outbound: dict[str, list[datetime]] = defaultdict(list)
    for c in calls:
        at, number = c.get("started_at"), c.get("customer")
        if c.get("direction") == "out" and isinstance(at, datetime) and isinstance(number, str):
            outbound[number].append(at)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    total = [0, 0]
    for c in missed:
        since = c.get("ended_at") or c["started_at"]
        back = any(since <= t <= since + within for t in outbound.get(c.get("customer") or "", []))
        key = ctx.key(
            channel=c.get("channel"),
            source=c.get("source_id"),
            responsible=c.get("_responsible"),
            department=c.get("_department"),
        )
        for cell in (counts[(ctx.period(c["started_at"]), key)], total):
            cell[0] += 1
            cell[1] += int(back)
    cols = ["period", *([ctx.req.by.value] if ctx.req.by else [])]
    table = Table(
        name="missed_calls",
        columns=[*cols, "missed_calls", "called_back", "called_back_share"],
        rows=[
            [p, *([k] if ctx.req.by else []), n, b, ratio(b, n)]
            for (p, k), (n, b) in sorted(counts.items())
        ],
    )
    return table, {
        "missed_calls": total[0],
        "called_back": total[1],
        "called_back_share": ratio(total[1], total[0]),
    }
