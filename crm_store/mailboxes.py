"""Per-mailbox sync state: the UID checkpoint and the lease that gives one process the
mailbox at a time.

Checkpoint (``mailboxes`` collection, ``_id`` = ``email:<account>:<folder>``): the
folder's ``UIDVALIDITY`` and the highest UID whose message is durably in intake. It only
moves forward (``$max``) and only for the UIDVALIDITY it was read under; a new
UIDVALIDITY resets it to 0 (the resync then dedupes on the intake ids).

Mails without a Message-ID (``mail_uids`` collection, ``_id`` =
``email:<account>:<folder>:<UIDVALIDITY>:<UID>``, with the mail's content hash and intake
id): their intake id is the content hash, which the full scan cannot know without
downloading the mail; this record tells it the UID is stored, so a restart's full scan
does not download them again. Written after the intake write, so it never claims a mail
that is not stored.

Lease (``leases`` collection): ``{_id, owner, until}``. Taken with the portable pattern —
an ``update_one`` that matches only an expired lease or our own, else an ``insert_one``
that the unique ``_id`` lets at most one process win — never a find-and-modify. A holder
renews it well before ``until``; a dead holder's lease runs out and another process takes
the mailbox over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from crm_store.store import Document, Store


def _now() -> datetime:
    return datetime.now(UTC)


def mailbox_key(account: str, folder: str) -> str:
    return f"email:{account}:{folder}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    uidvalidity: int | None
    last_uid: int


async def checkpoint(store: Store, key: str) -> Checkpoint:
    doc = await store["mailboxes"].find_one({"_id": key})
    if doc is None:
        return Checkpoint(None, 0)
    return Checkpoint(doc.get("uidvalidity"), int(doc.get("last_uid", 0)))


async def advance(store: Store, key: str, uidvalidity: int, last_uid: int) -> None:
    """Record that every message up to ``last_uid`` is in intake (never moves back)."""
    await store["mailboxes"].update_one(
        {"_id": key, "uidvalidity": uidvalidity},
        {"$max": {"last_uid": last_uid}, "$set": {"synced_at": _now()}},
    )


async def start_epoch(store: Store, key: str, uidvalidity: int, previous: int | None) -> None:
    """A first sync, or the server announced a new UIDVALIDITY: every UID is new again."""
    update: Document = {
        "$set": {"uidvalidity": uidvalidity, "last_uid": 0, "epoch_started_at": _now()},
    }
    if previous is not None:
        update["$inc"] = {"resyncs": 1}
        update["$push"] = {"previous_uidvalidity": previous}
    await store["mailboxes"].update_one({"_id": key}, update, upsert=True)


async def record_full_scan(store: Store, key: str, found: int) -> None:
    await store["mailboxes"].update_one(
        {"_id": key}, {"$set": {"full_scan_at": _now(), "full_scan_found": found}}
    )


def uid_key(key: str, uidvalidity: int, uid: int) -> str:
    return f"{key}:{uidvalidity}:{uid}"


async def remember_uids(
    store: Store, key: str, uidvalidity: int, stored: list[tuple[int, str, str]]
) -> None:
    """Record ``(uid, content hash, intake id)`` of stored mails without a Message-ID."""
    if not stored:
        return
    ops = [
        UpdateOne(
            {"_id": uid_key(key, uidvalidity, uid)},
            {"$set": {"hash": digest, "intake_id": iid, "at": _now()}},
            upsert=True,
        )
        for uid, digest, iid in stored
    ]
    await store["mail_uids"].bulk_write(ops, ordered=False)


async def known_uids(store: Store, key: str, uidvalidity: int, uids: list[int]) -> set[int]:
    """Those of ``uids`` recorded by :func:`remember_uids` under this UIDVALIDITY."""
    wanted = {uid_key(key, uidvalidity, u): u for u in uids}
    out: set[int] = set()
    ids = list(wanted)
    for i in range(0, len(ids), 100):
        async for d in store["mail_uids"].find({"_id": {"$in": ids[i : i + 100]}}, {"_id": 1}):
            out.add(wanted[d["_id"]])
    return out


async def acquire(store: Store, name: str, owner: str, lease_s: float) -> bool:
    """Take (or keep) the lease ``name``; False while another live process holds it."""
    t = _now()
    until = t + timedelta(seconds=lease_s)
    res = await store["leases"].update_one(
        {"_id": name, "$or": [{"owner": owner}, {"until": {"$lt": t}}]},
        {"$set": {"owner": owner, "until": until, "renewed_at": t}, "$inc": {"takeovers": 1}},
    )
    if res.matched_count:
        return True
    try:
        await store["leases"].insert_one(
            {"_id": name, "owner": owner, "until": until, "renewed_at": t, "takeovers": 1}
        )
    except DuplicateKeyError:
        return False
    return True


async def renew(store: Store, name: str, owner: str, lease_s: float) -> bool:
    """Extend our lease; False when it is no longer ours (we were too slow)."""
    t = _now()
    res = await store["leases"].update_one(
        {"_id": name, "owner": owner, "until": {"$gte": t}},
        {"$set": {"until": t + timedelta(seconds=lease_s), "renewed_at": t}},
    )
    return res.matched_count == 1


async def release(store: Store, name: str, owner: str) -> None:
    """Give the lease up at once (a clean stop), so another process need not wait."""
    await store["leases"].update_one(
        {"_id": name, "owner": owner}, {"$set": {"until": datetime(1970, 1, 1, tzinfo=UTC)}}
    )


async def holder(store: Store, name: str) -> str | None:
    doc = await store["leases"].find_one({"_id": name})
    if doc is None or doc["until"] < _now():
        return None
    return str(doc["owner"])
