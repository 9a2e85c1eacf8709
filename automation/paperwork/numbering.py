"""Document numbers, pure: a counter per document type per year, formatted by the type's
``number_format`` ("Д-{year}-{n:04d}" → "Д-2026-0042"). The counter itself is
``counters`` ``doc:<type>:<year>`` (crm_store/paperwork.py)."""

from __future__ import annotations

STATUSES = ("generated", "sent", "signed")


def counter_id(doc_type: str, year: int) -> str:
    return f"doc:{doc_type}:{year}"


def format_number(number_format: str, year: int, n: int) -> str:
    return number_format.format(year=year, n=n)


def status_rank(status: str) -> int:
    """generated 0 < sent 1 < signed 2 (unknown: -1)."""
    return STATUSES.index(status) if status in STATUSES else -1


def reaches(status: str, wanted: str) -> bool:
    """``status`` is ``wanted`` or later."""
    return status_rank(status) >= status_rank(wanted) >= 0
