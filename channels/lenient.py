"""Reading untrusted provider JSON leniently: what the messaging channels' ``read`` share.

A provider delivery that passed authentication is kept whatever its shape (see
:class:`channels.base.Channel`). These helpers read one field each and never raise: a
value of the wrong type, out of range or too long becomes ``None`` / ``""`` / a clipped
value, so the message is still produced from what can be read.

* :func:`load_json` — the body as JSON: invalid UTF-8 bytes and lone surrogate escapes are
  read as U+FFFD, integers of any size are kept exact (for ids).
* :func:`ident` — an id as a string whatever the provider wrote (an integer of any size or
  sign, a string); an over-long one is cut and suffixed with a hash of the whole, so two
  different ids stay different.
* :func:`epoch` / :func:`iso_time` / :func:`plausible` — a provider time, or None when it
  is not a plausible time (before 2000, more than a day ahead of the clock, not a number).
* :func:`text`, :func:`clip`, :func:`url`, :func:`int64`, :func:`number`, :func:`size`,
  :func:`obj`, :func:`objs` — the rest; :func:`body_id` / :func:`item_id` key a message
  whose own id cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from channels.base import WebhookError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
AHEAD = timedelta(days=1)
# orjson reads integers beyond 64 bits as floats; a body with one goes through json.
_LONG_INT = re.compile(rb"[-:\[,\s]\d{19,}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    """Lone surrogates (valid JSON escapes, invalid Unicode) → U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def load_json(body: bytes) -> Any:
    """The body as a JSON value; :class:`WebhookError` (400, a fixed sentence) only when
    it is not JSON at all."""
    if not _LONG_INT.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return _scrub(json.loads(body.decode("utf-8", "replace")))
    except (ValueError, RecursionError):
        raise WebhookError("body is not JSON") from None


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (anything else: :class:`WebhookError`, 400)."""
    value = load_json(body)
    if not isinstance(value, dict):
        raise WebhookError("body is not a JSON object")
    return value


def obj(value: Any) -> dict[str, Any]:
    """An object; anything else is empty (a one-object list is read as that object)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, dict) else {}


def objs(value: Any) -> Iterator[dict[str, Any]]:
    """The objects of what should be a list of them (a lone object counts as one)."""
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


def _hashed(value: str, limit: int) -> str:
    digest = hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return f"{value[: limit - 17]}~{digest}"


def ident(value: Any, limit: int = 256) -> str | None:
    """An id as a non-empty string: integers of any size and sign, integral floats,
    non-blank strings (stripped). Longer than ``limit`` → cut, with a hash of the whole."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        out = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        out = str(int(value))
    elif isinstance(value, str):
        out = value.strip()
    else:
        return None
    if not out:
        return None
    return out if len(out) <= limit else _hashed(out, limit)


def text(value: Any) -> str:
    """Message text: a string, or a number written as one; anything else is ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def clip(value: Any, limit: int) -> str | None:
    """A short string field (a name, a MIME type): non-blank, cut to ``limit``; numbers
    are written as strings; anything else → None."""
    out = text(value).strip()
    return out[:limit] or None


def int64(value: Any) -> int | None:
    """An integer MongoDB can store (64-bit signed); anything else → None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if INT64_MIN <= value <= INT64_MAX else None


def number(value: Any) -> float | None:
    """A finite number (a numeric string too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def size(value: Any) -> int | None:
    """A byte size: a non-negative 64-bit integer, else None."""
    n = int64(value)
    return n if n is not None and n >= 0 else None


def plausible(at: datetime | None, now: datetime | None = None) -> datetime | None:
    """``at`` if it is a plausible provider time (aware, from 2000 up to a day ahead of
    the clock), else None."""
    if at is None or at.tzinfo is None:
        return None
    latest = (now or datetime.now(UTC)) + AHEAD
    return at if EARLIEST <= at <= latest else None


def epoch(
    value: Any, *, millis: bool | None = None, now: datetime | None = None
) -> datetime | None:
    """Unix time → UTC datetime, or None when it is not a plausible time. ``millis``:
    True/False says the unit; None guesses (≥ 10^11 is read as milliseconds). Numeric
    strings are read as numbers."""
    seconds = number(value)
    if seconds is None or seconds <= 0:
        return None
    if millis or (millis is None and seconds >= 1e11):
        seconds /= 1000
    try:
        at = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return plausible(at, now)


def iso_time(value: Any, now: datetime | None = None) -> datetime | None:
    """An RFC 3339 / ISO 8601 time with a zone → UTC datetime, else None."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return plausible(at.astimezone(UTC), now)


def url(value: Any, limit: int = 4096) -> str | None:
    """A URL-like string up to ``limit`` characters (a cut URL would be wrong: None)."""
    out = value.strip() if isinstance(value, str) else ""
    return out if 0 < len(out) <= limit else None


def item_id(item: Any) -> str:
    """A stable id for one item of a batch whose own id cannot be read: a hash of the
    item's JSON (keys sorted), so a redelivery of the same item is stored once."""
    data = json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)
    return "h" + hashlib.blake2b(data.encode("utf-8", "replace"), digest_size=12).hexdigest()


def body_id(body: bytes) -> str:
    """A stable id for a message whose provider id cannot be read: a hash of the whole
    body, so the provider's redelivery of the same body is stored once."""
    return "h" + hashlib.blake2b(body, digest_size=12).hexdigest()
