"""Outbound messages: queued durably, claimed by any process's outbox worker, sent,
retried with backoff, and their delivery state moved forward by provider receipts.

An outbound message is a ``messages`` document with ``direction: "out"``. While it waits
to be sent it carries ``send_due_at`` (when to try next) and ``send_lease_until`` (who
holds it); both are removed once it is sent or has failed for good. The claim is the
portable one: ``update_many`` on due, unleased records, then read back by owner token.

A sent message gets the provider's id first and leaves the outbox last, after the receipts
that overtook the id are applied (crm_store/pending.py); a claimed message that already
has a provider id is finished, never sent again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.base import STATE_RANK, DeliveryState
from channels.sms_segments import segments
from crm_store import pending, updates, wake
from crm_store.events import append, event
from crm_store.store import Document, Store, claim

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


async def queue(
    store: Store,
    conversation: Document,
    *,
    text: str,
    attachments: list[dict[str, Any]] | None = None,
    author_id: str | None = None,
    message_id: str | None = None,
    automatic: bool = False,
    reply_mode: str | None = None,
    comment_id: str | None = None,
    template: dict[str, Any] | None = None,
) -> Document:
    """Store an outbound message as ``queued``; the outbox worker sends it.

    ``automatic``: sent by automation, not an operator (e-mail marks it Auto-Submitted and
    refuses to answer an automatic message with it). ``message_id`` makes the queueing
    idempotent: a second call with the same id raises ``DuplicateKeyError``.
    ``reply_mode`` / ``comment_id``: an answer to a public comment ("public": under the
    comment with that provider id; "private": to the commenter directly).
    ``template``: a provider template (WhatsApp ``{name, language, params}``) sent instead
    of ``text``, which then holds the template's rendered preview."""
    at = _now()
    doc: Document = {
        "_id": message_id or uuid.uuid4().hex,
        "direction": "out",
        "channel": conversation["channel"],
        "account": conversation["account"],
        "conversation_id": conversation["_id"],
        "contact_id": conversation.get("contact_id"),
        "target": conversation.get("target"),
        "recipient": conversation.get("reply_to"),
        "text": text,
        "attachments": attachments or [],
        "author_id": author_id,
        "automatic": automatic,
        **({"template": template} if template is not None else {}),
        "state": DeliveryState.QUEUED.value,
        "state_rank": STATE_RANK[DeliveryState.QUEUED],
        "state_history": [{"state": DeliveryState.QUEUED.value, "at": at}],
        "received_at": at,
        "attempts": 0,
        "send_due_at": at,
        "send_lease_until": EPOCH,
    }
    if reply_mode is not None:
        doc.update(reply_mode=reply_mode, comment_id=comment_id)
    if doc["channel"] == "sms":  # shown to the operator (docs/channels/sms.md#segments)
        seg = segments(text)
        doc["sms"] = {"segments": seg.count, "encoding": seg.encoding, "units": seg.units}
    await store.messages.insert_one(doc)
    await store.conversations.update_one(
        {"_id": conversation["_id"]},
        {"$max": {"last_message_at": at, "last_outbound_at": at}, "$inc": {"message_count": 1}},
    )
    wake.notify(wake.OUTBOX)  # this process's outbox sends it now, not at its next poll
    return doc


async def claim_due(store: Store, owner: str, lease_s: float, limit: int) -> list[Document]:
    """Claim due outbound messages to send. A claimed message that already carries the
    provider's id was sent by a process that died before it finished :func:`mark_sent`:
    it is finished here and never sent again."""
    t = _now()
    claimed = await claim(
        store.messages,
        {"send_due_at": {"$lte": t}, "send_lease_until": {"$lt": t}},
        {"send_owner": owner, "send_lease_until": t + timedelta(seconds=lease_s)},
        {"send_owner": owner, "send_lease_until": {"$gt": t}},
        limit,
        # The partial index of due replies: without it the embedded server scans every
        # message, every second.
        hint="outbox_due",
    )
    for doc in claimed:
        if doc.get("provider_id"):
            await _finish_sent(store, doc)
    return [doc for doc in claimed if not doc.get("provider_id")]


async def mark_sent(
    store: Store, doc: Document, provider_id: str, state: DeliveryState = DeliveryState.SENT
) -> None:
    """The provider took the message. The provider's id is stored first, while the
    message is still claimed; then :func:`_finish_sent` does the rest."""
    at = _now()
    sent = {"provider_id": provider_id, "sent_at": at, "sent_state": state.value}
    # The provider took it: an earlier attempt's error is no longer the message's.
    await store.messages.update_one(
        {"_id": doc["_id"]}, {"$set": sent, "$inc": {"attempts": 1}, "$unset": {"error": ""}}
    )
    await _finish_sent(store, {**doc, **sent})


async def _finish_sent(store: Store, doc: Document) -> None:
    """Everything after the provider's id is stored, each step idempotent: the state
    moves forward, ``message.sent``, the receipts that arrived before the id was stored
    (crm_store/pending.py), and last the message leaves the outbox. A process that dies
    in here leaves the message claimable; :func:`claim_due` finishes it."""
    provider_id: str = doc["provider_id"]
    at: datetime = doc.get("sent_at") or _now()
    state = DeliveryState(doc.get("sent_state") or DeliveryState.SENT.value)
    rank = STATE_RANK[state]
    # A receipt may have raced ahead of us: only move the state forward.
    await store.messages.update_one(
        {"_id": doc["_id"], "state_rank": {"$lt": rank}},
        {
            "$set": {"state": state.value, "state_rank": rank, "state_at": at},
            "$push": {"state_history": {"state": state.value, "at": at}},
        },
    )
    await append(
        store,
        [
            event(
                "message.sent",
                _refs(doc),
                {
                    "channel": doc["channel"],
                    "provider_id": provider_id,
                },
                key=[doc["_id"]],
                at=at,
            )
        ],
        maybe_written=True,
    )
    await updates.apply_pending(
        store, [pending.outbound_key(doc["channel"], doc["account"], provider_id)]
    )
    # Not the error: mark_sent cleared an earlier attempt's, and one there now is a failed
    # receipt's that overtook this step (its reason stays).
    await store.messages.update_one(
        {"_id": doc["_id"]},
        {"$unset": {"send_due_at": "", "send_lease_until": "", "send_owner": ""}},
    )


async def mark_retry(store: Store, doc: Document, delay_s: float, error: str) -> None:
    await store.messages.update_one(
        {"_id": doc["_id"]},
        {
            "$set": {
                "send_due_at": _now() + timedelta(seconds=delay_s),
                "send_lease_until": EPOCH,
                "error": error[:1000],
            },
            # A retryable failure is one that did not send: the next try starts afresh.
            "$unset": {"send_started_at": ""},
            "$inc": {"attempts": 1},
        },
    )


async def mark_failed(store: Store, doc: Document, error: str, code: str) -> None:
    at = _now()
    await store.messages.update_one(
        {"_id": doc["_id"]},
        {
            "$set": {
                "state": DeliveryState.FAILED.value,
                "state_rank": STATE_RANK[DeliveryState.FAILED],
                "state_at": at,
                "error": error[:1000],
                "error_code": code,
            },
            "$push": {"state_history": {"state": DeliveryState.FAILED.value, "at": at}},
            "$unset": {"send_due_at": "", "send_lease_until": "", "send_owner": ""},
            "$inc": {"attempts": 1},
        },
    )
    await append(
        store,
        [
            event(
                "message.delivery_changed",
                _refs(doc),
                {
                    "state": DeliveryState.FAILED.value,
                    "error": error[:1000],
                    "code": code,
                },
                key=[doc["_id"], "failed"],
                at=at,
            )
        ],
        maybe_written=True,
    )


def _refs(doc: Document) -> dict[str, str | None]:
    target = doc.get("target") or {}
    refs: dict[str, str | None] = {
        "message_id": doc["_id"],
        "conversation_id": doc.get("conversation_id"),
        "contact_id": doc.get("contact_id"),
    }
    if target.get("kind") in ("lead", "deal"):
        refs[f"{target['kind']}_id"] = target.get("id")
    return refs


async def mark_unknown(store: Store, doc: Document, error: str, code: str) -> None:
    """The send's outcome is unknown (the provider may have the message) and resending
    could deliver it twice: the message leaves the outbox as ``unknown``, never resent.
    A later receipt or status poll can still settle it (same rank as ``sent``)."""
    at = _now()
    state = DeliveryState.UNKNOWN
    await store.messages.update_one(
        {"_id": doc["_id"]},
        {
            "$set": {
                "state": state.value,
                "state_rank": STATE_RANK[state],
                "state_at": at,
                "error": error[:1000],
                "error_code": code,
            },
            "$push": {"state_history": {"state": state.value, "at": at}},
            "$unset": {"send_due_at": "", "send_lease_until": "", "send_owner": ""},
            "$inc": {"attempts": 1},
        },
    )
    await append(
        store,
        [
            event(
                "message.delivery_changed",
                _refs(doc),
                {"state": state.value, "error": error[:1000], "code": code},
                key=[doc["_id"], state.value],
                at=at,
            )
        ],
        maybe_written=True,
    )
