"""The ``document`` action: fill a DOCX template for the entity's deal (docs/documents.md).

``do: - document: {template: contract}`` generates a document of that type for the deal
the rule runs on (automation/paperwork/make.py). The planned action's key is the
generation's idempotency key: a re-run after a crash finds the same record and the same
number, never a second document.
"""

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
    from automation.actions import ActionError, RetryLater
    from automation.paperwork.make import generate
    from crm_store.paperwork import PaperworkError

    if snap.kind != "deal":
        raise ActionError("not_a_deal", f"a document needs a deal, not a {snap.kind}")
    try:
        await generate(
            ex.store,
            ex.config,
            snap.id,
            spec.template,
            key=p.key,
            by=ex.by(p),
            now=ex.clock.now(),
        )
    except PaperworkError as exc:
        if exc.code == "conflict":
            raise RetryLater(str(exc)) from None
        raise ActionError(exc.code, str(exc)) from None
