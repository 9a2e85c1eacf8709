"""The documents of deals (``deal_documents``): the registry behind docs/documents.md.

One record per generated document version::

    {_id, key, deal_id, contact_id, company_id, type, title, number, year, date,
     template_version, version, status, file_id, pdf_file_id, signed_file_id,
     created_by, created_at, updated_at, history: [{status, at, by, file_id?}]}

- **Idempotent under retries.** A generation is named by an idempotency key (the API's
  request, automation's planned action key); the record's ``_id`` is derived from it and
  is inserted *before* rendering (status ``pending``), so a retry finds it and finishes
  it instead of numbering a second document.
- **Numbers.** The first version of a (deal, type) takes the next value of the counter
  ``doc:<type>:<year>`` (``counters``, ``$inc`` with ``ReturnDocument.AFTER``) formatted
  by the template's ``number_format`` — taken by the request whose insert created the
  record, after the insert, so a retry racing it waits for that number instead of taking
  another; later versions keep version 1's number. Two different requests racing for the
  same (deal, type) collide on the unique (deal, type, version) index: the loser takes the
  next version. A gap appears only when a request dies between taking a number and
  writing it, and a later one numbers the record again.
- **Statuses** move forward only: pending → generated → sent → signed. A signed scan
  attaches to the same record (``signed_file_id``); uploading another replaces the scan
  and is kept in ``history``.
- **Events**: ``document.generated``, ``document.sent``, ``document.signed`` (refs: the
  deal and contact), with ids derived from (record, status): announcing again is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from automation.paperwork.numbering import counter_id, format_number, reaches
from config.models import DocumentTemplate, RequiredDocument
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.routing_store import next_turn
from crm_store.store import Collection, Document, Store

COLLECTION = "deal_documents"
PENDING = "pending"
GENERATED = "generated"
SENT = "sent"
SIGNED = "signed"
VERSION_ATTEMPTS = 8
# A request that finds a record another request is numbering waits this long for it.
NUMBER_WAITS = 50
NUMBER_WAIT_S = 0.1


class PaperworkError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def coll(store: Store) -> Collection:
    return store[COLLECTION]


def record_id(key: str) -> str:
    return stable_id("deal_document", key)


def _event(kind: str, doc: Document, by: str | None, at: datetime) -> Document:
    return event(
        f"document.{kind}",
        {"deal_id": doc.get("deal_id"), "contact_id": doc.get("contact_id")},
        {
            "document_id": doc["_id"],
            "type": doc.get("type"),
            "number": doc.get("number"),
            "version": doc.get("version"),
            "status": kind,
            "by": by,
        },
        key=[doc["_id"], kind],
        at=at,
    )


async def reserve(
    store: Store,
    *,
    key: str,
    deal: Document,
    company_id: str | None,
    template: DocumentTemplate,
    by: str | None,
    now: datetime,
) -> Document:
    """The record of generation ``key``: found (a retry), or inserted pending with its
    version, then numbered (module doc)."""
    rid = record_id(key)
    found = await coll(store).find_one({"_id": rid})
    if found is not None:
        return await _numbered(store, found, template, mine=False)
    for _ in range(VERSION_ATTEMPTS):
        prior = await coll(store).find_one(
            {"deal_id": deal["_id"], "type": template.type}, sort=[("version", DESCENDING)]
        )
        version = int(prior["version"]) + 1 if prior is not None else 1
        doc: Document = {
            "_id": rid,
            "key": key,
            "deal_id": deal["_id"],
            "contact_id": deal.get("contact_id"),
            "company_id": company_id,
            "type": template.type,
            "title": template.title,
            "number": (prior or {}).get("number"),
            "year": (prior or {}).get("year") or now.year,
            "date": now,
            "template_version": template.version,
            "version": version,
            "status": PENDING,
            "file_id": None,
            "pdf_file_id": None,
            "signed_file_id": None,
            "created_by": by,
            "created_at": now,
            "updated_at": now,
            "history": [],
        }
        try:
            await coll(store).insert_one(doc)
        except DuplicateKeyError:
            found = await coll(store).find_one({"_id": rid})
            if found is not None:  # the same request, retried at the same time
                return await _numbered(store, found, template, mine=False)
            continue  # another request took this version of (deal, type): the next one
        return await _numbered(store, doc, template, mine=True)
    raise PaperworkError("conflict", "too many concurrent versions of this document; retry")


async def _numbered(
    store: Store, doc: Document, template: DocumentTemplate, *, mine: bool
) -> Document:
    """``doc`` with its number. Version 1 takes the counter's next value — by the request
    that inserted it (``mine``), so a retry racing it wastes no number; a record left
    unnumbered (its request died) is numbered by whoever finds it after a grace period.
    Later versions copy version 1's number."""
    for attempt in range(NUMBER_WAITS + 1):
        if doc.get("number") is not None:
            return doc
        if int(doc["version"]) > 1:
            first = await coll(store).find_one(
                {"deal_id": doc["deal_id"], "type": doc["type"], "version": 1}
            )
            if first is not None and first.get("number") is not None:
                await coll(store).update_one(
                    {"_id": doc["_id"], "number": None},
                    {"$set": {"number": first["number"], "year": first["year"]}},
                )
        elif mine or attempt == NUMBER_WAITS:
            n = await next_turn(store, counter_id(template.type, int(doc["year"])))
            number = format_number(template.number_format, int(doc["year"]), n)
            await coll(store).update_one(
                {"_id": doc["_id"], "number": None}, {"$set": {"number": number}}
            )
        else:
            await asyncio.sleep(NUMBER_WAIT_S)
        fresh = await coll(store).find_one({"_id": doc["_id"]})
        assert fresh is not None
        doc = fresh
        if int(doc["version"]) > 1 and doc.get("number") is None:
            await asyncio.sleep(NUMBER_WAIT_S)
    if doc.get("number") is None:
        raise PaperworkError("conflict", "the document's first version has no number yet")
    return doc


async def finish(
    store: Store,
    doc: Document,
    *,
    file_id: str,
    pdf_file_id: str | None,
    by: str | None,
    now: datetime,
) -> Document:
    """pending → generated with its files, announced (again, harmlessly, on a retry)."""
    await coll(store).update_one(
        {"_id": doc["_id"], "status": PENDING},
        {
            "$set": {
                "status": GENERATED,
                "file_id": file_id,
                "pdf_file_id": pdf_file_id,
                "updated_at": now,
            },
            "$push": {"history": {"status": GENERATED, "at": now, "by": by}},
        },
    )
    fresh = await coll(store).find_one({"_id": doc["_id"]})
    assert fresh is not None
    await append(store, [_event(GENERATED, fresh, by, now)], maybe_written=True)
    return fresh


async def mark_sent(
    store: Store, doc: Document, *, by: str | None, now: datetime, via: str | None = None
) -> Document:
    """generated → sent (a sent or signed document stays as it is)."""
    if doc.get("status") == PENDING:
        raise PaperworkError("not_generated", "the document is still being generated")
    result = await coll(store).update_one(
        {"_id": doc["_id"], "status": GENERATED},
        {
            "$set": {"status": SENT, "sent_at": now, "updated_at": now},
            "$push": {"history": {"status": SENT, "at": now, "by": by, "via": via}},
        },
    )
    fresh = await coll(store).find_one({"_id": doc["_id"]})
    assert fresh is not None
    if result.modified_count:
        await append(store, [_event(SENT, fresh, by, now)], maybe_written=True)
    return fresh


async def attach_signed(
    store: Store, doc: Document, *, file_id: str, by: str | None, now: datetime
) -> tuple[Document, bool]:
    """Attach the signed scan; generated/sent → signed. Returns the record and whether it
    became signed now (a second scan replaces the first, kept in history)."""
    if doc.get("status") == PENDING:
        raise PaperworkError("not_generated", "the document is still being generated")
    entry = {"status": SIGNED, "at": now, "by": by, "file_id": file_id}
    result = await coll(store).update_one(
        {"_id": doc["_id"], "status": {"$in": [GENERATED, SENT]}},
        {
            "$set": {
                "status": SIGNED,
                "signed_file_id": file_id,
                "signed_at": now,
                "updated_at": now,
            },
            "$push": {"history": entry},
        },
    )
    became = result.modified_count == 1
    if not became:
        await coll(store).update_one(
            {"_id": doc["_id"], "status": SIGNED},
            {
                "$set": {"signed_file_id": file_id, "updated_at": now},
                "$push": {"history": {**entry, "replaced": True}},
            },
        )
    fresh = await coll(store).find_one({"_id": doc["_id"]})
    assert fresh is not None
    if became:
        await append(store, [_event(SIGNED, fresh, by, now)], maybe_written=True)
    return fresh, became


async def of_deal(store: Store, deal_id: str, types: Sequence[str]) -> list[Document]:
    """The deal's finished documents of ``types`` (what a stage guard looks at)."""
    query: dict[str, Any] = {"deal_id": deal_id, "status": {"$ne": PENDING}}
    if types:
        query["type"] = {"$in": list(types)}
    return [d async for d in coll(store).find(query, {"type": 1, "status": 1, "version": 1})]


def missing(required: Sequence[RequiredDocument], docs: Sequence[Document]) -> list[str]:
    """What each unmet requirement says (pure): "a signed acceptance_act document"."""
    out = []
    for req in required:
        if not any(
            d.get("type") == req.type and reaches(str(d.get("status")), req.status) for d in docs
        ):
            out.append(f"a {req.status} {req.type} document is required")
    return out
