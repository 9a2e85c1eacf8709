"""Generating a document of a deal, end to end: what the operator API and the automation
action both call (docs/documents.md).

reserve the record (numbered, idempotent by key) → fill the template (in a thread: python-
docx is CPU work) → store the DOCX (and the PDF where LibreOffice is installed) under ids
derived from the record → mark it generated and announce it. A retry with the same key
resumes wherever the first attempt stopped and never numbers a second document.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from automation.paperwork import render
from config.models import AppConfig
from crm_store import files, paperwork
from crm_store.documents import stable_id
from crm_store.paperwork import PaperworkError
from crm_store.store import Document, Store

log = structlog.get_logger("omniroute.paperwork")

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PDF_MIME = "application/pdf"
MAX_FILE_BYTES = 50 * 1024 * 1024


def file_name(doc: Document, ext: str) -> str:
    return f"{doc.get('title') or doc.get('type')} {doc.get('number')} v{doc.get('version')}.{ext}"


async def company_of(store: Store, deal: Document, contact: Document | None) -> Document | None:
    """The deal's company (``deal.company_id``, else the contact's), if stored."""
    company_id = deal.get("company_id") or (contact or {}).get("company_id")
    if not isinstance(company_id, str):
        return None
    found: Document | None = await store["companies"].find_one({"_id": company_id})
    return found


async def generate(
    store: Store,
    config: AppConfig,
    deal_id: str,
    doc_type: str,
    *,
    key: str,
    by: str | None,
    now: datetime,
    pdf: bool = True,
) -> Document:
    """The generated record of request ``key`` (made now, or found from an earlier try).

    Raises :class:`PaperworkError`: ``unknown_type``, ``not_found`` (no such deal),
    ``render_failed`` (the template cannot be filled; the record stays pending and a retry
    tries again), ``conflict``."""
    template = config.templates.get(doc_type)
    if template is None:
        raise PaperworkError("unknown_type", f"no document template {doc_type!r}")
    deal = await store.deals.find_one({"_id": deal_id})
    if deal is None or deal.get("deleted"):
        raise PaperworkError("not_found", f"no deal {deal_id}")
    contact = (
        await store.contacts.find_one({"_id": deal.get("contact_id")})
        if deal.get("contact_id")
        else None
    )
    company = await company_of(store, deal, contact)
    rec = await paperwork.reserve(
        store,
        key=key,
        deal=deal,
        company_id=company["_id"] if company else None,
        template=template,
        by=by,
        now=now,
    )
    if rec["status"] != paperwork.PENDING:
        return rec
    ctx = render.context(
        config,
        template,
        deal=deal,
        contact=contact,
        company=company,
        number=rec["number"],
        date=rec["date"],
        version=rec["version"],
    )
    try:
        data = await asyncio.to_thread(
            render.render_docx, render.template_path(config, template), ctx
        )
    except render.RenderError as exc:
        log.warning("paperwork.render_failed", type=doc_type, deal=deal_id, error=str(exc))
        raise PaperworkError("render_failed", str(exc)) from None
    origin: Document = {"document_id": rec["_id"], "deal_id": deal_id}
    docx = await files.put(
        store,
        stable_id("document_file", rec["_id"], "docx"),
        data,
        name=file_name(rec, "docx"),
        mime_type=DOCX_MIME,
        origin=origin,
        max_bytes=MAX_FILE_BYTES,
    )
    pdf_id = None
    if pdf and render.soffice() is not None:
        converted = await render.to_pdf(data)
        if converted is not None:
            stored = await files.put(
                store,
                stable_id("document_file", rec["_id"], "pdf"),
                converted,
                name=file_name(rec, "pdf"),
                mime_type=PDF_MIME,
                origin=origin,
                max_bytes=MAX_FILE_BYTES,
            )
            pdf_id = stored.id
    done = await paperwork.finish(store, rec, file_id=docx.id, pdf_file_id=pdf_id, by=by, now=now)
    log.info(
        "paperwork.generated",
        document=done["_id"],
        type=doc_type,
        number=done["number"],
        version=done["version"],
        pdf=pdf_id is not None,
    )
    return done


async def sign(
    store: Store,
    config: AppConfig,
    doc: Document,
    file_id: str,
    *,
    by: str | None,
    now: datetime,
) -> Document:
    """Attach the signed scan ``file_id``; the first time, also set the template's
    ``signed_field`` on the deal (what stage conditions and rules test)."""
    fresh, became = await paperwork.attach_signed(store, doc, file_id=file_id, by=by, now=now)
    template = config.templates.get(str(doc.get("type")))
    if became and template is not None and template.signed_field:
        from crm_store import entities

        try:
            await entities.set_fields(
                store,
                "deal",
                str(doc["deal_id"]),
                {template.signed_field: True},
                by=by,
                at=now,
                key=stable_id("document_signed", doc["_id"]),
            )
        except entities.EntityError:
            log.warning("paperwork.signed_deal_gone", document=doc["_id"])
    return fresh
