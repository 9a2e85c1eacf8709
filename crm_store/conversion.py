"""Converting a lead into a deal: the qualified request becomes an order.

The deal's id derives from the lead's, so converting twice answers the same deal. The
lead is closed as ``converted`` (``converted_to`` names the deal), its open-lead guard is
released, and its conversations move to the deal; ``deal.created`` and ``lead.converted``
are announced. A later message from the contact finds the deal (routing rule 2).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from config.models import Pipeline
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Document, Store


async def convert(
    store: Store, lead: Document, pipeline: Pipeline, stage_id: str, title: str | None, by: str
) -> Document:
    """The deal of ``lead`` (created now, or by an earlier conversion)."""
    at = datetime.now(UTC)
    deal_id = stable_id("deal", "converted", lead["_id"])
    doc: Document = {
        "_id": deal_id,
        "contact_id": lead["contact_id"],
        "pipeline_id": pipeline.id,
        "stage_id": stage_id,
        "open": True,
        "is_repeat": bool(lead.get("is_repeat")),
        "source_id": lead.get("source_id"),
        "responsible_id": lead.get("responsible_id"),
        "title": title or lead.get("title"),
        "fields": dict(lead.get("fields") or {}),
        "converted_from": lead["_id"],
        "created_at": at,
        "stage_entered_at": at,
        "last_activity_at": at,
    }
    try:
        await store.deals.insert_one(doc)
    except DuplicateKeyError:
        existing = await store.deals.find_one({"_id": deal_id})
        assert existing is not None
        doc = existing
    await store.leads.update_one(
        {"_id": lead["_id"]},
        {
            "$set": {
                "open": False,
                "outcome": "converted",
                "converted_to": deal_id,
                "closed_at": lead.get("closed_at") or at,
                "updated_at": at,
            },
            "$unset": {"open_contact": ""},
        },
    )
    await store.conversations.update_many(
        {"target.id": lead["_id"]},
        {"$set": {"target": {"kind": "deal", "id": deal_id, "open": True}}},
    )
    refs: dict[str, str | None] = {
        "contact_id": lead["contact_id"],
        "lead_id": lead["_id"],
        "deal_id": deal_id,
    }
    created = {
        "pipeline_id": doc["pipeline_id"],
        "stage_id": doc["stage_id"],
        "source_id": doc.get("source_id"),
        "responsible_id": doc.get("responsible_id"),
        "is_repeat": bool(doc.get("is_repeat")),
    }
    converted = {
        "deal_id": deal_id,
        "pipeline_id": doc["pipeline_id"],
        "stage_id": doc["stage_id"],
        "by": by,
    }
    await append(
        store,
        [
            event("deal.created", refs, created, key=["converted", lead["_id"]], at=at),
            event("lead.converted", refs, converted, key=[lead["_id"]], at=at),
        ],
        maybe_written=True,
    )
    return doc
