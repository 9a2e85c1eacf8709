"""The intake write path shared by the webhook handler and ``omniroute intake reparse``.

:func:`store_parsed` makes durable everything a channel read from one delivery (intake
records, call reports, edits, receipts, reachability); :func:`keep_unparsed` keeps a
delivery the channel could not read (all of it, or some parts: ``Parsed.unreadable``)
as an ``unparsed`` intake record. Both are idempotent: intake ids are deterministic
(per provider message; per channel, account and body hash for unparsed records), so a
provider retry or a second reparse stores nothing new.

Raw bodies reach this module already redacted (ingest/redact.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels.base import Parsed
from channels.identity import identity_keys
from crm_store import calls, intake, updates, wa_templates
from crm_store.documents import IntakeDoc, IntakeStatus, intake_id, unparsed_id
from crm_store.store import Document, Store, together

# How much of an exception's text an unparsed record keeps.
ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class IntakeWriter:
    """Where and as whom intake is written. ``group`` (the service's group commit) shares
    durable writes among concurrent requests; without it each call writes alone."""

    store: Store
    owner: str
    lease_s: float
    group: intake.GroupCommit | None = None
    # Pipelines whose deals never attract a caller's call (config's purpose: service).
    service_pipelines: frozenset[str] = frozenset()

    async def accept(self, docs: list[Document]) -> intake.Accepted:
        if not docs:
            return intake.Accepted([], [])
        if self.group is not None:
            return await self.group.accept(docs)
        return await intake.accept(self.store, docs, self.owner, self.lease_s)


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What ``channel.read`` needs of a request besides its body, as an unparsed record
    keeps it: never the headers that carry secrets, never the path token."""

    method: str
    query: Mapping[str, str]
    content_type: str

    def document(self) -> Document:
        return {
            "method": self.method,
            "query": dict(self.query),
            "content_type": self.content_type,
        }


def describe(exc: BaseException) -> str:
    """An exception as an unparsed record (and the log) keeps it: class and message."""
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]


async def store_parsed(
    w: IntakeWriter,
    source: str,
    parsed: Parsed,
    raw: bytes,
    on_accepted: Callable[[Sequence[IntakeDoc]], None] | None = None,
) -> intake.Accepted:
    """Make everything the delivery reported durable; raises the driver's error if the
    store is away (nothing is acknowledged then). ``on_accepted`` gets the new intake
    records as soon as they are durable — before edits, receipts and the rest are
    applied — so that a failure of those later steps cannot leave them unrouted."""
    received = datetime.now(UTC)
    docs = [
        {
            "_id": intake_id(m.channel, m.account, m.provider_id),
            "channel": m.channel,
            "account": m.account,
            "provider_id": m.provider_id,
            "source_id": source,
            "message": m.model_dump(mode="python"),
            "raw": raw,
            "received_at": received,
        }
        for m in parsed.messages
    ]

    async def apply_calls() -> None:
        for call in parsed.calls:
            await calls.apply(w.store, call, source, w.service_pipelines)

    # A call report and its message are independent writes (each idempotent, so a retry
    # after either failed redoes both safely): made durable at once. (A message alone is
    # awaited directly: no tasks on the path every other webhook takes.)
    accepted: intake.Accepted
    if parsed.calls:
        accepted, _ = await together(w.accept(docs), apply_calls())
    else:
        accepted = await w.accept(docs)
    if on_accepted is not None:
        on_accepted(accepted.new)
    for edit in parsed.edits:
        await updates.apply_edit(w.store, edit)
    for status in parsed.statuses:
        await updates.apply_status(w.store, status)
    for mark in parsed.watermarks:
        await updates.apply_watermark(w.store, mark)
    for deletion in parsed.deletions:
        await updates.apply_deletion(w.store, deletion)
    for reaction in parsed.reactions:
        await updates.apply_reaction(w.store, reaction)
    for r in parsed.reachability:
        await updates.apply_reachability(w.store, r, identity_keys(r.channel, r.account, r.sender))
    for verdict in parsed.templates:
        await wa_templates.apply(w.store, verdict)
    return accepted


def unparsed_document(
    channel: str,
    account: str,
    source: str,
    request: RequestMeta,
    raw: bytes,
    error: str,
    received_at: datetime,
) -> Document:
    digest = hashlib.sha256(raw).hexdigest()
    return {
        "_id": unparsed_id(channel, account, digest),
        "channel": channel,
        "account": account,
        "source_id": source,
        "status": IntakeStatus.UNPARSED.value,
        "raw": raw,
        "body_sha256": digest,
        "request": request.document(),
        "error": error[:ERROR_CHARS],
        "received_at": received_at,
        "attempts": 0,
    }


async def keep_unparsed(store: Store, doc: Document) -> bool:
    """Store an unparsed delivery once (True: it is new). A provider retry of the same
    body finds the record — unparsed or already reparsed — and changes nothing."""
    result = await store.intake.update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
    return result.upserted_id is not None


def unreadable_error(parsed: Parsed) -> str:
    """The error an unparsed record keeps for a delivery read in part."""
    parts: list[Any] = parsed.unreadable[:20]
    more = len(parsed.unreadable) - len(parts)
    text = "; ".join(str(p) for p in parts) + (f"; … {more} more" if more > 0 else "")
    return f"{len(parsed.unreadable)} part(s) unreadable: {text}"
