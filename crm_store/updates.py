"""Write paths for what providers report besides new messages: edits, deletions, delivery
receipts, reachability.

Edits, deletions and receipts may arrive before their message is stored (an edit while
the message waits to be routed, a receipt before our send returned the provider's id).
Such an update is parked in ``pending_updates`` (crm_store/pending.py) before the webhook
is answered and applied by :func:`apply_pending` once the message exists: the router calls
it for every record it routes, the outbox for every message it has sent.

Both sides write first and read second — the update parks itself, then looks for the
message again; the router stores the message, then looks for parked updates — so at least
one of them sees the other, and every application is idempotent (an edit applies only
when newer, crm_store/edit_order.py; a receipt only moves the state forward; a deletion
marks once), so both applying it is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from channels.base import (
    STATE_RANK,
    MessageDeletion,
    MessageEdit,
    MessageReaction,
    Reachability,
    ReadWatermark,
    StatusUpdate,
)
from crm_store import pending
from crm_store.edit_order import StoredText, Verdict, to_ms, verdict
from crm_store.events import append, event
from crm_store.pending import Kind
from crm_store.store import Document, Store

log = structlog.get_logger("omniroute.updates")

# Concurrent edits of one message: each try re-reads after another edit won.
MAX_EDIT_TRIES = 16
_EDIT_FIELDS = {
    "text": 1,
    "attachments": 1,
    "edits.text": 1,
    "edited_at": 1,
    "sent_at": 1,
    "edit_seq": 1,
    "deleted_at": 1,
    "channel": 1,
    "conversation_id": 1,
    "contact_id": 1,
    "target": 1,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _refs(doc: Document) -> dict[str, str | None]:
    refs: dict[str, str | None] = {
        "message_id": doc["_id"],
        "conversation_id": doc.get("conversation_id"),
        "contact_id": doc.get("contact_id"),
    }
    target = doc.get("target") or {}
    if target.get("kind") in ("lead", "deal"):
        refs[f"{target['kind']}_id"] = target.get("id")
    return refs


# --------------------------------------------------------------------------- edits


async def apply_edit(store: Store, edit: MessageEdit) -> bool:
    """Apply a customer's edit to the stored inbound message; if the message is not
    stored yet, park the edit until it is. True if the message exists (the edit applied,
    or was stale / already applied); False if the edit waits for its message."""
    key = pending.inbound_key(edit.channel, edit.account, edit.provider_id)
    if await _edit_message(store, key, edit, _now()) is not None:
        return True
    await pending.park(store, Kind.EDIT, key, edit, edit.edited_at)
    return await _recheck(store, key)


async def _edit_message(
    store: Store, mid: str, edit: MessageEdit, received: datetime
) -> Verdict | None:
    """Apply ``edit`` to message ``mid`` if it is newer than what the message says; the
    replaced text goes to ``edits``. None if the message is not stored. ``received``: the
    edit's time when the provider gives none (its arrival)."""
    attachments = [a.model_dump(exclude_none=True) for a in edit.attachments]
    for _ in range(MAX_EDIT_TRIES):
        msg = await store.messages.find_one({"_id": mid, "direction": "in"}, _EDIT_FIELDS)
        if msg is None:
            return None
        await _restore_if_newer(store, msg, to_ms(edit.edited_at or received))
        stored = StoredText(
            text=msg.get("text") or "",
            attachments=msg.get("attachments") or [],
            history=[e.get("text") or "" for e in msg.get("edits") or []],
            edited_at=msg.get("edited_at"),
            sent_at=msg.get("sent_at"),
        )
        outcome = verdict(stored, edit.text, attachments, edit.edited_at)
        if outcome is Verdict.STALE:
            return outcome
        number = int(msg.get("edit_seq") or 0)
        if outcome is Verdict.APPLY:
            at = to_ms(edit.edited_at or received)
            replaced: Document = {"text": stored.text, "replaced_at": at}
            if stored.attachments:
                replaced["attachments"] = list(stored.attachments)
            # Guarded by the edit counter: a concurrent edit that won makes this one read
            # the message again and decide anew.
            result = await store.messages.update_one(
                {"_id": mid, "edit_seq": number if number else {"$exists": False}},
                {
                    "$set": {"text": edit.text, "attachments": attachments, "edited_at": at},
                    "$inc": {"edit_seq": 1},
                    "$push": {"edits": replaced},
                },
            )
            if not result.modified_count:
                continue
            number += 1
            msg["edited_at"] = at
            # The operator's list shows the start of the conversation's last inbound text.
            await store.conversations.update_one(
                {"_id": msg.get("conversation_id"), "last_inbound.provider_id": edit.provider_id},
                {"$set": {"last_inbound.text": edit.text[:200]}},
            )
        if number:
            # The message now says what its edit number ``number`` said: announce that
            # edit (again after a crash: same id, written once).
            await _announce(store, msg, "message.edited", [str(number)], msg["edited_at"], number)
        return outcome
    raise RuntimeError(f"message {mid}: {MAX_EDIT_TRIES} concurrent edits in a row")


async def _announce(
    store: Store,
    msg: Document,
    type_: str,
    key: Sequence[str],
    at: datetime | None,
    number: int | None = None,
) -> None:
    data: dict[str, Any] = {"channel": msg.get("channel"), "at": at}
    if number is not None:
        data["number"] = number
    await append(
        store,
        [event(type_, _refs(msg), data, key=[msg["_id"], *key], at=at)],
        maybe_written=True,
    )


# --------------------------------------------------------------------------- deletions


async def apply_deletion(store: Store, deletion: MessageDeletion) -> bool:
    """Mark the stored inbound message deleted (its text stays: the operator still sees
    what the customer wrote); if it is not stored yet, park the deletion until it is.
    True if the message exists."""
    key = pending.inbound_key(deletion.channel, deletion.account, deletion.provider_id)
    if await _delete_message(store, key, deletion, _now()):
        return True
    await pending.park(store, Kind.DELETION, key, deletion, deletion.deleted_at)
    return await _recheck(store, key)


async def _delete_message(
    store: Store, mid: str, deletion: MessageDeletion, received: datetime
) -> bool:
    """False if the message is not stored. The first deletion counts; later ones (and
    redeliveries) change nothing."""
    msg = await store.messages.find_one({"_id": mid, "direction": "in"}, _EDIT_FIELDS)
    if msg is None:
        return False
    if msg.get("deleted_at") is None:
        at = to_ms(deletion.deleted_at or received)
        await store.messages.update_one(
            {"_id": mid, "deleted_at": {"$exists": False}},
            {"$set": {"deleted": True, "deleted_at": at}},
        )
        msg = await store.messages.find_one({"_id": mid}, _EDIT_FIELDS) or msg
    await _announce(store, msg, "message.deleted", [], msg.get("deleted_at"))
    return True


# --------------------------------------------------------------------------- reactions


def _target(r: MessageReaction) -> Document:
    """The reacted-to message, either direction (customers react to our messages too)."""
    return {"channel": r.channel, "account": r.account, "provider_id": r.provider_id}


def reaction_field(by: str | None) -> str:
    """``reactions.<reactor>`` (field names hold no dots or ``$``)."""
    who = (by or "unknown").replace(".", "_").replace("$", "_")
    return f"reactions.{who}"


async def apply_reaction(store: Store, reaction: MessageReaction) -> bool:
    """Keep a reaction on the message it reacts to: ``reactions.<reactor> = {reaction,
    at}``, the newest per reactor (a removal stores ``reaction: None``, so a late older
    reaction does not come back). A reaction whose message is not stored yet is parked
    under both keys (an inbound message still being routed, or one of ours whose send has
    not returned its id); the one that finds its message applies it, the other expires.
    True if the message exists."""
    if await _react(store, reaction, _now()):
        return True
    inbound = pending.inbound_key(reaction.channel, reaction.account, reaction.provider_id)
    outbound = pending.outbound_key(reaction.channel, reaction.account, reaction.provider_id)
    await pending.park(store, Kind.REACTION, inbound, reaction, reaction.at)
    await pending.park(store, Kind.REACTION, outbound, reaction, reaction.at)
    if await _recheck(store, inbound):
        return True
    return await _recheck(store, outbound, {**_target(reaction), "direction": "out"})


async def _react(store: Store, reaction: MessageReaction, received: datetime) -> bool:
    """False if the message is not stored; a reaction older than the one kept for the
    same reactor changes nothing. Read, compare, then write guarded by what was read (no
    ``$or``: the embedded store would scan, docs/store.md); a concurrent reaction of the
    same reactor makes it read again."""
    at = to_ms(reaction.at or received)
    field = reaction_field(reaction.by)
    who = field.removeprefix("reactions.")
    for _ in range(MAX_EDIT_TRIES):
        msg = await store.messages.find_one(_target(reaction), {"_id": 1, field: 1})
        if msg is None:
            return False
        kept = (msg.get("reactions") or {}).get(who)
        kept_at = kept.get("at") if isinstance(kept, dict) else None
        if kept_at is not None and kept_at > at:
            return True  # a newer reaction of this person is there already
        guard: Document = {"_id": msg["_id"], f"{field}.at": kept_at}
        if kept is None:
            guard = {"_id": msg["_id"], field: {"$exists": False}}
        result = await store.messages.update_one(
            guard, {"$set": {field: {"reaction": reaction.reaction, "at": at}}}
        )
        if result.matched_count:
            return True
    raise RuntimeError(f"message {reaction.provider_id}: {MAX_EDIT_TRIES} concurrent reactions")


# --------------------------------------------------------------------------- restores


async def _restore_if_newer(store: Store, msg: Document, at: datetime) -> None:
    """A deleted message is edited only after it was put back: an edit newer than the
    deletion lifts it (VK's ``wall_reply_restore`` arrives as such an edit,
    channels/vk_comments.py). The message is no longer ``deleted``; ``restored_at`` and a
    ``message.restored`` event say when. An edit older than the deletion (a late
    redelivery) changes nothing here."""
    deleted = msg.get("deleted_at")
    if deleted is None or at <= deleted:
        return
    result = await store.messages.update_one(
        {"_id": msg["_id"], "deleted_at": deleted},
        {"$set": {"deleted": False, "restored_at": at}, "$unset": {"deleted_at": ""}},
    )
    if result.modified_count:
        msg.pop("deleted_at", None)
        await _announce(store, msg, "message.restored", [deleted.isoformat()], at)


# --------------------------------------------------------------------------- receipts


def _by_provider_id(status: StatusUpdate) -> Document:
    return {
        "channel": status.channel,
        "account": status.account,
        "provider_id": status.provider_id,
        "direction": "out",
    }


async def apply_status(store: Store, status: StatusUpdate) -> bool:
    """Move an outbound message's delivery state forward; never backwards. A receipt for
    a provider id no message carries yet (the provider answered our send's callback
    before the send itself returned) is parked until the outbox stores that id. True if
    the state moved."""
    if await _move_state(store, status):
        return True
    if await store.messages.find_one(_by_provider_id(status), {"_id": 1}) is not None:
        return False  # stale or repeated: the state is there already
    key = pending.outbound_key(status.channel, status.account, status.provider_id)
    await pending.park(store, Kind.STATUS, key, status, status.at)
    return await _recheck(store, key, _by_provider_id(status))


async def _move_state(store: Store, status: StatusUpdate) -> bool:
    rank = STATE_RANK[status.state]
    at = status.at or _now()
    result = await store.messages.update_one(
        {**_by_provider_id(status), "state_rank": {"$lt": rank}},
        {
            "$set": {
                "state": status.state.value,
                "state_rank": rank,
                "state_at": at,
                **({"error": status.error} if status.error else {}),
            },
            "$push": {"state_history": {"state": status.state.value, "at": at}},
        },
    )
    if result.modified_count:
        doc = await store.messages.find_one(
            _by_provider_id(status), {"conversation_id": 1, "contact_id": 1}
        )
        if doc is not None:
            refs: dict[str, str | None] = {
                "message_id": doc["_id"],
                "conversation_id": doc.get("conversation_id"),
                "contact_id": doc.get("contact_id"),
            }
            await append(
                store,
                [
                    event(
                        "message.delivery_changed",
                        refs,
                        {"state": status.state.value, "error": status.error},
                        key=[doc["_id"], status.state.value],
                        at=at,
                    )
                ],
                maybe_written=True,
            )
    return result.modified_count > 0


# Outbound messages one watermark moves at most (a customer's unread backlog is short).
WATERMARK_LIMIT = 500


async def apply_watermark(store: Store, mark: ReadWatermark) -> int:
    """Move every outbound message of the account to ``mark.recipient`` sent up to
    ``mark.upto`` forward to ``mark.state`` (each as a receipt of its own: events,
    history, never backwards). A message whose send has not returned yet is not covered;
    the next watermark is. Returns how many moved."""
    rank = STATE_RANK[mark.state]
    # Exactly the fields of ``recipient_sent``, hinted (a partial index); the rest is
    # filtered here (docs/store.md: what the embedded store answers from an index).
    cursor = store.messages.find(
        {
            "channel": mark.channel,
            "account": mark.account,
            "recipient": mark.recipient,
            "sent_at": {"$lte": mark.upto},
        },
        {"provider_id": 1, "direction": 1, "state_rank": 1},
        hint="recipient_sent",
        sort=[("sent_at", -1)],
    ).limit(WATERMARK_LIMIT)
    moved = 0
    async for doc in cursor:
        if doc.get("direction") != "out" or not doc.get("provider_id"):
            continue
        if int(doc.get("state_rank") or 0) >= rank:
            continue
        status = StatusUpdate(
            channel=mark.channel,
            account=mark.account,
            provider_id=doc["provider_id"],
            state=mark.state,
            at=mark.upto,
        )
        moved += await _move_state(store, status)
    return moved


# --------------------------------------------------------------------------- parked


async def _recheck(store: Store, key: str, message: Document | None = None) -> bool:
    """After parking: the message may have been stored meanwhile, after its writer looked
    for parked updates; then apply them here. ``message``: how to find it (default: its
    ``_id`` is ``key``). True if the message exists."""
    if await store.messages.find_one(message or {"_id": key}, {"_id": 1}) is None:
        return False
    await apply_pending(store, [key])
    return True


async def apply_pending(store: Store, keys: Sequence[str]) -> int:
    """Apply the updates parked for the messages ``keys`` (inbound: their ``_id``;
    outbound: :func:`pending.outbound_key`), in the provider's order, and forget those
    whose message exists. Idempotent: safe to call again after a crash, or from two
    processes at once. Returns how many were applied or found stale."""
    finished: list[str] = []
    for doc in await pending.waiting(store, keys):
        try:
            found = await _apply_parked(store, doc)
        except ValidationError:
            log.warning("pending.unreadable", pending_id=doc["_id"], kind=doc.get("kind"))
            continue  # an update from an older version: left to the TTL index
        if found:
            finished.append(doc["_id"])
    await pending.done(store, finished)
    return len(finished)


async def _apply_parked(store: Store, doc: Document) -> bool:
    """Apply one parked update; False if its message is still missing."""
    received: datetime = doc["received_at"]
    kind = doc.get("kind")
    if kind == Kind.EDIT:
        edit = MessageEdit.model_validate(doc["update"])
        return await _edit_message(store, doc["key"], edit, received) is not None
    if kind == Kind.DELETION:
        deletion = MessageDeletion.model_validate(doc["update"])
        return await _delete_message(store, doc["key"], deletion, received)
    if kind == Kind.REACTION:
        reaction = MessageReaction.model_validate(doc["update"])
        return await _react(store, reaction, received)
    status = StatusUpdate.model_validate(doc["update"])
    if await _move_state(store, status):
        return True
    return await store.messages.find_one(_by_provider_id(status), {"_id": 1}) is not None


# --------------------------------------------------------------------------- reachability


async def apply_reachability(store: Store, update: Reachability, keys: list[str]) -> bool:
    """Mark the contact owning any of ``keys`` (un)reachable on this channel account."""
    if not keys:
        return False
    # Field names must not contain dots; account ids may.
    field = "reachable." + f"{update.channel}:{update.account}".replace(".", "_")
    result = await store.contacts.update_one(
        {"identities": {"$in": keys}},
        {
            "$set": {
                field: {
                    "reachable": update.reachable,
                    "at": update.at or datetime.now(UTC),
                    "reason": update.reason,
                }
            }
        },
    )
    return result.matched_count > 0
