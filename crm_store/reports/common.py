"""What every report shares: the request (period, grouping, dimension, scope), the
answer's shape (tables), bucketing by the company's calendar, percentiles, and the
look-ups that attach a department to a fact.

A report is computed from the collections with range queries on indexed time fields and
in-store ``$group`` where the counting is heavy (messages), then finished here in Python
(docs/reports.md says why, with the measurements).

Every fact a report counts carries a **department** (of its conversation, or of its
responsible user); a caller sees the facts of the departments they see
(inbox/access.py ``report_departments``); a fact of no department is seen by an admin only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from automation.calendar import WorkingCalendar
from config.models import AppConfig
from crm_store.store import Collection, Document, Store

# $in lists stay short: the embedded store re-checks each hit against the whole list, so
# a query naming k values costs about hits × k (docs/store.md); at full scale 25 ids a
# query read a report's conversations in 284 ms against 407 with 100 (docs/reports.md).
CHUNK = 25
# Report reads come in small batches: the embedded server answers one operation at a
# time, so a batch of thousands of documents would hold webhook acknowledgements behind
# it (docs/reports.md, the benchmark).
READ_BATCH = 200
FIELD_CHUNK = 25  # a non-_id field: several hits per value
# A report reads a time range in windows of about this many documents: the embedded server
# computes a find's whole answer in its first command and holds its storage lock meanwhile
# (~0.1 ms a document), so one find of a month's facts held webhook acknowledgements for
# up to a second; windows bound each hold to ~10 ms (docs/reports.md, "Reading").
WINDOW_DOCS = 100
FIRST_WINDOW = timedelta(minutes=10)
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)  # where a walk with no lower bound stops
NONE_KEY = "—"  # the dimension value of a fact that has none (no source, no responsible)

Cell = str | int | float | None


class Group(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class By(StrEnum):
    CHANNEL = "channel"
    SOURCE = "source"
    PIPELINE = "pipeline"
    RESPONSIBLE = "responsible"
    DEPARTMENT = "department"


class Table(BaseModel):
    """One table of a report: column names, then rows of cells."""

    name: str
    columns: list[str]
    rows: list[list[Cell]]


class Report(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, populate_by_name=True)

    report: str
    from_: datetime = Field(alias="from")
    to: datetime
    group: Group
    by: By | None
    timezone: str
    generated_at: datetime
    totals: dict[str, Cell] = Field(description="the whole period, every visible fact")
    tables: list[Table]
    rollup_lag: int | None = Field(
        default=None,
        description="read from the rollups: events the rollup worker had still to apply "
        "(None: computed from the collections)",
    )


@dataclass(frozen=True, slots=True)
class Request:
    """What to compute: facts at ``start <= t < end``, bucketed by ``group`` in the
    calendar's time zone, keyed by ``by``; ``departments`` None = every department."""

    start: datetime
    end: datetime
    group: Group
    by: By | None
    departments: frozenset[str] | None
    now: datetime
    wait_over_min: int = 60
    callback_within_min: int = 30


@dataclass(slots=True)
class Ctx:
    store: Store
    config: AppConfig
    cal: WorkingCalendar
    req: Request
    _convs: dict[str, Document] = field(default_factory=dict)
    rollup_lag: int | None = None  # set when a figure was read from the rollups

    # --- scope and dimensions ----------------------------------------------------------

    def visible(self, department: str | None) -> bool:
        if self.req.departments is None:
            return True
        return department is not None and department in self.req.departments

    def department_of_user(self, user_id: str | None) -> str | None:
        user = self.config.user(user_id) if user_id else None
        return user.department if user else None

    def pipeline_of_source(self, source_id: str | None) -> str | None:
        src = next((s for s in self.config.sources.sources if s.id == source_id), None)
        return src.pipeline if src else None

    def key(
        self,
        *,
        channel: str | None = None,
        source: str | None = None,
        pipeline: str | None = None,
        responsible: str | None = None,
        department: str | None = None,
    ) -> str:
        """The value of the requested dimension for a fact ("" when not grouped by one)."""
        by = self.req.by
        if by is None:
            return ""
        if by is By.PIPELINE and pipeline is None:
            pipeline = self.pipeline_of_source(source)
        value = {
            By.CHANNEL: channel,
            By.SOURCE: source,
            By.PIPELINE: pipeline,
            By.RESPONSIBLE: responsible,
            By.DEPARTMENT: department,
        }[by]
        return value or NONE_KEY

    def period(self, at: datetime) -> str:
        return period_label(self.cal, at, self.req.group)

    def range(self) -> Document:
        return {"$gte": self.req.start, "$lt": self.req.end}

    def in_period(
        self, coll: Collection, key: str, proj: Document | None, query: Document | None = None
    ) -> AsyncIterator[Document]:
        """The documents of ``coll`` whose ``key`` falls in the period, read in windows."""
        return in_windows(coll, query or {}, key, self.req.start, self.req.end, proj)

    # --- look-ups ----------------------------------------------------------------------

    async def conversations(self, ids: Iterable[str]) -> dict[str, Document]:
        """Conversations by id (channel, department, assignee), read once per report."""
        want = [i for i in dict.fromkeys(ids) if i not in self._convs]
        proj = {"channel": 1, "department": 1, "assignee_id": 1, "status": 1, "created_at": 1}
        for doc in await by_ids(self.store.conversations, want, proj):
            self._convs[doc["_id"]] = doc
        return self._convs


async def by_ids(coll: Collection, ids: Sequence[str], proj: Document | None) -> list[Document]:
    out: list[Document] = []
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), CHUNK):
        out.extend(
            await coll.find(
                {"_id": {"$in": unique[i : i + CHUNK]}}, proj, batch_size=READ_BATCH
            ).to_list()
        )
    return out


async def in_windows(
    coll: Collection,
    query: Document,
    key: str,
    lo: datetime | None,
    hi: datetime | None,
    proj: Document | None,
) -> AsyncIterator[Document]:
    """Every document matching ``query`` with ``lo <= doc[key] < hi`` (None: no bound),
    read newest first in contiguous, non-overlapping windows of the indexed ``key`` that
    hold about ``WINDOW_DOCS`` documents each: each window's width is the last one's scaled
    by how far its count missed (at most ×4 either way), so a burst or a quiet stretch
    costs a few reads more, never one huge read. With no upper bound, what is dated from
    now on (normally nothing) is read first; with no lower bound the walk goes on to the
    year 1 (empty windows grow fourfold: a dozen empty reads past the oldest document),
    then reads anything older in one query. (Asking "is there anything older?" instead
    costs the embedded server the whole older range for each empty window.)"""

    async def read(bounds: Document) -> list[Document]:
        return await coll.find({**query, key: bounds}, proj, batch_size=WINDOW_DOCS * 4).to_list()

    if hi is None:
        hi = datetime.now(UTC)
        for doc in await read({"$gte": hi}):
            yield doc
    floor = EARLIEST if lo is None else lo
    span = min(FIRST_WINDOW, hi - floor)
    end = hi
    while end > floor:
        start = end - span if end - floor > span else floor
        docs = await read({"$gte": start, "$lt": end})
        for doc in docs:
            yield doc
        end = start
        factor = 4.0 if not docs else min(4.0, max(0.25, WINDOW_DOCS / len(docs)))
        span = max(span * factor, timedelta(milliseconds=1))
    if lo is None:
        for doc in await read({"$lt": floor}):
            yield doc


async def by_field(
    coll: Collection, name: str, values: Sequence[str], proj: Document | None, extra: Document
) -> list[Document]:
    out: list[Document] = []
    unique = list(dict.fromkeys(values))
    for i in range(0, len(unique), FIELD_CHUNK):
        query = {name: {"$in": unique[i : i + FIELD_CHUNK]}, **extra}
        out.extend(await coll.find(query, proj, batch_size=READ_BATCH).to_list())
    return out


# --- buckets --------------------------------------------------------------------------


def period_start(cal: WorkingCalendar, at: datetime, group: Group) -> date:
    day = cal.local(at).date()
    if group is Group.WEEK:
        return day - timedelta(days=day.weekday())
    if group is Group.MONTH:
        return day.replace(day=1)
    return day


def period_label(cal: WorkingCalendar, at: datetime, group: Group) -> str:
    """The bucket of ``at``: its local date (day), the Monday of its week (week), or
    ``YYYY-MM`` (month) — in the company's time zone."""
    start = period_start(cal, at, group)
    return start.strftime("%Y-%m") if group is Group.MONTH else start.isoformat()


# --- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``p`` % of the values at
    or below it; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class Counter:
    """Counts per (period, key) and metric, and the totals."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = list(metrics)
        self.cells: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(self.metrics, 0)
        )
        self.totals: dict[str, int] = dict.fromkeys(self.metrics, 0)

    def add(self, period: str, key: str, metric: str, n: int = 1) -> None:
        self.cells[(period, key)][metric] += n
        self.totals[metric] += n

    def table(self, name: str, by: By | None) -> Table:
        cols = ["period", *([by.value] if by else []), *self.metrics]
        rows: list[list[Cell]] = []
        for (period, key), values in sorted(self.cells.items()):
            rows.append([period, *([key] if by else []), *(values[m] for m in self.metrics)])
        return Table(name=name, columns=cols, rows=rows)


def make_report(ctx: Ctx, name: str, totals: dict[str, Any], tables: list[Table]) -> Report:
    return Report(
        report=name,
        from_=ctx.req.start,
        to=ctx.req.end,
        group=ctx.req.group,
        by=ctx.req.by,
        timezone=str(ctx.cal.tz),
        generated_at=ctx.req.now,
        totals=totals,
        tables=tables,
        rollup_lag=ctx.rollup_lag,
    )
