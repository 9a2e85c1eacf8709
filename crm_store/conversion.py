"""Converting a lead into a deal: the qualified request becomes an order.

The deal's id derives from the lead's, so converting twice answers the same deal. The
lead is closed as ``converted`` (``converted_to`` names the deal), its open-lead guard is
released, and its conversations move to the deal; ``deal.created`` and ``lead.converted``
are announced. A later message from the contact finds the deal (routing rule 2).

Converted is a terminal state: the lead leaves its open stage for the first ``won`` stage of
its pipeline (the example's ``qualified``; without a won stage it keeps its stage, closed),
and its live timers are cancelled — an "untouched for 2 hours in New" alert never fires for
a converted lead, and the automation engine refuses any timer of one that is still
claimed (automation/evaluate.plan_timer). No ``lead.stage_changed`` is announced: the
conversion is not a stage move, so the robots of the won stage do not run (they would open
a second deal); ``lead.converted`` says what happened.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from config.models import Pipeline, StageOutcome
from crm_store import timers
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Document, Store


def closing_stage(lead_pipeline: Pipeline | None) -> str | None:
    """The stage a converted lead ends in: its pipeline's first won stage, if any."""
    if lead_pipeline is None:
        return None
    return next((s.id for s in lead_pipeline.stages if s.outcome is StageOutcome.WON), None)


async def convert(
    store: Store,
    lead: Document,
    pipeline: Pipeline,
    stage_id: str,
    title: str | None,
    by: str,
    *,
    lead_pipeline: Pipeline | None = None,
    at: datetime | None = None,
    company_id: str | None = None,
) -> Document:
    """The deal of ``lead`` (created now, or by an earlier conversion) in ``pipeline`` at
    ``stage_id``; ``lead_pipeline`` is the lead's own (where it closes). ``company_id``
    (crm_store/companies.py): the deal and the lead are the company's, and the contact
    joins it unless it is already another company's."""
    at = at or datetime.now(UTC)
    company_id = company_id or lead.get("company_id")
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
        **({"company_id": company_id} if company_id else {}),
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
    closed: Document = {
        "open": False,
        "outcome": "converted",
        "converted_to": deal_id,
        "closed_at": lead.get("closed_at") or at,
        "updated_at": at,
    }
    if company_id:
        closed["company_id"] = company_id
        await store.contacts.update_one(
            {"_id": lead["contact_id"], "company_id": None},
            {"$set": {"company_id": company_id, "updated_at": at}},
        )
    final = closing_stage(lead_pipeline)
    if final is not None and lead.get("stage_id") != final and lead.get("open", True):
        closed |= {
            "stage_id": final,
            "stage_entered_at": at,
            "converted_from_stage": lead.get("stage_id"),
        }
    await store.leads.update_one(
        {"_id": lead["_id"]}, {"$set": closed, "$unset": {"open_contact": ""}}
    )
    await timers.cancel_entity(store, lead["_id"], "the lead was converted into a deal", at)
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
