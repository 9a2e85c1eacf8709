"""Identity → contact: the ``identities`` collection, where identity uniqueness lives.

One document per identity key (channels/identity.py: ``phone:+7…``, ``email:…``,
``telegram:<bot>:<id>`` …): ``{_id: key, contact_id, created_at}``. Uniqueness rests on
``_id`` alone, which MongoDB enforces on any deployment, sharded ones included
(docs/scaling.md) — unlike the unique multikey index on ``contacts.identities`` it
replaces. ``contacts.identities`` stays as data (what the operator sees, what a few
read paths filter on) and is written only with keys the contact holds here.

The rules, every write idempotent:

- **claim** before use: a contact's keys are inserted here (``insert_many``, unordered)
  before the contact document is written, under the contact's id. A key that exists
  already belongs to its owner: the first writer of a key wins, on any number of
  processes.
- **only a creator holding all its keys writes its contact** (routing_store.
  create_contact), so two contacts never share a key whatever the creators' key sets. One
  that finds a key owned by a written contact joins it (strongest key first) and claims
  its other keys for it; a key owned by a third contact stays there (merging contacts is
  an operator's decision). One that finds only owners still being created gives its keys
  back and tries again a little later.
- a key may point at a contact that is not written yet (its creator is between the two
  writes, or died there): readers treat it as unknown; a creator that still finds it so
  after its tries *adopts* it (:func:`winner`: the owner of its strongest key) — writes
  the contact under that id; the first creator's insert then collides on ``_id`` and it
  uses the contact as it is.
- a contact **merge** repoints the loser's keys to the winner; a **delete** removes the
  contact's keys (crm_store/contacts.py). A key still pointing at a deleted contact (a
  delete interrupted between its two writes) is free: the next creator takes it over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import BulkWriteError

from crm_store.intake import DUPLICATE_KEY, id_chunks
from crm_store.store import Collection, Document, Store

COLLECTION = "identities"


def identities(store: Store) -> Collection:
    return store[COLLECTION]


def split(keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """The phone numbers and e-mail addresses among identity keys."""
    keys = list(keys)
    phones = [k.removeprefix("phone:") for k in keys if k.startswith("phone:")]
    emails = [k.removeprefix("email:") for k in keys if k.startswith("email:")]
    return phones, emails


def add_to_contact(keys: Sequence[str]) -> Document:
    """The ``$addToSet`` that shows ``keys`` on their contact (identities, phones, e-mails)."""
    phones, emails = split(keys)
    add: Document = {"identities": {"$each": list(keys)}}
    if phones:
        add["phones"] = {"$each": phones}
    if emails:
        add["emails"] = {"$each": emails}
    return {"$addToSet": add}


async def owners(store: Store, keys: Iterable[str]) -> dict[str, str]:
    """The contact id of every key that has an owner (one ``$in`` on ``_id`` per 100 keys)."""
    out: dict[str, str] = {}
    for chunk in id_chunks(sorted(set(keys))):
        async for d in identities(store).find({"_id": {"$in": chunk}}, {"contact_id": 1}):
            out[d["_id"]] = d["contact_id"]
    return out


async def claim_many(
    store: Store, wanted: Mapping[str, Sequence[str]], at: datetime | None = None
) -> dict[str, str]:
    """Claim each contact's keys (``wanted``: contact id → keys) in one ``insert_many``;
    the owner of every key afterwards — the claimant's id where its insert won, the
    existing owner where it collided (read back in a second round trip, only then)."""
    at = at or datetime.now(UTC)
    docs: list[Document] = [
        {"_id": k, "contact_id": cid, "created_at": at}
        for cid, keys in wanted.items()
        for k in dict.fromkeys(keys)
    ]
    if not docs:
        return {}
    result = {d["_id"]: d["contact_id"] for d in docs}
    try:
        await identities(store).insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        lost = [docs[int(e["index"])]["_id"] for e in errors]
        found = await owners(store, lost)
        for k in lost:
            if k in found:
                result[k] = found[k]
            else:  # released in between (a contact deleted): nobody holds it now
                result.pop(k, None)
    return result


async def claim(
    store: Store, contact_id: str, keys: Sequence[str], at: datetime | None = None
) -> dict[str, str]:
    """:func:`claim_many` for one contact."""
    return await claim_many(store, {contact_id: keys}, at)


def winner(keys: Sequence[str], owned: dict[str, str], claimant: str) -> str:
    """Whom a creator with these keys (strongest first) joins: the owner of its strongest
    owned key. Every creator of one sender sees the same strongest key, so all of them
    agree whoever won which key."""
    for k in keys:
        if k in owned:
            return owned[k]
    return claimant


async def repoint(store: Store, keys: Sequence[str], from_id: str, to_id: str) -> None:
    """Move ``keys`` held by ``from_id`` to ``to_id`` (a lost creation, a merge)."""
    for chunk in id_chunks(list(dict.fromkeys(keys))):
        await identities(store).update_many(
            {"_id": {"$in": chunk}, "contact_id": from_id}, {"$set": {"contact_id": to_id}}
        )


async def release(store: Store, keys: Sequence[str], contact_id: str) -> None:
    """Free ``keys`` held by ``contact_id`` (a deleted contact)."""
    for chunk in id_chunks(list(dict.fromkeys(keys))):
        await identities(store).delete_many({"_id": {"$in": chunk}, "contact_id": contact_id})


async def take_over(store: Store, keys: Sequence[str], from_id: str, to_id: str) -> list[str]:
    """Keys of a deleted contact taken by ``to_id``: those that still pointed at it."""
    await repoint(store, keys, from_id, to_id)
    now = await owners(store, keys)
    return [k for k in keys if now.get(k) == to_id]
