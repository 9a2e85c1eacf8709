"""Filling a DOCX template (docxtpl: python-docx + Jinja2), and PDF through LibreOffice.

:func:`context` builds what a template sees from the stored deal, its contact, its
company, the responsible user and the document's number and date (pure);
:func:`render_docx` fills the file in a sandboxed Jinja environment with the Russian
filters of :mod:`automation.paperwork.ru_format` (autoescaped: a customer's "&" or "<"
stays text); :func:`to_pdf` runs ``soffice --headless --convert-to pdf`` when it is
installed (None otherwise). Placeholders: docs/documents.md.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import structlog
from docxtpl import DocxTemplate
from jinja2.sandbox import SandboxedEnvironment

from automation.paperwork import ru_format
from config.models import AppConfig, DocumentTemplate

log = structlog.get_logger("omniroute.paperwork")

MAX_ITEMS = 500
PDF_TIMEOUT_S = 120.0


class RenderError(Exception):
    """The template cannot be filled (a broken file, a Jinja error)."""


def _dec(value: object) -> Decimal:
    """A number of an item; 0 for anything else (text, a bool, 10^15 or more)."""
    try:
        return ru_format.to_decimal(value)
    except ru_format.FormatError:
        return Decimal(0)


def _first(values: object) -> str:
    return str(values[0]) if isinstance(values, list) and values else ""


def line_items(raw: object) -> tuple[list[dict[str, Any]], Decimal]:
    """The deal's ``items`` ({name, quantity, unit, price}) numbered, each with its sum,
    and the total. Anything that is not an item is skipped; a missing quantity is 1."""
    out: list[dict[str, Any]] = []
    total = Decimal(0)
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or len(out) >= MAX_ITEMS:
            continue
        qty = _dec(item.get("quantity", 1))
        price = _dec(item.get("price", 0)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        line = _dec(qty * price).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        total += line
        out.append(
            {
                "n": len(out) + 1,
                "name": str(item.get("name") or ""),
                "quantity": qty,
                "unit": str(item.get("unit") or "шт."),
                "price": price,
                "sum": line,
            }
        )
    return out, total


def context(
    config: AppConfig,
    template: DocumentTemplate,
    *,
    deal: dict[str, Any],
    contact: dict[str, Any] | None,
    company: dict[str, Any] | None,
    number: str,
    date: datetime,
    version: int,
) -> dict[str, Any]:
    """What a template sees (docs/documents.md lists it)."""
    fields: dict[str, Any] = dict(deal.get("fields") or {})
    items, total = line_items(fields.get("items"))
    if not items and fields.get("amount") is not None:
        total = _dec(fields.get("amount"))
    user = config.user(str(deal.get("responsible_id"))) if deal.get("responsible_id") else None
    contact_view = (
        {
            "id": contact.get("_id"),
            "name": contact.get("name") or "",
            "phone": _first(contact.get("phones")),
            "email": _first(contact.get("emails")),
        }
        if contact
        else None
    )
    company_view = (
        {
            "id": company.get("_id"),
            "name": company.get("name") or "",
            "inn": company.get("inn") or "",
            "kpp": company.get("kpp") or "",
            "address": company.get("address") or "",
        }
        if company
        else None
    )
    customer = company_view or contact_view or {"name": ""}
    return {
        "number": number,
        "date": date,
        "year": date.year,
        "version": version,
        "document": {"type": template.type, "title": template.title, "version": version},
        "deal": {
            "id": deal.get("_id"),
            "title": deal.get("title") or "",
            "pipeline": deal.get("pipeline_id"),
            "stage": deal.get("stage_id"),
            "created_at": deal.get("created_at"),
        },
        "fields": fields,
        "contact": contact_view,
        "company": company_view,
        "customer": customer,
        "items": items,
        "total": total,
        "responsible": {
            "id": deal.get("responsible_id"),
            "name": user.name if user else (deal.get("responsible_id") or ""),
        },
    }


def _env() -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=True)
    env.filters.update(ru_format.FILTERS)
    return env


def template_path(config: AppConfig, template: DocumentTemplate) -> Path:
    base = Path(config.templates.dir or "templates")
    return base / template.file


def render_docx(path: Path, ctx: dict[str, Any]) -> bytes:
    """The filled DOCX's bytes."""
    try:
        tpl = DocxTemplate(str(path))
        tpl.render(ctx, jinja_env=_env(), autoescape=True)
        out = io.BytesIO()
        tpl.save(out)
    except Exception as exc:  # docxtpl raises jinja, lxml and zip errors alike
        raise RenderError(f"{path.name}: {type(exc).__name__}: {exc}") from None
    return out.getvalue()


def soffice() -> str | None:
    """The LibreOffice binary, if installed."""
    return shutil.which("soffice") or shutil.which("libreoffice")


async def to_pdf(docx: bytes) -> bytes | None:
    """The PDF of a DOCX through ``soffice --headless --convert-to pdf``; None without
    LibreOffice or when the conversion fails (logged)."""
    binary = soffice()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="omniroute-pdf-") as tmp:
        src = Path(tmp) / "document.docx"
        src.write_bytes(docx)
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"-env:UserInstallation=file://{tmp}/profile",
            "--headless",
            "--convert-to",
            "pdf",
            "--outdir",
            tmp,
            str(src),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(proc.wait(), PDF_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("paperwork.pdf_timeout")
            return None
        pdf = Path(tmp) / "document.pdf"
        if proc.returncode != 0 or not pdf.is_file():
            log.warning("paperwork.pdf_failed", returncode=proc.returncode)
            return None
        return pdf.read_bytes()
