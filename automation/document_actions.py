"""The ``document`` action: fill a DOCX template for the entity's deal (docs/documents.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from automation.rules_base import Ident, Strict

if TYPE_CHECKING:
    from automation.actions import Executor
    from automation.conditions import Snapshot
    from automation.evaluate import Planned


class MakeDocument(Strict):
    # A template of config/templates/ (its document type).
    template: Ident
    title: str | None = Field(default=None, max_length=500)


async def make_document(ex: Executor, p: Planned, spec: MakeDocument, snap: Snapshot) -> None:
    from automation.actions import ActionError

    raise ActionError("not_available", "documents are not built yet")
