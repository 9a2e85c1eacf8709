"""Reports for heads of sales (docs/reports.md): one module per family, each an
``async def name(ctx: Ctx) -> Report``; :data:`REPORTS` names them for the API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from crm_store.reports.common import Ctx, Report
from crm_store.reports.funnel import funnel
from crm_store.reports.overdue import overdue
from crm_store.reports.responsiveness import responsiveness
from crm_store.reports.survey import survey
from crm_store.reports.volume import volume

REPORTS: dict[str, Callable[[Ctx], Awaitable[Report]]] = {
    "volume": volume,
    "responsiveness": responsiveness,
    "overdue": overdue,
    "funnel": funnel,
    "survey": survey,
}
