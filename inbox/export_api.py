"""Export for directors and admins: ``GET /api/v1/export/{kind}?format=csv|json`` with
``kind`` leads, deals or contacts — everything of that kind the caller may see (deleted
and merged-away records left out), streamed so any size fits in memory."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError

BATCH = 500


def _phones(d: Document) -> str:
    return " ".join(d.get("phones") or [])


def _emails(d: Document) -> str:
    return " ".join(d.get("emails") or [])


ENTITY_COLUMNS: list[tuple[str, Callable[[Document], Any]]] = [
    ("id", lambda d: d["_id"]),
    ("title", lambda d: d.get("title")),
    ("pipeline_id", lambda d: d.get("pipeline_id")),
    ("stage_id", lambda d: d.get("stage_id")),
    ("open", lambda d: d.get("open")),
    ("responsible_id", lambda d: d.get("responsible_id")),
    ("contact_id", lambda d: d.get("contact_id")),
    ("source_id", lambda d: d.get("source_id")),
    ("created_at", lambda d: d.get("created_at")),
    ("fields", lambda d: orjson.dumps(d.get("fields") or {}).decode()),
]
COLUMNS: dict[str, list[tuple[str, Callable[[Document], Any]]]] = {
    "leads": ENTITY_COLUMNS,
    "deals": ENTITY_COLUMNS,
    "contacts": [
        ("id", lambda d: d["_id"]),
        ("name", lambda d: d.get("name")),
        ("phones", _phones),
        ("emails", _emails),
        ("responsible_id", lambda d: d.get("responsible_id")),
        ("created_at", lambda d: d.get("created_at")),
    ],
}


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["csv", "json"] = "csv"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


@route(
    "GET",
    "/api/v1/export/{kind}",
    summary="Export leads, deals or contacts the caller sees (directors and admins)",
    tag="export",
    query=ExportQuery,
    raw={200: ("text/csv", "CSV with a header row (format=csv), or a JSON array (format=json)")},
    errors=(404,),
)
async def export(call: Call) -> web.StreamResponse:
    kind = call.path("kind")
    if kind not in COLUMNS:
        raise ApiError(404, "not_found", f"nothing to export as {kind!r}: leads, deals, contacts")
    access.require_export(call.principal)
    fmt = call.q(ExportQuery).format
    columns = COLUMNS[kind]
    query: Document = {
        "$and": [
            access.entity_filter(call.svc.config, call.principal),
            {"deleted": {"$ne": True}},
            {"merged_into": None},
        ]
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
            "Content-Disposition": f'attachment; filename="{kind}-{stamp}.{fmt}"',
        }
    )
    await resp.prepare(call.request)
    if fmt == "csv":
        await resp.write(_csv_row([name for name, _ in columns]))
    else:
        await resp.write(b"[")
    first = True
    async for doc in call.svc.store[kind].find(query, sort=[("_id", 1)], batch_size=BATCH):
        if fmt == "csv":
            await resp.write(_csv_row([_cell(get(doc)) for _, get in columns]))
        else:
            row = {name: get(doc) for name, get in columns}
            if kind != "contacts":
                row["fields"] = doc.get("fields") or {}
            await resp.write((b"" if first else b",") + orjson.dumps(row))
        first = False
    if fmt == "json":
        await resp.write(b"]")
    await resp.write_eof()
    return resp


def _csv_row(values: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().encode()
