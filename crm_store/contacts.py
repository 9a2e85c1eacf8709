"""Contacts an operator changes: merge two into one (with an audit record), delete.

**Merge** ``loser`` into ``winner``, every step idempotent so a merge interrupted half-way
is finished by running it again:

1. the audit record (``contact_merges``: who, when, both contacts as they were) — written
   once, a re-run keeps the first snapshots;
2. the identities move: removed from the loser first (``merged_identities`` keeps them),
   repointed to the winner in the ``identities`` collection (crm_store/identities.py: a
   key the loser held but the collection lacks is claimed for the winner), then shown on
   the winner — only the keys the winner now holds there;
3. everything of the loser points at the winner: leads, deals, conversations, messages,
   tasks (calls carry no contact: they follow their messages). An open lead of the loser
   is closed as ``merged`` when the winner has an open lead already (one open lead per
   contact), its conversations move to the winner's; likewise an auto-opened deal;
4. ``contact.merged`` is announced (same id on a re-run).

**Delete** marks the contact deleted, then frees its identities (kept as
``deleted_identities``; their ``identities`` documents are removed — one left behind by
an interrupted delete is taken over by the next creator); its conversations keep their
history, but the next message from that address — in one of them or anywhere — is
routed afresh (a new contact and lead).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from crm_store import identities as ident
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Document, Store


class ContactError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def _audit(store: Store, winner: Document, loser: Document, by: str, at: datetime) -> str:
    merge_id = stable_id("merge", winner["_id"], loser["_id"])
    with contextlib.suppress(DuplicateKeyError):  # a re-run: the first snapshots stay
        await store["contact_merges"].insert_one(
            {
                "_id": merge_id,
                "winner_id": winner["_id"],
                "loser_id": loser["_id"],
                "by": by,
                "at": at,
                "winner": winner,
                "loser": loser,
            }
        )
    return merge_id


async def _move_guarded(store: Store, coll: str, guard: str, winner: str, loser: str) -> None:
    """The loser's open lead (``open_contact``) / auto deal (``auto_open``): move it to the
    winner, or — when the winner has one — close it as merged into the winner's."""
    theirs = await store[coll].find_one({"contact_id": loser, guard: loser})
    if theirs is None:
        return
    ours = await store[coll].find_one({"contact_id": winner, guard: winner})
    if ours is None:
        await store[coll].update_one(
            {"_id": theirs["_id"]}, {"$set": {guard: winner, "contact_id": winner}}
        )
        return
    at = datetime.now(UTC)
    await store[coll].update_one(
        {"_id": theirs["_id"]},
        {
            "$set": {
                "open": False,
                "outcome": "merged",
                "merged_into": ours["_id"],
                "closed_at": at,
                "contact_id": winner,
            },
            "$unset": {guard: ""},
        },
    )
    kind = "lead" if coll == "leads" else "deal"
    await store.conversations.update_many(
        {"target.id": theirs["_id"]},
        {"$set": {"target": {"kind": kind, "id": ours["_id"], "open": True}}},
    )


async def merge(store: Store, winner_id: str, loser_id: str, by: str) -> Document:
    """Merge ``loser_id`` into ``winner_id`` (see the module doc); the winner as it is now."""
    if winner_id == loser_id:
        raise ContactError("same_contact", "a contact cannot be merged into itself")
    winner = await store.contacts.find_one({"_id": winner_id})
    loser = await store.contacts.find_one({"_id": loser_id})
    if winner is None or loser is None:
        raise ContactError("not_found", "no such contact")
    if winner.get("merged_into"):
        raise ContactError("merged", f"contact {winner_id} was merged into another")
    if loser.get("merged_into") not in (None, winner_id):
        raise ContactError("merged", f"contact {loser_id} was merged into another")
    at = datetime.now(UTC)
    merge_id = await _audit(store, winner, loser, by, at)
    moved = [
        i
        for i in loser.get("merged_identities") or loser.get("identities") or []
        if not i.startswith(("merged:", "deleted:"))
    ]
    await store.contacts.update_one(
        {"_id": loser_id},
        {
            "$set": {
                "merged_into": winner_id,
                "merged_identities": moved,
                # Not []: a unique multikey index indexes an empty array as one key.
                "identities": [f"merged:{loser_id}"],
                "merged_at": at,
            }
        },
    )
    if moved:
        await ident.repoint(store, moved, loser_id, winner_id)
        owned = await ident.claim(store, winner_id, moved)
        held = [k for k in moved if owned.get(k) == winner_id]
        if held:
            await store.contacts.update_one(
                {"_id": winner_id}, {**ident.add_to_contact(held), "$set": {"updated_at": at}}
            )
    await _move_guarded(store, "leads", "open_contact", winner_id, loser_id)
    await _move_guarded(store, "deals", "auto_open", winner_id, loser_id)
    for coll in ("leads", "deals", "conversations", "messages", "tasks"):
        await store[coll].update_many({"contact_id": loser_id}, {"$set": {"contact_id": winner_id}})
    await append(
        store,
        [
            event(
                "contact.merged",
                {"contact_id": winner_id},
                {"merged_id": loser_id, "identities": moved, "by": by, "audit_id": merge_id},
                key=[merge_id],
                at=at,
            )
        ],
        maybe_written=True,
    )
    doc = await store.contacts.find_one({"_id": winner_id})
    assert doc is not None
    return doc


async def delete(store: Store, contact_id: str, by: str) -> bool:
    """Soft-delete a contact; True if this call deleted it."""
    doc = await store.contacts.find_one({"_id": contact_id})
    if doc is None:
        return False
    if doc.get("deleted"):  # finish an interrupted delete: its keys are free
        await ident.release(store, doc.get("deleted_identities") or [], contact_id)
        return False
    at = datetime.now(UTC)
    result = await store.contacts.update_one(
        {"_id": contact_id, "deleted": {"$ne": True}},
        {
            "$set": {
                "deleted": True,
                "deleted_at": at,
                "deleted_by": by,
                "deleted_identities": doc.get("identities", []),
                "identities": [f"deleted:{contact_id}"],
            }
        },
    )
    await ident.release(store, doc.get("identities") or [], contact_id)
    if result.modified_count:
        # Its conversations stay as history; the next message in one is routed afresh.
        await store.conversations.update_many(
            {"contact_id": contact_id},
            {"$set": {"target.open": False, "contact_id": None, "deleted_contact_id": contact_id}},
        )
        await append(
            store,
            [
                event(
                    "contact.deleted",
                    {"contact_id": contact_id},
                    {"by": by},
                    key=[contact_id],
                    at=at,
                )
            ],
        )
    return bool(result.modified_count)
