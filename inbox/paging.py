"""Cursor pages: newest first by a time field, ties broken by ``_id``.

A cursor is opaque to clients: base64url of ``[time ISO, _id]`` of the last item of the
page. A cursor this API did not give is 422 naming the query parameter — also a forged one
whose time the store cannot hold (inbox/bounds.py).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import orjson

from crm_store.store import Document
from inbox.auth import ApiError
from inbox.bounds import storable_instant


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def _refused(param: str) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        f"{param} is not a cursor this API gave",
        errors=[{"in": "query", "field": param, "message": "unknown cursor"}],
    )


def decode_cursor(raw: str, param: str = "cursor") -> list[object]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        parts = None
    if not isinstance(parts, list) or len(parts) != 2:
        raise _refused(param)
    return parts


def cursor_time(raw: object, param: str = "cursor") -> datetime:
    """The time part of a cursor, in UTC; 422 unless the store can hold it."""
    try:
        return storable_instant(datetime.fromisoformat(str(raw)))
    except ValueError:
        raise _refused(param) from None


def older_than(raw: str, time_field: str, param: str = "cursor") -> Document:
    """The store filter of the items after the cursor's (older, or as old with a smaller
    ``_id``)."""
    at_raw, last_id = decode_cursor(raw, param)
    at = cursor_time(at_raw, param)
    if not isinstance(last_id, str):
        raise _refused(param)
    return {"$or": [{time_field: {"$lt": at}}, {time_field: at, "_id": {"$lt": last_id}}]}


def cursor_of(doc: Document, time_field: str) -> str | None:
    """The cursor that continues after ``doc``; None when it has no time to page by."""
    at = doc.get(time_field)
    return encode_cursor(at.isoformat(), doc["_id"]) if isinstance(at, datetime) else None
