"""Read-only views for people: ``omniroute explain`` and ``omniroute inspect``."""

from __future__ import annotations

from dataclasses import dataclass, field

from pymongo import ASCENDING, DESCENDING

from crm_store.store import Document, Store


@dataclass(slots=True)
class ContactReport:
    contact: Document
    leads: list[Document] = field(default_factory=list)
    deals: list[Document] = field(default_factory=list)
    conversations: list[Document] = field(default_factory=list)
    # The latest inbound messages, each with its routing decision.
    messages: list[Document] = field(default_factory=list)


async def find_message(store: Store, message_id: str) -> tuple[Document | None, Document | None]:
    """The stored message — inbound (routed), an operator's reply (``direction: out``) or
    an internal note (``direction: note``) — and its intake record (only inbound messages
    have one; either may be missing)."""
    msg = await store.messages.find_one({"_id": message_id})
    rec = await store.intake.find_one({"_id": message_id}, {"raw": 0})
    return msg, rec


async def find_contact(
    store: Store, *, identity: str | None = None, contact_id: str | None = None
) -> Document | None:
    if contact_id:
        return await store.contacts.find_one({"_id": contact_id})
    if identity:
        return await store.contacts.find_one({"identities": identity})
    return None


async def contact_report(store: Store, contact: Document, messages: int = 20) -> ContactReport:
    cid = contact["_id"]
    report = ContactReport(contact)
    report.leads = [
        d async for d in store.leads.find({"contact_id": cid}, sort=[("created_at", ASCENDING)])
    ]
    report.deals = [
        d async for d in store.deals.find({"contact_id": cid}, sort=[("created_at", ASCENDING)])
    ]
    report.conversations = [d async for d in store.conversations.find({"contact_id": cid})]
    # Routing decisions: inbound messages only (operators' notes and replies were never
    # routed).
    report.messages = [
        d
        async for d in store.messages.find(
            {"contact_id": cid, "direction": "in"},
            {"text": 0, "attachments": 0},
            sort=[("received_at", DESCENDING)],
            limit=messages,
        )
    ]
    report.messages.reverse()
    return report
