"""Reading unparsed deliveries again (``omniroute intake reparse``), and listing intake.

An ``unparsed`` intake record keeps what ``channel.read`` needs: the redacted raw body,
the method, the query and the content type. :func:`reparse` rebuilds the request, reads
it with today's channel module and stores what it yields through the webhook's own
write path (ingest/accept.py), so ids, duplicates, calls, edits and receipts behave
exactly as for a live delivery.

Routing: the new intake records are written with an already expired lease, owned by
``reparse:<host>:<pid>``; the recovery sweep of any running service process claims and
routes them within its ``recovery_interval_s`` (no router runs in the command). With no
service running they wait, pending, until one starts.

Idempotent: a record that reads is marked ``reparsed`` with the ids it produced (and
its raw body's retention starts); one that still does not read keeps ``unparsed`` with
the new error. A second run finds nothing new to read and writes nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from channels import REGISTRY
from channels.base import WebhookRequest
from config.models import AppConfig
from crm_store.documents import IntakeStatus
from crm_store.store import Document, Store
from ingest.accept import IntakeWriter, describe, store_parsed, unreadable_error
from ingest.redact import account_secrets, redact_text


@dataclass(slots=True)
class ReparseReport:
    reparsed: dict[str, list[str]] = field(default_factory=dict)  # record id → intake ids
    still_unparsed: dict[str, str] = field(default_factory=dict)  # record id → error
    skipped: dict[str, str] = field(default_factory=dict)  # record id → why


def selection(
    status: str | None = None, channel: str | None = None, since: datetime | None = None
) -> Document:
    query: Document = {}
    if status:
        query["status"] = status
    if channel:
        query["channel"] = channel
    if since is not None:
        query["received_at"] = {"$gte": since}
    return query


async def listed(store: Store, query: Document, limit: int) -> AsyncIterator[Document]:
    """Intake records matching ``query``, newest first, without their raw bodies."""
    cursor = store.intake.find(
        query, {"raw": 0, "message.text": 0}, sort=[("received_at", -1)], limit=limit
    )
    async for doc in cursor:
        yield doc


def request_of(record: Document) -> WebhookRequest:
    """The request an unparsed record keeps, as ``channel.read`` sees it."""
    meta: dict[str, Any] = record.get("request") or {}
    headers: CIMultiDict[str] = CIMultiDict()
    if meta.get("content_type"):
        headers["Content-Type"] = str(meta["content_type"])
    query = {str(k): str(v) for k, v in (meta.get("query") or {}).items()}
    return WebhookRequest(
        str(meta.get("method") or "POST"),
        CIMultiDictProxy(headers),
        query,
        bytes(record.get("raw") or b""),
        None,
    )


def reparse_owner() -> str:
    return f"reparse:{socket.gethostname()}:{os.getpid()}"


async def reparse(
    store: Store,
    config: AppConfig,
    channel: str | None = None,
    since: datetime | None = None,
) -> ReparseReport:
    """Read every ``unparsed`` record (of ``channel``, received since ``since``) again."""
    report = ReparseReport()
    # lease_s=0: the records are due for any service's recovery sweep at once.
    writer = IntakeWriter(store, reparse_owner(), 0.0, service_pipelines=config.service_pipelines())
    query = selection(IntakeStatus.UNPARSED.value, channel, since)
    records = [d async for d in store.intake.find(query, sort=[("received_at", 1)])]
    for record in records:
        rid = str(record["_id"])
        module = REGISTRY.get(str(record.get("channel")))
        account = config.account(str(record.get("channel")), str(record.get("account")))
        if module is None or account is None:
            report.skipped[rid] = "the channel account is no longer configured"
            continue
        try:
            parsed = module.read(account, request_of(record))
        except Exception as exc:  # still unreadable: keep it, with today's error
            error = redact_text(describe(exc), account_secrets(account))
            await _still_unparsed(store, rid, error)
            report.still_unparsed[rid] = error
            continue
        accepted = await store_parsed(writer, account.source, parsed, bytes(record["raw"]))
        produced = [d.id for d in accepted.new] + accepted.duplicates
        if parsed.unreadable:
            error = redact_text(unreadable_error(parsed), account_secrets(account))
            await _still_unparsed(store, rid, error, produced)
            report.still_unparsed[rid] = error
            continue
        at = datetime.now(UTC)
        await store.intake.update_one(
            {"_id": rid, "status": IntakeStatus.UNPARSED.value},
            {
                "$set": {
                    "status": IntakeStatus.REPARSED.value,
                    "produced": produced,
                    "reparsed_at": at,
                    "raw_since": at,
                }
            },
        )
        report.reparsed[rid] = produced
    return report


async def _still_unparsed(
    store: Store, rid: str, error: str, produced: list[str] | None = None
) -> None:
    """Keep the record unparsed with today's error (unchanged when it is the same)."""
    update: Document = {"error": error}
    if produced:
        update["produced"] = produced
    await store.intake.update_one(
        {"_id": rid, "status": IntakeStatus.UNPARSED.value}, {"$set": update}
    )
