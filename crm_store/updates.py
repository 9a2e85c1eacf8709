"""Write paths for what providers report besides new messages: edits, delivery
receipts, reachability. Each is one conditional single-document update."""

from __future__ import annotations

from datetime import UTC, datetime

from channels.base import STATE_RANK, MessageEdit, Reachability, StatusUpdate
from crm_store.documents import intake_id
from crm_store.events import append, event
from crm_store.store import Store


async def apply_edit(store: Store, edit: MessageEdit) -> bool:
    """Replace the text of a stored inbound message (and of its intake record, in case it
    is not routed yet); the previous text goes to ``edits``. False if we never had it."""
    mid = intake_id(edit.channel, edit.account, edit.provider_id)
    at = edit.edited_at or datetime.now(UTC)
    attachments = [a.model_dump(exclude_none=True) for a in edit.attachments]
    # Intake first: a record still waiting for routing then carries the edited text.
    found = await store.intake.update_one(
        {"_id": mid},
        {"$set": {"message.text": edit.text, "message.attachments": attachments, "edited_at": at}},
    )
    msg = await store.messages.find_one({"_id": mid}, {"text": 1})
    if msg is not None and msg.get("text", "") != edit.text:  # a re-delivered edit: no-op
        await store.messages.update_one(
            {"_id": mid, "text": msg.get("text", "")},
            {
                "$set": {"text": edit.text, "attachments": attachments, "edited_at": at},
                "$push": {"edits": {"text": msg.get("text", ""), "replaced_at": at}},
            },
        )
    return found.matched_count > 0 or msg is not None


async def apply_status(store: Store, status: StatusUpdate) -> bool:
    """Move an outbound message's delivery state forward; never backwards."""
    rank = STATE_RANK[status.state]
    at = status.at or datetime.now(UTC)
    result = await store.messages.update_one(
        {
            "channel": status.channel,
            "account": status.account,
            "provider_id": status.provider_id,
            "direction": "out",
            "state_rank": {"$lt": rank},
        },
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
            {
                "channel": status.channel,
                "account": status.account,
                "provider_id": status.provider_id,
                "direction": "out",
            },
            {"conversation_id": 1, "contact_id": 1},
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
