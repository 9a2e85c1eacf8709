"""Live presence shared by every process (``presence``): who is connected and who types.

Three kinds of row, each with ``until`` (a wall-clock deadline; past it the row means
nothing, whether or not the TTL index has dropped it yet — it runs about once a minute):

- ``operator`` — one per open operator WebSocket (``GET /api/v1/ws``), ``_id`` =
  ``operator:<socket id>``, ``user`` = the user id. Written when the socket opens and
  every heartbeat while it is open; deleted on a clean close.
- ``visitor`` — one per open visitor WebSocket (``/webchat/{account}/ws``), ``_id`` =
  ``visitor:<socket id>``, ``conversation_id``; ``typing_until`` while the visitor types.
- ``operator_typing`` — one per webchat conversation an operator types in, ``_id`` =
  ``operator_typing:<conversation id>``; ``until`` is when the typing lapses (an
  operator's ``on: false`` sets it to now).

Readers compare ``until`` with now; writers do one upsert per heartbeat or per change.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from crm_store.store import Store

COLLECTION = "presence"
OPERATOR = "operator"
VISITOR = "visitor"
OPERATOR_TYPING = "operator_typing"


def _now() -> datetime:
    return datetime.now(UTC)


def row_id(kind: str, key: str) -> str:
    return f"{kind}:{key}"


async def operator_alive(store: Store, socket_id: str, user: str, ttl_s: float) -> None:
    """An operator's socket is open: it counts for ``ttl_s`` from now."""
    await store[COLLECTION].update_one(
        {"_id": row_id(OPERATOR, socket_id)},
        {"$set": {"kind": OPERATOR, "user": user, "until": _now() + timedelta(seconds=ttl_s)}},
        upsert=True,
    )


async def visitor_alive(store: Store, socket_id: str, conversation_id: str, ttl_s: float) -> None:
    """A visitor's socket is open: it counts for ``ttl_s`` from now."""
    await store[COLLECTION].update_one(
        {"_id": row_id(VISITOR, socket_id)},
        {
            "$set": {
                "kind": VISITOR,
                "conversation_id": conversation_id,
                "until": _now() + timedelta(seconds=ttl_s),
            }
        },
        upsert=True,
    )


async def visitor_typing(
    store: Store, socket_id: str, conversation_id: str, typing_s: float | None, ttl_s: float
) -> None:
    """The visitor on socket ``socket_id`` types for ``typing_s`` more seconds (None:
    stopped); also a heartbeat of the socket."""
    now = _now()
    typing_until = now + timedelta(seconds=typing_s) if typing_s is not None else None
    await store[COLLECTION].update_one(
        {"_id": row_id(VISITOR, socket_id)},
        {
            "$set": {
                "kind": VISITOR,
                "conversation_id": conversation_id,
                "until": now + timedelta(seconds=ttl_s),
                "typing_until": typing_until,
            }
        },
        upsert=True,
    )


async def operator_typing(store: Store, conversation_id: str, typing_s: float | None) -> None:
    """An operator types in the conversation for ``typing_s`` more seconds (None: stopped)."""
    until = _now() + timedelta(seconds=typing_s or 0.0)
    await store[COLLECTION].update_one(
        {"_id": row_id(OPERATOR_TYPING, conversation_id)},
        {"$set": {"kind": OPERATOR_TYPING, "conversation_id": conversation_id, "until": until}},
        upsert=True,
    )


async def gone(store: Store, kind: str, socket_id: str) -> None:
    """A socket closed cleanly: it no longer counts."""
    await store[COLLECTION].delete_one({"_id": row_id(kind, socket_id)})


async def any_operator(store: Store, users: Iterable[str]) -> bool:
    """One of ``users`` has an operator socket open on some process."""
    ids = list(users)
    if not ids:
        return False
    doc = await store[COLLECTION].find_one(
        {"kind": OPERATOR, "user": {"$in": ids}, "until": {"$gt": _now()}}, {"_id": 1}
    )
    return doc is not None


async def visitor_state(store: Store, conversation_id: str) -> tuple[bool, bool]:
    """(online, typing) of the conversation's visitor, over every process."""
    now = _now()
    docs = store[COLLECTION].find(
        {"conversation_id": conversation_id, "kind": VISITOR, "until": {"$gt": now}},
        {"typing_until": 1},
    )
    online = typing = False
    async for d in docs:
        online = True
        until = d.get("typing_until")
        if until is not None and _aware(until) > now:
            typing = True
    return online, typing


async def typing_operators(store: Store, conversation_ids: Iterable[str]) -> set[str]:
    """Which of the conversations an operator types in now."""
    ids = list(conversation_ids)
    if not ids:
        return set()
    docs = store[COLLECTION].find(
        {"conversation_id": {"$in": ids}, "kind": OPERATOR_TYPING, "until": {"$gt": _now()}},
        {"conversation_id": 1},
    )
    return {str(d["conversation_id"]) async for d in docs}


async def visitor_sockets(store: Store, conversation_id: str) -> int:
    """How many visitor sockets of the conversation are open, over every process."""
    return await store[COLLECTION].count_documents(
        {"conversation_id": conversation_id, "kind": VISITOR, "until": {"$gt": _now()}}
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
