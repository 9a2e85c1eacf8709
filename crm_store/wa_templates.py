"""The ``wa_templates`` collection: Meta's latest verdict on each WhatsApp message
template, per account, name and language, from ``message_template_status_update``
webhooks (channels/whatsapp.py reads them into :class:`~channels.base.TemplateStatus`).

Document: ``_id`` = ``whatsapp:<account>:<name>:<language or *>``; ``channel``,
``account``, ``name``, ``language``, ``status`` (approved, rejected, paused, disabled,
pending, flagged …, Meta's event in lower case), ``reason``, ``template_id``, ``at``
(when Meta says it happened; the update's receipt time if it does not say),
``updated_at``. An update older than the stored one changes nothing (Meta does not
promise order); a repeat changes nothing either.

A template with no stored verdict is taken as approved: the configuration names
templates approved in WhatsApp Manager, and not every app subscribes to the status
field. One whose newest verdict is anything but approved is refused before it is sent
(:func:`refusal`).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from channels.base import TemplateRef, TemplateStatus
from crm_store.store import Collection, Document, Store

COLLECTION = "wa_templates"
APPROVED = "approved"
ANY_LANGUAGE = "*"


def collection(store: Store) -> Collection:
    return store[COLLECTION]


def doc_id(channel: str, account: str, name: str, language: str | None) -> str:
    return f"{channel}:{account}:{name}:{language or ANY_LANGUAGE}"


async def apply(store: Store, verdict: TemplateStatus) -> None:
    """Keep ``verdict`` unless a newer one is stored (idempotent, order-independent)."""
    now = datetime.now(UTC)
    at = verdict.at or now
    _id = doc_id(verdict.channel, verdict.account, verdict.name, verdict.language)
    fields: Document = {
        "channel": verdict.channel,
        "account": verdict.account,
        "name": verdict.name,
        "language": verdict.language,
        "status": verdict.status,
        "reason": verdict.reason,
        "template_id": verdict.template_id,
        "at": at,
        "updated_at": now,
    }
    # A newer verdict is stored: the upsert's insert collides, this one is history.
    with contextlib.suppress(DuplicateKeyError):
        await collection(store).update_one(
            {"_id": _id, "$or": [{"at": {"$lte": at}}, {"at": {"$exists": False}}]},
            {"$set": fields},
            upsert=True,
        )


async def verdicts(store: Store, channel: str, account: str) -> dict[tuple[str, str], Document]:
    """The newest verdict of every template of the account, by (name, language);
    language ``*``: an update that named no language."""
    out: dict[tuple[str, str], Document] = {}
    async for doc in collection(store).find({"channel": channel, "account": account}):
        out[(str(doc.get("name")), str(doc.get("language") or ANY_LANGUAGE))] = doc
    return out


def verdict_of(found: dict[tuple[str, str], Document], name: str, language: str) -> Document | None:
    """The newer of the verdicts for (name, language) and for (name, any language)."""
    exact, loose = found.get((name, language)), found.get((name, ANY_LANGUAGE))
    if exact is None or loose is None:
        return exact or loose
    return exact if exact["at"] >= loose["at"] else loose


async def refusal(store: Store, channel: str, account: str, ref: TemplateRef) -> str | None:
    """Why the template may not be sent now (its newest verdict is not approved), or
    None."""
    found = {
        (str(d.get("name")), str(d.get("language") or ANY_LANGUAGE)): d
        async for d in collection(store).find(
            {"channel": channel, "account": account, "name": ref.name}
        )
    }
    verdict = verdict_of(found, ref.name, ref.language)
    if verdict is None or verdict.get("status") == APPROVED:
        return None
    reason = verdict.get("reason")
    why = f" ({reason})" if reason and str(reason).upper() != "NONE" else ""
    return (
        f"template {ref.name!r} ({ref.language}) is {verdict.get('status')} by Meta{why}: "
        "only an approved template can be sent"
    )
