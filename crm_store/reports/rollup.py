"""Report rollups: what volume, responsiveness and the funnel read instead of every
message, conversation, lead and deal of the period.

Collections written only here:

- ``report_conv_days``: one document per conversation and **local day** (the company's
  time zone): the inbound messages of that day counted per (channel, source), with the
  conversation's department and assignee. Volume's ``inbound_messages`` for any period of
  whole local days, grouped by day/week/month and by any ``by=``, is a sum over them.
- ``report_episodes``: one document per conversation **episode**
  (crm_store/reports/responsiveness.py defines them): start, first reply, who answered,
  closed unanswered, working and calendar seconds of the first response, and the
  conversation's channel, department and assignee. Summed into the day totals; read
  directly by responsiveness only for a period cut inside a day.
- ``report_entities``: one document per conversation, lead and deal: its creation
  instant and the attributes volume and the funnel count it by, look-ups done (the
  channel of its opening message, converted or not, lost reason, completed stage stays).
  Recomputed for every event naming the lead / deal / conversation.
- ``report_days``: per local day, the sums of that day's conversation-days and
  entities, and the episodes that started that day (a row each): volume, the funnel and
  responsiveness read one document per day of the period. Kept by
  marks (``report_day_marks``, see "day totals" below) so it is crash-safe too.
- ``report_idle_days``: per local day, the open deals whose last activity fell on that
  day, counted per (pipeline, source, responsible): overdue's forgotten deals sum the
  days before the 15- and 30-day thresholds (a few hundred small documents) instead of
  reading every idle deal (tens of thousands at full scale). A deal's entity document
  holds its ``idle_at`` (last activity while open); the days it was and is idle in are
  marked in ``report_idle_marks`` and summed from the entities as ``report_days`` are.

**Maintained by recomputation, not increments.** The worker (:class:`RollupWorker`) reads
the event log from its cursor (``report_rollups`` in ``automation_cursors``, one process
at a time by lease, as the automation worker does); every event naming a conversation
marks it dirty, and each dirty conversation's documents are **recomputed from the
collections** (its messages and closings) and written whole (replace by a stable ``_id``
= conversation + day / episode number; documents that no longer exist are deleted). The
result is a pure function of the stored facts, so writing it twice changes nothing: a
crash (kill -9) after writing and before moving the cursor re-reads the page and writes
the same documents again — nothing lost, nothing counted twice, no transaction needed
(the embedded store has none). A rebuild may run while the worker runs, for the same
reason. A conversation's department or assignee changing emits
``conversation.assigned``, which recomputes it: the rollups count by the conversation's
**current** department and assignee, like the request-time path.

The reports use the rollups only when :func:`status` says they are **usable**: ready (a
fresh store, or after ``omniroute reports rebuild``) and either caught up or held by a
live worker; they report how far behind the log the cursor is (``rollup_lag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic as time_now
from typing import Any

import structlog
from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from automation.calendar import WorkingCalendar
from crm_store import cursors, feed
from crm_store import subscriptions as subs
from crm_store.reports.common import CHUNK, READ_BATCH, Ctx, by_field, by_ids
from crm_store.reports.funnel import STAGE_EVENTS, Move, stage_event_entity, stage_move, stays_of
from crm_store.reports.responsiveness import episodes, kind_of
from crm_store.reports.working_time import calendar_seconds, working_seconds
from crm_store.store import Collection, Document, Store

log = structlog.get_logger("omniroute.reports.rollup")

CURSOR = "report_rollups"
STATE_ID = "report_rollups"
CONV_DAYS = "report_conv_days"
EPISODES = "report_episodes"
ENTITIES = "report_entities"
DAYS = "report_days"
DAYS_A_READ = 2  # day documents a query reads (read_days)
MARKS = "report_day_marks"
IDLE_DAYS = "report_idle_days"
IDLE_MARKS = "report_idle_marks"
IDLE_ROW = ("pipeline_id", "source_id", "responsible_id")
# Bump when what the rollups hold changes: the reports ignore rollups of another
# version until `omniroute reports rebuild` has run.
VERSION = 5
# Versions whose lower rollups (conversation-days, episodes, entities, idle days) this
# version keeps unchanged: only the day totals differ (version 5 added the episodes' rows),
# so `omniroute reports rebuild --days` (:func:`resum_days`) is enough to upgrade them.
DAYS_ONLY_FROM = frozenset({4})
ENTITY_PROJ = {
    "created_at": 1,
    "source_id": 1,
    "pipeline_id": 1,
    "stage_id": 1,
    "responsible_id": 1,
    "is_repeat": 1,
    "origin_intake_id": 1,
    "converted_from": 1,
    "fields.lost_reason": 1,
    "open": 1,
    "last_activity_at": 1,
}
# Rollup writes go to the store in commands of this many operations: a command holds the
# embedded server for its whole length, and a webhook's acknowledgement waiting behind a
# thousand-document replace would wait for all of it (measured: single commands of
# 200–550 ms set the PBX acknowledgement's p99).
WRITE_CHUNK = 10
# A rebuild (rare, usually before the service takes traffic) writes in larger commands.
REBUILD_CHUNK = 500
# Test drills only: kill this process with SIGKILL after writing a page's rollups and
# before moving the cursor (tests/test_reports_rollup.py); with the value
# ``before_marks``, after writing the first documents and before marking their days.
CRASH_ENV = "OMNIROUTE_ROLLUP_CRASH_BEFORE_ADVANCE"
BEFORE_MARKS = "before_marks"


def state(store: Store) -> Collection:
    return store["report_rollup_state"]


@dataclass(frozen=True, slots=True)
class Status:
    """``ready``: built (fresh store or rebuilt) at this definition's version;
    ``maintained``: a process holds the cursor's lease now."""

    ready: bool
    maintained: bool
    cursor: int
    head: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.cursor)

    @property
    def usable(self) -> bool:
        """The reports read the rollups: ready, and caught up or being kept up (rollups
        nobody maintains, e.g. the worker switched off everywhere, are not read once
        they fall behind)."""
        return self.ready and (self.lag == 0 or self.maintained)


async def status(store: Store) -> Status:
    doc = await state(store).find_one({"_id": STATE_ID})
    cur = await cursors.cursors(store).find_one({"_id": CURSOR}, {"seq": 1, "lease_until": 1})
    ready = bool(doc and doc.get("ready") and doc.get("version") == VERSION and cur)
    until = cur.get("lease_until") if cur else None
    if isinstance(until, datetime) and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    maintained = isinstance(until, datetime) and until > datetime.now(UTC)
    head = await subs.current_seq(store)
    return Status(ready, maintained, int(cur["seq"]) if cur else 0, head)


async def set_ready(store: Store, ready: bool) -> None:
    await state(store).update_one(
        {"_id": STATE_ID},
        {"$set": {"ready": ready, "version": VERSION, "changed_at": datetime.now(UTC)}},
        upsert=True,
    )


# --- recomputation ----------------------------------------------------------------------


def _conv_docs(
    cal: WorkingCalendar, conv: Document, msgs: list[Document], closes: list[Document]
) -> tuple[list[Document], list[Document]]:
    """The conversation's day documents and episode documents (pure)."""
    cid = conv["_id"]
    common = {
        "conversation_id": cid,
        "department": conv.get("department"),
        "assignee_id": conv.get("assignee_id"),
    }
    counts: dict[str, dict[tuple[str | None, str | None], int]] = defaultdict(
        lambda: defaultdict(int)
    )
    timeline: list[tuple[datetime, str, Document]] = []
    for m in msgs:
        at = m.get("received_at")
        if not isinstance(at, datetime):
            continue
        if m.get("direction") == "in":
            day = cal.local(at).date().isoformat()
            counts[day][(m.get("channel"), m.get("source_id"))] += 1
        kind = kind_of(m)
        if kind is not None:
            timeline.append((at, kind, m))
    for ev in closes:
        if isinstance(ev.get("occurred_at"), datetime):
            timeline.append((ev["occurred_at"], "close", ev))
    days = [
        {
            "_id": f"{cid}|{day}",
            "day": day,
            **common,
            "inbound": sum(per.values()),
            "counts": [
                {"channel": ch, "source": src, "n": n}
                for (ch, src), n in sorted(per.items(), key=lambda x: (str(x[0][0]), str(x[0][1])))
            ],
        }
        for day, per in sorted(counts.items())
    ]
    eps = []
    for n, e in enumerate(episodes(cid, timeline), 1):
        doc: Document = {
            "_id": f"{cid}|{n}",
            "n": n,
            "start": e.start,
            "source_id": e.source_id,
            "channel": conv.get("channel"),
            **common,
            "answered_at": e.answered_at,
            "answered_by": e.answered_by,
            "closed": e.closed,
        }
        if e.answered_at is not None:
            doc["work_s"] = working_seconds(cal, e.start, e.answered_at)
            doc["calendar_s"] = calendar_seconds(e.start, e.answered_at)
        eps.append(doc)
    return days, eps


def _norm(v: Any) -> Any:
    """A value as the store gives it back (UTC, milliseconds; lists for tuples)."""
    if isinstance(v, datetime):
        v = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        return v.replace(microsecond=v.microsecond // 1000 * 1000)
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    return v


def _same(stored: Document | None, doc: Document) -> bool:
    return stored is not None and _norm(stored) == _norm(doc)


# Called before a write with (the old versions of what changes, the new versions written).
Before = Callable[[list[Document], list[Document]], Awaitable[None]]


def _old_versions(
    old: dict[str, Document], written: list[Document], gone: list[str]
) -> list[Document]:
    """The stored versions of the documents about to be rewritten or deleted."""
    return [old[d["_id"]] for d in written if d["_id"] in old] + [old[i] for i in gone]


async def _replace_changed(
    coll: Collection,
    old: dict[str, Document],
    docs: list[Document],
    write_chunk: int,
    before: Before | None = None,
) -> tuple[list[Document], list[str]]:
    """Make ``coll`` hold ``docs`` where it held ``old`` (by ``_id``): write the documents
    that differ, delete the old ones not in ``docs``. Returns (written, deleted ids).
    ``before`` is given, before any write, the old versions of what is about to change
    and the new versions about to be written."""
    keep = {d["_id"] for d in docs}
    written = [d for d in docs if not _same(old.get(d["_id"]), d)]
    gone = [i for i in old if i not in keep]
    if before is not None:
        await before(_old_versions(old, written, gone), written)
    ops: list[Any] = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in written]
    ops += [DeleteOne({"_id": i}) for i in gone]
    await _bulk(coll, ops, write_chunk)
    return written, gone


async def _write(
    coll: Collection, cids: Sequence[str], docs: list[Document], write_chunk: int
) -> tuple[list[Document], list[Document]]:
    """Make the conversations' documents in ``coll`` equal ``docs``: write those that
    differ, delete the rest. Returns (the documents there before, the old and new
    versions of those written or deleted)."""
    old = {d["_id"]: d for d in await by_field(coll, "conversation_id", list(cids), None, {})}
    written, gone = await _replace_changed(coll, old, docs, write_chunk)
    return list(old.values()), _old_versions(old, written, gone) + written


async def _bulk(coll: Collection, ops: list[Any], chunk: int = WRITE_CHUNK) -> None:
    """``ops`` in commands of ``chunk`` (idempotent, so order does not matter)."""
    for i in range(0, len(ops), chunk):
        await coll.bulk_write(ops[i : i + chunk], ordered=False)


async def recompute(
    store: Store,
    cal: WorkingCalendar,
    conversation_ids: Iterable[str | None],
    days: set[str] | None = None,
    *,
    full: bool = True,
    write_chunk: int = WRITE_CHUNK,
) -> int:
    """Recompute the rollups of these conversations from the collections; returns how
    many conversations were recomputed. Idempotent: only documents that differ are
    written. The days touched are marked for their totals, or added to ``days`` for the
    caller to mark (a rebuild, once at the end) — with ``full``, every day the documents
    are or were in; without, only the days of documents that changed (see
    :class:`RollupWorker` for when that is safe)."""
    ids = list(dict.fromkeys(c for c in conversation_ids if isinstance(c, str)))
    proj_c = {"channel": 1, "department": 1, "assignee_id": 1, "created_at": 1}
    proj_c |= {"origin_intake_id": 1}
    proj_m = {"conversation_id": 1, "direction": 1, "automatic": 1, "author_id": 1}
    proj_m |= {"received_at": 1, "source_id": 1, "channel": 1}
    done = 0
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        convs = await by_ids(store.conversations, chunk, proj_c)
        found = [c["_id"] for c in convs]
        msgs: dict[str, list[Document]] = defaultdict(list)
        for m in await by_field(store.messages, "conversation_id", found, proj_m, {}):
            msgs[m["conversation_id"]].append(m)
        closes: dict[str, list[Document]] = defaultdict(list)
        closing = {"type": "conversation.closed"}
        proj_e = {"refs.conversation_id": 1, "occurred_at": 1}
        for ev in await by_field(store.events, "refs.conversation_id", found, proj_e, closing):
            closes[ev["refs"]["conversation_id"]].append(ev)
        all_days: list[Document] = []
        all_eps: list[Document] = []
        for conv in convs:
            conv_days, eps = _conv_docs(cal, conv, msgs[conv["_id"]], closes[conv["_id"]])
            all_days += conv_days
            all_eps += eps
        intakes = [c["origin_intake_id"] for c in convs if c.get("origin_intake_id")]
        sources = {
            m["_id"]: m.get("source_id")
            for m in await by_ids(store.messages, intakes, {"source_id": 1})
        }
        entities = [
            _entity("conversation", c, source_id=sources.get(c.get("origin_intake_id") or ""))
            for c in convs
        ]
        # A conversation that is gone keeps no rollups either.
        old_days, changed_days = await _write(store[CONV_DAYS], chunk, all_days, write_chunk)
        # An episode's start can move to another day (a message that arrives late, a
        # closing); the day it leaves still holds the message it started with (messages
        # are never deleted nor moved), so a full recomputation after a crash between
        # the write and the marks marks that day by its conversation-day.
        old_eps, changed_eps = await _write(store[EPISODES], chunk, all_eps, write_chunk)
        old, changed = await _write_entities(store, "conversation", chunk, entities, write_chunk)
        # The days these documents were or are in: their day totals are recomputed.
        if full:
            touched = {d["day"] for d in [*old_days, *all_days]}
            touched |= _created_days(cal, [*old_eps, *all_eps], "start")
            touched |= _created_days(cal, [*old, *entities])
        else:
            touched = {d["day"] for d in changed_days}
            touched |= _created_days(cal, changed_eps, "start")
            touched |= _created_days(cal, changed)
        await _touch(store, touched, days, write_chunk)
        done += len(convs)
        await asyncio.sleep(0)
    return done


def _entity(kind: str, doc: Document, **attrs: Any) -> Document | None:
    """The ``report_entities`` document of a conversation, lead or deal (pure); None
    for one without a creation instant (no report counts it)."""
    if not isinstance(doc.get("created_at"), datetime):
        return None
    out: Document = {"_id": f"{kind}|{doc['_id']}", "kind": kind, "created_at": doc["created_at"]}
    if kind == "conversation":
        out |= {k: doc.get(k) for k in ("channel", "department", "assignee_id")}
    else:
        names = ("source_id", "pipeline_id", "stage_id", "responsible_id")
        out |= {k: doc.get(k) for k in names}
        out["lost_reason"] = (doc.get("fields") or {}).get("lost_reason")
        idle = doc.get("last_activity_at")
        if kind == "deal" and doc.get("open") is True and isinstance(idle, datetime):
            out["idle_at"] = idle  # absent when closed: not a forgotten deal
    return out | attrs


async def _write_entities(
    store: Store,
    kind: str,
    ids: Sequence[str],
    docs: Iterable[Document | None],
    write_chunk: int,
    before: Before | None = None,
) -> tuple[list[Document], list[Document]]:
    """Make the entities' documents equal ``docs`` (those that differ are written); delete
    those of entities that are gone. Returns (the documents there before, the old and
    new versions of those written or deleted, except where only ``idle_at`` changed: a
    deal's activity moves no day total)."""
    keep = [d for d in docs if d is not None]
    old = {d["_id"]: d for d in await by_ids(store[ENTITIES], [f"{kind}|{i}" for i in ids], None)}
    new, gone = await _replace_changed(store[ENTITIES], old, keep, write_chunk, before)
    new = [d for d in new if not _same_but_idle(old.get(d["_id"]), d)]
    return list(old.values()), _old_versions(old, new, gone) + new


def _same_but_idle(stored: Document | None, doc: Document) -> bool:
    if stored is None:
        return False
    return _same({**stored, "idle_at": None}, {**doc, "idle_at": None})


async def _touch(
    store: Store,
    touched: set[str],
    days: set[str] | None,
    write_chunk: int,
    marks: str = MARKS,
) -> None:
    if os.environ.get(CRASH_ENV) == BEFORE_MARKS:
        os.kill(os.getpid(), signal.SIGKILL)
    if days is None:
        await mark_days(store, touched, write_chunk, marks)
    else:
        days |= touched


def _created_days(
    cal: WorkingCalendar, docs: Iterable[Document | None], key: str = "created_at"
) -> set[str]:
    return {
        cal.local(d[key]).date().isoformat()
        for d in docs
        if d is not None and isinstance(d.get(key), datetime)
    }


async def _stage_moves(store: Store, ref: str, ids: Sequence[str]) -> dict[str, list[Move]]:
    """Every stage move of these leads (``ref`` = ``refs.lead_id``) or deals, by entity,
    with the same attribution as the request-time path."""
    proj = {"type": 1, "refs": 1, "occurred_at": 1, "data.from": 1, "data.to": 1}
    stage = {"type": {"$in": STAGE_EVENTS}}
    wanted = set(ids)
    moves: dict[str, list[Move]] = defaultdict(list)
    for ev in await by_field(store.events, ref, list(ids), proj, stage):
        eid = stage_event_entity(ev)
        if eid is not None and eid in wanted:
            moves[eid].append(stage_move(ev))
    return moves


async def recompute_entities(
    store: Store,
    cal: WorkingCalendar,
    lead_ids: Iterable[str | None],
    deal_ids: Iterable[str | None],
    days: set[str] | None = None,
    *,
    full: bool = True,
    write_chunk: int = WRITE_CHUNK,
    idle_days: set[str] | None = None,
) -> int:
    """Recompute the ``report_entities`` documents of these leads and deals (and of the
    leads the deals were converted from: their ``converted``) from the collections;
    returns how many were recomputed. Idempotent; ``full`` as in :func:`recompute`. The
    days a deal was or is idle in are marked in ``report_idle_marks`` (or added to
    ``idle_days`` when ``days`` is given: a rebuild marks them once)."""
    deals = list(dict.fromkeys(d for d in deal_ids if isinstance(d, str)))
    leads = list(dict.fromkeys(d for d in lead_ids if isinstance(d, str)))
    written = 0
    for i in range(0, len(deals), CHUNK):
        chunk = deals[i : i + CHUNK]
        docs = await by_ids(store.deals, chunk, ENTITY_PROJ)
        parents = {
            d["_id"]: d.get("origin_intake_id")
            for d in await by_ids(
                store.leads,
                [d["converted_from"] for d in docs if d.get("converted_from")],
                {"origin_intake_id": 1},
            )
        }
        intake = {
            d["_id"]: d.get("origin_intake_id") or parents.get(d.get("converted_from") or "")
            for d in docs
        }
        channels = await _channels(store, [v for v in intake.values() if v])
        moves = await _stage_moves(store, "refs.deal_id", [d["_id"] for d in docs])
        entities = [
            _entity(
                "deal",
                d,
                channel=channels.get(intake[d["_id"]] or ""),
                converted_from=d.get("converted_from"),
                stays=_stays(d, moves),
            )
            for d in docs
        ]
        moved: list[Document] = []  # the old and new versions of the deals written

        async def mark_leaving(
            olds: list[Document], news: list[Document], moved: list[Document] = moved
        ) -> None:
            # The days these deals are idle in now are marked before they move: a crash
            # after the write would leave a full recomputation nothing to find them by.
            moved += [*olds, *news]
            if days is None:
                await mark_days(store, _created_days(cal, olds, "idle_at"), write_chunk, IDLE_MARKS)

        old, changed = await _write_entities(
            store, "deal", chunk, entities, write_chunk, mark_leaving
        )
        touched = _created_days(cal, [*old, *entities] if full else changed)
        await _touch(store, touched, days, write_chunk)
        idle = _created_days(cal, [*old, *entities] if full else moved, "idle_at")
        await _touch(store, idle, None if days is None else idle_days, write_chunk, IDLE_MARKS)
        # A deal's lead changes with it (converted or not), also when the deal is gone.
        leads += [
            str(d["converted_from"])
            for d in [*docs, *old]
            if isinstance(d.get("converted_from"), str)
        ]
        written += len(docs)
    leads = list(dict.fromkeys(leads))
    for i in range(0, len(leads), CHUNK):
        chunk = leads[i : i + CHUNK]
        docs = await by_ids(store.leads, chunk, ENTITY_PROJ)
        found = [d["_id"] for d in docs]
        converted = {
            d["converted_from"]
            for d in await by_field(store.deals, "converted_from", found, {"converted_from": 1}, {})
        }
        channels = await _channels(
            store, [d["origin_intake_id"] for d in docs if d.get("origin_intake_id")]
        )
        moves = await _stage_moves(store, "refs.lead_id", found)
        entities = [
            _entity(
                "lead",
                d,
                channel=channels.get(d.get("origin_intake_id") or ""),
                is_repeat=bool(d.get("is_repeat")),
                converted=d["_id"] in converted,
                stays=_stays(d, moves),
            )
            for d in docs
        ]
        old, changed = await _write_entities(store, "lead", chunk, entities, write_chunk)
        touched = _created_days(cal, [*old, *entities] if full else changed)
        await _touch(store, touched, days, write_chunk)
        written += len(docs)
        await asyncio.sleep(0)
    return written


# --- day totals ---------------------------------------------------------------------------
#
# ``report_days``: one document per local day, summing that day's conversation-day and
# entity documents, so a 30-day volume or funnel reads 30 documents. A pure function of
# those documents; which days need it again is kept in ``report_day_marks`` (one per
# day: ``gen`` counts the marks, ``dirty`` until a computation at that ``gen`` is
# stored). Whoever changes a lower document marks its day **after** writing it; the day
# is then computed from what was written by the time its mark was read, and stored only
# over a computation of an older ``gen`` — so concurrent writers never leave an older
# sum on top of a newer one, and a crash between the mark and the sum leaves the day
# dirty for the next pass (:func:`refresh_days`).

# A day document's rows are arrays (values in these orders, then the count ``n``; a
# stay row ends with its list of seconds): keyed sub-documents would repeat every key
# name in every row, and the embedded store's reads cost by the byte too.
CONV_ROW = ("channel", "source_id", "department", "assignee_id")  # inbound, conversations
VOLUME_LEAD_ROW = ("channel", "source_id", "pipeline_id", "responsible_id", "is_repeat")
FUNNEL_ROW = (
    "channel",
    "source_id",
    "pipeline_id",
    "stage_id",
    "responsible_id",
    "lost_reason",
    "converted",
)
STAY_ROW = ("kind", "pipeline_id", "responsible_id", "stage")
# An episode (report_episodes) that started on the day: what responsiveness counts.
EPISODE_ROW = (
    "start",
    "channel",
    "source_id",
    "department",
    "assignee_id",
    "answered_at",
    "answered_by",
    "closed",
    "work_s",
    "calendar_s",
)


def unpack(names: Sequence[str], row: Sequence[Any], last: str = "n") -> Document:
    """A day document's row as a dict of ``names`` and ``last`` (the count)."""
    return {**dict(zip(names, row, strict=False)), last: row[len(names)]}


def noon(cal: WorkingCalendar, day: str) -> datetime:
    """An instant inside local ``day`` (what buckets a day's totals)."""
    return datetime.combine(date.fromisoformat(day), time(12), cal.tz)


async def days_range(ctx: Ctx) -> tuple[str, str] | None:
    """The local days [first, end) of the period when the rollups answer it: usable,
    and the period is whole local days (what ``report_days`` covers); sets
    ``ctx.rollup_lag``. None otherwise."""
    lo, hi = ctx.cal.local(ctx.req.start), ctx.cal.local(ctx.req.end)
    if lo.time() != time(0) or hi.time() != time(0):
        return None
    st = await status(ctx.store)
    if not st.usable:
        return None
    ctx.rollup_lag = st.lag
    return lo.date().isoformat(), hi.date().isoformat()


async def read_days(store: Store, days: tuple[str, str], proj: Document) -> AsyncIterator[Document]:
    """The day totals of the local days [first, end), ``DAYS_A_READ`` days a query: a day's
    document holds its rows of every dimension (~15–20 ms of the embedded server's time
    each at full scale), and a month in one find held webhook writes for half a second."""
    first, end = date.fromisoformat(days[0]), date.fromisoformat(days[1])
    names = [(first + timedelta(days=i)).isoformat() for i in range((end - first).days)]
    for i in range(0, len(names), DAYS_A_READ):
        # By id (`$in`): the embedded server answers a range of `_id` strings by a scan.
        window = {"_id": {"$in": names[i : i + DAYS_A_READ]}}
        for doc in await store[DAYS].find(window, proj).to_list():
            yield doc


async def mark_days(
    store: Store, days: Iterable[str], write_chunk: int = WRITE_CHUNK, marks: str = MARKS
) -> None:
    """Mark these local days due for their totals (``report_day_marks``, or ``marks``:
    ``report_idle_marks`` for the idle deals' days)."""
    ops: list[Any] = [
        UpdateOne({"_id": d}, {"$inc": {"gen": 1}, "$set": {"dirty": True}}, upsert=True)
        for d in sorted(set(days))
    ]
    await _bulk(store[marks], ops, write_chunk)


def _rows(counts: dict[tuple[Any, ...], Any]) -> list[list[Any]]:
    return [[*key, n] for key, n in sorted(counts.items(), key=lambda kv: [str(v) for v in kv[0]])]


def day_bounds(cal: WorkingCalendar, day: str) -> tuple[datetime, datetime]:
    """Local ``day`` as the instants [its midnight, the next midnight)."""
    first = date.fromisoformat(day)
    return (
        datetime.combine(first, time(0), cal.tz),
        datetime.combine(first + timedelta(days=1), time(0), cal.tz),
    )


async def day_doc(store: Store, cal: WorkingCalendar, day: str) -> Document:
    """The totals of one local day from the lower rollups (pure given them)."""
    lo, hi = day_bounds(cal, day)
    inbound: dict[tuple[Any, ...], int] = defaultdict(int)
    proj = {"_id": 0, "department": 1, "assignee_id": 1, "counts": 1}
    async for d in store[CONV_DAYS].find({"day": day}, proj, batch_size=READ_BATCH):
        for c in d.get("counts") or []:
            key = (c.get("channel"), c.get("source"), d.get("department"), d.get("assignee_id"))
            inbound[key] += int(c.get("n") or 0)
    convs: dict[tuple[Any, ...], int] = defaultdict(int)
    vleads: dict[tuple[Any, ...], int] = defaultdict(int)
    leads: dict[tuple[Any, ...], int] = defaultdict(int)
    deals: dict[tuple[Any, ...], int] = defaultdict(int)
    stays: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for kind in ("conversation", "lead", "deal"):
        query = {"kind": kind, "created_at": {"$gte": lo, "$lt": hi}}
        async for d in store[ENTITIES].find(query, {"_id": 0}, batch_size=READ_BATCH):
            if kind == "conversation":
                convs[tuple(d.get(k) for k in CONV_ROW)] += 1
                continue
            d["is_repeat"] = bool(d.get("is_repeat"))
            d["converted"] = bool(d.get("converted"))
            row = tuple(d.get(k) for k in FUNNEL_ROW)
            if kind == "lead":
                leads[row] += 1
                vleads[tuple(d.get(k) for k in VOLUME_LEAD_ROW)] += 1
            else:
                deals[row] += 1
            for stage, seconds in d.get("stays") or []:
                key = (kind, d.get("pipeline_id"), d.get("responsible_id"), stage)
                stays[key].append(float(seconds))
    eps: dict[tuple[Any, ...], int] = defaultdict(int)
    query = {"start": {"$gte": lo, "$lt": hi}}
    proj = {"_id": 0, **dict.fromkeys(EPISODE_ROW, 1)}
    async for d in store[EPISODES].find(query, proj, batch_size=READ_BATCH):
        d["closed"] = bool(d.get("closed"))
        eps[tuple(d.get(k) for k in EPISODE_ROW)] += 1
    return {
        "_id": day,
        "inbound": _rows(inbound),
        "conversations": _rows(convs),
        "volume_leads": _rows(vleads),
        "leads": _rows(leads),
        "deals": _rows(deals),
        "stays": _rows({k: sorted(v) for k, v in stays.items()}),
        "episodes": _rows(eps),
    }


async def idle_doc(store: Store, cal: WorkingCalendar, day: str) -> Document:
    """The open deals last active on local ``day``, counted per ``IDLE_ROW`` (from the
    deals' entity documents)."""
    lo, hi = day_bounds(cal, day)
    counts: dict[tuple[Any, ...], int] = defaultdict(int)
    query = {"kind": "deal", "idle_at": {"$gte": lo, "$lt": hi}}
    proj = {"_id": 0, **dict.fromkeys(IDLE_ROW, 1)}
    async for d in store[ENTITIES].find(query, proj, batch_size=READ_BATCH):
        counts[tuple(d.get(k) for k in IDLE_ROW)] += 1
    return {"_id": day, "start": lo, "rows": _rows(counts)}


async def refresh_days(store: Store, cal: WorkingCalendar, share: float = 1.0) -> int:
    """Recompute every dirty day's totals and idle deals; returns how many. With ``share``
    below 1, a day summed in d seconds is not summed again for d × (1/share − 1) (its
    mark's ``next_at``; it stays dirty until then): a busy day's sum reads every
    conversation-day of it, and a worker summing it after every page would keep the
    server busy with it (Settings.report_rollups_day_share)."""
    done = 0
    for marks, target, compute in ((MARKS, DAYS, day_doc), (IDLE_MARKS, IDLE_DAYS, idle_doc)):
        now = datetime.now(UTC)
        due = [
            m
            for m in await store[marks].find({"dirty": True}, {"gen": 1, "next_at": 1}).to_list()
            if share >= 1 or not isinstance(m.get("next_at"), datetime) or m["next_at"] <= now
        ]
        for m in due:
            day, gen = m["_id"], int(m["gen"])
            t0 = time_now()
            doc = await compute(store, cal, day) | {"gen": gen}
            with contextlib.suppress(DuplicateKeyError):  # a newer computation is stored
                await store[target].replace_one({"_id": day, "gen": {"$lt": gen}}, doc, upsert=True)
            await store[marks].update_one({"_id": day, "gen": gen}, {"$set": {"dirty": False}})
            if share < 1:
                wait = (time_now() - t0) * (1 / share - 1)
                nxt = datetime.now(UTC) + timedelta(seconds=wait)
                await store[marks].update_one({"_id": day}, {"$set": {"next_at": nxt}})
            await asyncio.sleep(0)
        done += len(due)
    return done


async def _channels(store: Store, intake_ids: Sequence[str]) -> dict[str, str | None]:
    return {
        m["_id"]: m.get("channel") for m in await by_ids(store.messages, intake_ids, {"channel": 1})
    }


def _stays(doc: Document, moves: dict[str, list[Move]]) -> list[list[Any]]:
    if not isinstance(doc.get("created_at"), datetime):
        return []
    return [[stage, s] for stage, s in stays_of(doc["created_at"], moves.get(doc["_id"], []))]


async def rebuild(
    store: Store, cal: WorkingCalendar, *, since: datetime | None = None, batch: int = 500
) -> int:
    """Recompute every conversation with a message at or after ``since`` (all of them
    without), then mark the rollups ready. Safe while the worker runs (recomputation is
    idempotent). The cursor is first moved to the current end of the log: events after
    it are the worker's, everything before is covered here. Returns the conversations
    recomputed. ``since`` is refused (ValueError) unless the rollups were built at this
    ``VERSION``: what an older version did not hold must be computed for everything."""
    if since is not None:
        built = await state(store).find_one({"_id": STATE_ID}, {"version": 1})
        if not built or built.get("version") != VERSION:
            raise ValueError(
                f"the report rollups were not built at version {VERSION} "
                f"(found {built.get('version') if built else 'none'}): rebuild without --since"
            )
    head = await subs.current_seq(store)
    await cursors.ensure(store, CURSOR, head)
    await cursors.cursors(store).update_one(
        {"_id": CURSOR, "seq": {"$lt": head}}, {"$set": {"seq": head}}
    )
    if since is None:
        ids = [c["_id"] async for c in store.conversations.find({}, {"_id": 1}, batch_size=5000)]
    else:
        ids = await _conversations_since(store, since)
    total = 0
    days: set[str] = set()  # marked once at the end, not per batch
    idle_days: set[str] = set()
    for i in range(0, len(ids), batch):
        total += await recompute(store, cal, ids[i : i + batch], days, write_chunk=REBUILD_CHUNK)
    # Leads and deals (funnel, volume's leads): those created since ``since`` (all
    # without); one only moved or converted meanwhile needs the full rebuild.
    created = {} if since is None else {"created_at": {"$gte": since}}
    for coll, kind in ((store.leads, "lead"), (store.deals, "deal")):
        eids = [d["_id"] async for d in coll.find(created, {"_id": 1}, batch_size=5000)]
        for i in range(0, len(eids), batch):
            part = eids[i : i + batch]
            await recompute_entities(
                store,
                cal,
                part if kind == "lead" else [],
                part if kind == "deal" else [],
                days,
                write_chunk=REBUILD_CHUNK,
                idle_days=idle_days,
            )
    if since is None:  # every day summed again, also one whose documents are all gone
        days |= await _marked_days(store)
        idle_days |= await _marked_days(store, IDLE_MARKS)
    await mark_days(store, days, REBUILD_CHUNK)
    await mark_days(store, idle_days, REBUILD_CHUNK, IDLE_MARKS)
    await refresh_days(store, cal)
    await set_ready(store, True)
    log.info("reports.rollup_rebuilt", conversations=total, since=str(since) if since else None)
    return total


async def _marked_days(store: Store, marks: str = MARKS) -> set[str]:
    """Every day that has ever been marked (``marks``): every day with totals."""
    return {d["_id"] async for d in store[marks].find({}, {"_id": 1})}


async def resum_days(store: Store, cal: WorkingCalendar) -> int:
    """Sum every day's totals again from the lower rollups and mark the rollups ready at
    this ``VERSION`` — the upgrade from a version in ``DAYS_ONLY_FROM`` (minutes, where a
    rebuild recomputes every conversation). Refused (ValueError) unless the rollups were
    ready at such a version or at this one. Safe while the worker runs (day marks, as
    the worker's own). Returns the days summed."""
    built = await state(store).find_one({"_id": STATE_ID}, {"version": 1, "ready": 1})
    version = built.get("version") if built else None
    if not (built and built.get("ready") and version in DAYS_ONLY_FROM | {VERSION}):
        raise ValueError(
            f"the report rollups were not ready at version {VERSION} or one that only the "
            f"day totals separate from it (found {version or 'none'}): rebuild without --days"
        )
    days = await _marked_days(store)
    await mark_days(store, days, REBUILD_CHUNK)
    await refresh_days(store, cal)
    await set_ready(store, True)
    log.info("reports.rollup_days_resummed", days=len(days), from_version=version)
    return len(days)


async def _conversations_since(store: Store, since: datetime) -> list[str]:
    ids = await (
        await store.messages.aggregate(
            [
                {"$match": {"direction": "in", "received_at": {"$gte": since}}},
                {"$group": {"_id": "$conversation_id"}},
            ]
        )
    ).to_list()
    return [g["_id"] for g in ids if isinstance(g["_id"], str)]


# --- the worker -------------------------------------------------------------------------


class RollupWorker:
    """Follows the event log and recomputes the conversations its events name.

    A page's recomputation writes only documents that changed and marks only their days
    (most events change nothing a report counts: a delivery receipt, a reply's second
    event) — but only while it is sure the page before was finished: a page that failed
    half way, or one another holder may have left half done (the cursor's lease was
    taken, not renewed: its ``taken_at`` changed, or this worker just started), may have
    written documents without marking their days, and is recomputed ``full``."""

    def __init__(
        self,
        store: Store,
        cal: WorkingCalendar,
        *,
        owner: str,
        poll_s: float = 1.0,
        pace_s: float = 0.0,
        lease_s: float = 30.0,
        event_batch: int = 2000,
        gap_grace_s: float = feed.GAP_GRACE_S,
        day_share: float = 1.0,
    ) -> None:
        self.store = store
        self.cal = cal
        self.owner = owner
        self.poll_s = poll_s
        self.pace_s = pace_s
        self.lease_s = lease_s
        self.event_batch = event_batch
        self.gap_grace_s = gap_grace_s
        self.day_share = day_share
        self._task: asyncio.Task[None] | None = None
        self._full = True  # the next page marks every day it recomputes
        self._taken: Any = None  # the cursor's taken_at when this worker last held it

    async def prepare(self) -> None:
        """Create the cursor at the end of the log. On an empty log the rollups are
        complete from the start (ready); on a store with history they are ready only
        after ``omniroute reports rebuild``."""
        if await cursors.cursors(self.store).find_one({"_id": CURSOR}) is not None:
            return
        head = await subs.current_seq(self.store)
        await cursors.ensure(self.store, CURSOR, head)
        has_messages = await self.store.messages.find_one({}, {"_id": 1}) is not None
        if head == 0 and not has_messages:
            await set_ready(self.store, True)

    async def start(self) -> None:
        await self.prepare()
        self._task = asyncio.create_task(self._loop(), name="report-rollups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(PyMongoError):
            await cursors.release(self.store, CURSOR, self.owner)

    async def _loop(self) -> None:
        while True:
            try:
                worked = await self.run_events()
            except PyMongoError as exc:
                log.warning("reports.rollup_store_unavailable", error=type(exc).__name__)
                worked, self._full = 0, True
            except Exception as exc:  # keep the loop alive; the cause is logged
                log.exception("reports.rollup_failed", error=repr(exc))
                worked, self._full = 0, True
            if not worked:
                await asyncio.sleep(self.poll_s)
            elif self.pace_s:
                # Let a burst's events gather: one recomputation per conversation and
                # lead per page, not one per handful of events (Settings.report_rollups_pace_s).
                await asyncio.sleep(self.pace_s)

    async def drain(self, rounds: int = 10_000) -> int:
        """Apply every event up to the end of the log (tests, benchmarks)."""
        total = 0
        for _ in range(rounds):
            n = await self.run_events()
            total += n
            if n == 0:
                return total
        raise RuntimeError(f"report rollups did not settle in {rounds} rounds")

    async def run_events(self) -> int:
        """Recompute the conversations named by the next page of events, then move the
        cursor; returns how many events were read (0: nothing new, or not our cursor)."""
        held = await cursors.hold(self.store, CURSOR, self.owner, self.lease_s)
        if held is None:
            return 0
        position = int(held["seq"])
        full = self._full or held.get("taken_at") != self._taken
        self._taken = held.get("taken_at")
        page = await feed.read(
            self.store, position, limit=self.event_batch, gap_grace_s=self.gap_grace_s
        )
        if page.next_after == position:
            # Days a killed rebuild marked and did not sum are summed even without new
            # events (a killed worker's page is read again: it sums its own).
            await refresh_days(self.store, self.cal, self.day_share)
            return 0
        dirty = [
            (ev.get("refs") or {}).get("conversation_id")
            for ev in page.events
            if (ev.get("refs") or {}).get("conversation_id")
        ]
        self._full = True  # until this page is finished
        keep = asyncio.create_task(self._keep_lease(), name="report-rollups-lease")
        try:
            await recompute(self.store, self.cal, dirty, full=full)
            refs = [ev.get("refs") or {} for ev in page.events]
            leads, deals = [r.get("lead_id") for r in refs], [r.get("deal_id") for r in refs]
            await recompute_entities(self.store, self.cal, leads, deals, full=full)
            # The drill kills the process with the lower rollups written and their days
            # marked but not yet summed: the next holder must finish them.
            if os.environ.get(CRASH_ENV):
                os.kill(os.getpid(), signal.SIGKILL)
            await refresh_days(self.store, self.cal, self.day_share)
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep
        await cursors.advance(self.store, CURSOR, self.owner, page.next_after)
        self._full = False
        return max(1, len(page.events))

    async def _keep_lease(self) -> None:
        """Renew the cursor's lease while a page is worked on: a page longer than the lease
        (a burst on a busy store) would otherwise leave the rollups looking unmaintained,
        and the reports would fall back to reading the collections — the heavier reads,
        on the busy store. (Only renewed: a lease found lapsed is taken again, which the
        next page sees as taken and recomputes in full.)"""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(PyMongoError):
                await cursors.hold(self.store, CURSOR, self.owner, self.lease_s)
