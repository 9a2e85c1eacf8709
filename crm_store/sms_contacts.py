"""SMS opt-out on the contact (docs/channels/sms.md#opt-out).

A contact with ``sms_opt_out`` set is never texted: the ``send_sms`` action refuses at
once, and the outbox fails any SMS still queued for it (``error_code: sms_opted_out``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ReturnDocument

from crm_store.documents import conversation_id
from crm_store.store import Document, Store


async def opt_out_reason(store: Store, contact_id: str | None) -> str | None:
    """Why the contact must not be texted, or None."""
    if not contact_id:
        return None
    doc = await store.contacts.find_one({"_id": contact_id}, {"sms_opt_out": 1})
    flag: Document | None = (doc or {}).get("sms_opt_out")
    if not flag:
        return None
    return str(flag.get("reason") or "the customer asked not to be texted")


async def set_opt_out(
    store: Store,
    contact_id: str,
    opted_out: bool,
    *,
    reason: str | None = None,
    by: str | None = None,
) -> bool:
    """Flag (or clear) the contact's SMS opt-out; False if there is no such contact."""
    change: Document = (
        {"$set": {"sms_opt_out": {"at": datetime.now(UTC), "reason": reason, "by": by}}}
        if opted_out
        else {"$unset": {"sms_opt_out": ""}}
    )
    result = await store.contacts.update_one({"_id": contact_id}, change)
    return result.matched_count > 0


async def sms_conversation(
    store: Store,
    account: str,
    contact_id: str,
    phone: str,
    target: Document | None = None,
) -> Document:
    """The contact's conversation on SMS account ``account`` to ``phone`` (E.164),
    created if missing (closed: nothing for an operator to answer; our SMS are in it).
    Keyed by account and phone, so every SMS to one number shares it."""
    thread = f"phone:{phone}"
    conv_id = conversation_id("sms", account, thread)
    now = datetime.now(UTC)
    on_insert: Document = {
        "channel": "sms",
        "account": account,
        "thread": thread,
        "status": "closed",
        "created_at": now,
        "contact_id": contact_id,
        "reply_to": phone,
        "sender_keys": [thread],
        "target": target or {"kind": "none"},
        "message_count": 0,
        "unread": 0,
    }
    doc = await store.conversations.find_one_and_update(
        {"_id": conv_id},
        {"$setOnInsert": on_insert},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert doc is not None
    return doc
