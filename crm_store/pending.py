"""``pending_updates``: edits, deletions, reactions and delivery receipts that overtook
their message.

A provider may report an edit before we have stored the message it edits (the message is
still waiting to be routed, or its own delivery comes later), and a delivery receipt
before our send has returned the provider's id of the message. Such an update is parked
here, durably, before the webhook is answered, and applied when its message is stored:
the router applies the parked updates of every record it routes (crm_store/updates.py
:func:`apply_pending`), the outbox those of every message it has just sent.

One document per update: ``_id`` derived from the update itself, so a redelivery parks
nothing twice; ``key`` names the message it waits for (:func:`inbound_key` — the inbound
message's ``_id`` — or :func:`outbound_key`); ``at`` the provider's time (None if it gives
none), ``received_at`` ours. An applied update is deleted; one whose message never comes
is removed by a TTL index at ``expires_at`` (:data:`KEEP_DAYS`, receipts
:data:`KEEP_RECEIPT_DAYS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import orjson
from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from crm_store.documents import intake_id, stable_id
from crm_store.intake import id_chunks
from crm_store.routing_store import find_in
from crm_store.store import Collection, Document, Store

COLLECTION = "pending_updates"
# How long an update waits for a message that never comes: an edit of a message sent
# before the channel was connected (or one still unparsed, waiting for a reparse); a
# receipt of a message another system sent through the same account (ours overtake the
# send's response by seconds).
KEEP_DAYS = 30
KEEP_RECEIPT_DAYS = 1


class Kind(StrEnum):
    EDIT = "edit"
    DELETION = "deletion"
    STATUS = "status"
    # A reaction to a message (either direction): parked under both keys.
    REACTION = "reaction"


def inbound_key(channel: str, account: str, provider_id: str) -> str:
    """The key of an inbound message: its ``_id`` (the intake record's)."""
    return intake_id(channel, account, provider_id)


def outbound_key(channel: str, account: str, provider_id: str) -> str:
    """The key of one of our outbound messages, by the provider's id of it."""
    return stable_id("outbound", channel, account, provider_id)


def _coll(store: Store) -> Collection:
    return store[COLLECTION]


async def park(store: Store, kind: Kind, key: str, update: BaseModel, at: datetime | None) -> None:
    """Keep ``update`` until the message ``key`` exists (idempotent)."""
    body = update.model_dump(mode="json")
    received = datetime.now(UTC)
    keep = KEEP_RECEIPT_DAYS if kind is Kind.STATUS else KEEP_DAYS
    doc: Document = {
        "_id": stable_id("pending", kind.value, key, orjson.dumps(body).decode()),
        "kind": kind.value,
        "key": key,
        "at": at,
        "received_at": received,
        "expires_at": received + timedelta(days=keep),
        "update": body,
    }
    # A DuplicateKeyError: parked by an earlier delivery of the same update.
    with contextlib.suppress(DuplicateKeyError):
        await _coll(store).insert_one(doc)


async def waiting(store: Store, keys: Iterable[str]) -> list[Document]:
    """The updates parked for ``keys``, in the provider's order: by its time (ours when it
    gives none), then by arrival."""
    docs = await find_in(_coll(store), "key", set(keys))
    return sorted(docs, key=lambda d: (d.get("at") or d["received_at"], d["received_at"]))


async def done(store: Store, ids: Sequence[str]) -> None:
    """Forget applied updates."""
    for chunk in id_chunks(list(ids)):
        await _coll(store).delete_many({"_id": {"$in": chunk}})
