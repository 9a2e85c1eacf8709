"""Reports for heads of sales: ``GET /api/v1/reports/{name}`` with ``name`` one of
volume, responsiveness, overdue, funnel, survey (``{name}.csv`` or ``format=csv`` for a
CSV of one table). Figures are computed by crm_store/reports/ for the departments the
caller sees (inbox/access.py ``report_departments``); docs/reports.md defines each.

Period: ``from`` (inclusive) and ``to`` (exclusive), each an instant with an offset or a
date (the company's local midnight; a date ``to`` includes that whole day). Default: the
30 days before now. At most 366 days.
"""

from __future__ import annotations

import asyncio
import csv
import io
import weakref
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from automation.calendar import WorkingCalendar
from crm_store.reports import REPORTS
from crm_store.reports.common import By, Cell, Ctx, Group, Report, Request, Table
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.bounds import EARLIEST, LATEST, storable_instant

MAX_SPAN = timedelta(days=366)
# One report computed at a time per event loop (process); more wait their turn.
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    found = _SLOTS.get(loop)
    if found is None:
        found = _SLOTS[loop] = asyncio.Semaphore(1)
    return found


DEFAULT_SPAN = timedelta(days=30)
BOM = "\ufeff"
# Cells an spreadsheet would read as a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def parse_moment(value: object) -> datetime | date:
    """An instant with an offset (2026-01-01T09:00:00+03:00) or a date (2026-01-01)."""
    if isinstance(value, str):
        try:
            if "T" in value or " " in value.strip():
                at = datetime.fromisoformat(value)
                if at.tzinfo is None:
                    raise ValueError("an instant needs an offset (Z or +03:00)")
                return storable_instant(at)
            day = date.fromisoformat(value)
            if not EARLIEST.date() <= day < LATEST.date():
                raise ValueError("the date is out of range")
            return day
        except ValueError as exc:
            raise ValueError(
                f"{exc}; give an instant with an offset (2026-01-01T09:00:00+03:00) "
                "or a date (2026-01-01)"
            ) from None
    if isinstance(value, datetime | date):
        return value
    raise ValueError("a date or an instant")


Moment = Annotated[
    datetime | date,
    PlainValidator(parse_moment),
    WithJsonSchema({"type": "string", "description": "an instant with an offset, or a date"}),
]


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: Moment | None = Field(
        default=None, alias="from", description="start (inclusive): an instant or a date"
    )
    to: Moment | None = Field(
        default=None, description="end (exclusive instant; a date includes that day)"
    )
    group: Group = Field(default=Group.DAY, description="bucket: day, week (Monday), month")
    by: By | None = Field(default=None, description="split each bucket by this dimension")
    format: Literal["json", "csv"] = "json"
    table: str | None = Field(
        default=None, max_length=64, description="CSV: which table (default the first)"
    )
    wait_over: int = Field(
        default=60, ge=1, le=525_600, description="responsiveness: minutes a wait counts from"
    )
    callback_within: int = Field(
        default=30, ge=1, le=10_080, description="responsiveness: minutes to call back"
    )


def _instant(cal: WorkingCalendar, value: datetime | date, *, end: bool) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    day = value + timedelta(days=1) if end else value
    return datetime.combine(day, datetime.min.time(), cal.tz).astimezone(UTC)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        f"the request query does not validate: {field}",
        errors=[{"in": "query", "field": field, "message": message}],
    )


def build_request(call: Call, q: ReportQuery, cal: WorkingCalendar) -> Request:
    now = datetime.now(UTC)
    try:
        end = _instant(cal, q.to, end=True) if q.to is not None else now
        start = _instant(cal, q.from_, end=False) if q.from_ is not None else end - DEFAULT_SPAN
    except (OverflowError, ValueError):
        raise _invalid("from", "the period is out of range") from None
    if start >= end:
        raise _invalid("to", "the period must end after it starts")
    if end - start > MAX_SPAN:
        raise _invalid("to", "the period may be at most 366 days long")
    return Request(
        start=start,
        end=end,
        group=q.group,
        by=q.by,
        departments=access.report_departments(call.principal),
        now=now,
        wait_over_min=q.wait_over,
        callback_within_min=q.callback_within,
    )


def safe_cell(value: Cell) -> str:
    """A CSV cell: empty for none, numbers as written, text with a leading formula
    character prefixed by an apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_START) else value
    return str(value)


def to_csv(table: Table) -> bytes:
    """RFC 4180 (CRLF, quotes doubled, quoted when needed), UTF-8 with a BOM for Excel."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([safe_cell(c) for c in table.columns])
    for row in table.rows:
        writer.writerow([safe_cell(c) for c in row])
    return (BOM + buf.getvalue()).encode("utf-8")


@route(
    "GET",
    "/api/v1/reports/{name}",
    summary="A report for heads of sales: volume, responsiveness, overdue, funnel or survey",
    tag="reports",
    query=ReportQuery,
    response=Report,
    raw={200: ("text/csv", "one table as CSV (format=csv, or the name ending in .csv)")},
    errors=(404,),
)
async def report(call: Call) -> web.StreamResponse | Report:
    """Figures of the period for the departments the caller sees (docs/reports.md)."""
    name = call.path("name")
    q = call.q(ReportQuery)
    fmt = q.format
    if name.endswith(".csv"):
        name, fmt = name[: -len(".csv")], "csv"
    compute = REPORTS.get(name)
    if compute is None:
        raise ApiError(404, "not_found", f"no report {name!r}: {', '.join(REPORTS)}")
    cal = WorkingCalendar.from_config(call.svc.config.calendar)
    req = build_request(call, q, cal)
    async with slots():  # one report at a time per process: the webhooks keep their share
        result = await compute(Ctx(call.svc.store, call.svc.config, cal, req))
    if fmt == "json":
        if q.table is not None:
            raise _invalid("table", "table applies to CSV only")
        return result
    tables = {t.name: t for t in result.tables}
    table = tables.get(q.table) if q.table is not None else result.tables[0]
    if table is None:
        raise _invalid("table", f"one of {', '.join(tables)}")
    stamp = f"{req.start:%Y%m%d}-{req.end:%Y%m%d}"
    return web.Response(
        body=to_csv(table),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}-{table.name}-{stamp}.csv"',
        },
    )
