"""The ``call_requests`` collection: click-to-call requests (``POST /api/v1/calls``), one
document per request id, so that a repeated request places the call once.

Document: ``_id`` = the request id (the client's ``request_id``, else a fresh one; Mango
gets it as ``command_id`` and sends it back in the call's events, which store it as the
call's ``request_id`` — channels/mango.py, crm_store/calls.py); ``channel``, ``account``,
``user_id``, ``login``, ``phone``, ``by`` (who asked), ``requested_at``, ``state``
(``placing`` → ``placed`` | ``failed``), ``provider_call_id``, ``error``.

A request already ``placed`` is answered from here and never sent to the PBX again; one
that ``failed`` may be tried again with the same id; one still ``placing`` (a concurrent
duplicate, or a process that died mid-request) is refused as in progress. A request id is
its author's: another user naming it learns nothing of the request (the API refuses it
the same way whatever the state).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from crm_store.store import Collection, Document, Store

COLLECTION = "call_requests"


def collection(store: Store) -> Collection:
    return store[COLLECTION]


async def begin(store: Store, request_id: str, fields: Document) -> Document | None:
    """Claim ``request_id`` for placing a call; None when it is ours to place now, else
    the stored request (``placed``: answer it; ``placing``: in progress)."""
    now = datetime.now(UTC)
    doc = {"_id": request_id, **fields, "state": "placing", "requested_at": now}
    try:
        await collection(store).insert_one(doc)
        return None
    except DuplicateKeyError:
        pass
    # A failed request may be tried again by its author: take it over.
    retried: Document | None = await collection(store).find_one_and_update(
        {"_id": request_id, "state": "failed", "by": fields.get("by")},
        {"$set": {**fields, "state": "placing", "requested_at": now}, "$unset": {"error": ""}},
        return_document=ReturnDocument.AFTER,
    )
    if retried is not None:
        return None
    found: Document | None = await collection(store).find_one({"_id": request_id})
    return found


async def placed(store: Store, request_id: str, provider_call_id: str) -> None:
    await collection(store).update_one(
        {"_id": request_id},
        {"$set": {"state": "placed", "provider_call_id": provider_call_id}},
    )


async def failed(store: Store, request_id: str, error: str) -> None:
    await collection(store).update_one(
        {"_id": request_id}, {"$set": {"state": "failed", "error": error[:1000]}}
    )
