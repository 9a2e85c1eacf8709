"""The outbox worker: sends queued outbound messages through their channel.

Any process may run it; claims (crm_store/outbox.py) make sure one message is in one
worker's hands at a time. Retryable failures (rate limits, 5xx, timeouts) are retried
with exponential backoff and jitter — or after the provider's ``retry_after`` — for up to
``max_attempts``; anything else fails the message at once with the provider's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from channels import REGISTRY
from channels.base import Attachment, OutboundMessage, SendError, SendingChannel, TemplateRef
from channels.email.channel import EmailChannel
from config.loader import resolve_secret
from config.models import AppConfig
from crm_store import outbox, sms_contacts, wa_templates, wake
from crm_store.store import Document, Store
from ingest.mail_files import stored_attachments
from ingest.tasks import cancel

log = structlog.get_logger("omniroute.outbox")


# The conversation fields a send needs (see :func:`outbound_of`).
CONVERSATION_FIELDS = {"last_inbound_at": 1, "last_inbound": 1, "thread": 1}


def outbound_of(doc: Document, conversation: Document | None = None) -> OutboundMessage:
    """The message as a channel sends it: the stored outbound message plus what its
    conversation knows (when the customer last wrote, the message being answered and its
    thread, the subject)."""
    conv = conversation or {}
    last: Document = conv.get("last_inbound") or {}
    refs = [r for r in last.get("references") or [] if isinstance(r, str)]
    answered = last.get("provider_id")
    thread = conv.get("thread")
    return OutboundMessage(
        id=doc["_id"],
        channel=doc["channel"],
        account=doc["account"],
        recipient=doc.get("recipient") or "",
        # The provider's own thread id, when the conversation is one (routing/router.py).
        thread_id=thread[7:] if isinstance(thread, str) and thread.startswith("thread:") else None,
        text=doc.get("text", ""),
        attachments=[_attachment(a, doc["channel"]) for a in doc.get("attachments", [])],
        last_inbound_at=conv.get("last_inbound_at"),
        answers=answered if isinstance(answered, str) else None,
        references=refs,
        subject=subject if isinstance(subject := last.get("subject"), str) else None,
        automatic=bool(doc.get("automatic", False)),
        answers_automatic=bool(last.get("automatic", False)),
        # An answer to a public comment (crm_store/outbox.py queue).
        reply_mode=doc.get("reply_mode"),
        comment_id=doc.get("comment_id"),
        # A provider template (WhatsApp) sent instead of the text (the text is its preview).
        template=_template(doc),
    )


def _attachment(stored: Document, channel: str) -> Attachment:
    """A stored outbound attachment as the channel sees it. ``stored_file_id`` names our
    own file (an upload, a generated document): a channel that attaches stored files
    (e-mail) gets it as ``file_id``; to any other a ``file_id`` is the provider's own file
    id, so it goes by ``url`` only."""
    values = dict(stored)
    ours = values.pop("stored_file_id", None)
    if ours is not None and getattr(REGISTRY.get(channel), "attaches_stored_files", False):
        values["file_id"] = ours
    return Attachment.model_validate(values)


def _template(doc: Document) -> TemplateRef | None:
    found = doc.get("template")
    return TemplateRef.model_validate(found) if isinstance(found, dict) else None


def backoff_s(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return max(retry_after, 0.0)
    return min(2.0**attempt, 300.0) * (0.5 + random.random())


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        config: AppConfig,
        *,
        owner: str,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        max_attempts: int = 8,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.config = config
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.wake = asyncio.Event()
        self._sem = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self._unsubscribe = wake.subscribe(wake.OUTBOX, self.wake.set)
        self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        self._unsubscribe()
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            # Cleared before the claim: a message queued while it runs wakes the next round.
            self.wake.clear()
            try:
                claimed = await outbox.claim_due(
                    self.store, self.owner, self.lease_s, self.concurrency * 4
                )
                if claimed:
                    await asyncio.gather(*(self._send_limited(d) for d in claimed))
                    continue
            except PyMongoError as exc:
                log.warning("outbox.store_unavailable", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)

    async def _send_limited(self, doc: Document) -> None:
        async with self._sem:
            await self.send(doc)

    async def send(self, doc: Document) -> None:
        channel = REGISTRY.get(doc["channel"])
        account = self.config.account(doc["channel"], doc["account"])
        if not isinstance(channel, SendingChannel) or account is None:
            await outbox.mark_failed(
                self.store, doc, "this channel account cannot send", "channel_cannot_send"
            )
            return
        if doc["channel"] == "sms" and (
            why := await sms_contacts.opt_out_reason(self.store, doc.get("contact_id"))
        ):
            await outbox.mark_failed(self.store, doc, f"opted out of SMS: {why}", "sms_opted_out")
            return
        at_most_once = getattr(channel, "sends_at_most_once", None)
        if callable(at_most_once) and at_most_once(account):
            # A send that was started and never finished (the process died waiting for
            # the provider) may have gone out: it is not sent again.
            if doc.get("send_started_at") is not None:
                await outbox.mark_unknown(
                    self.store,
                    doc,
                    "the sending process stopped before the provider answered; not resent",
                    "send_interrupted",
                )
                return
            await self.store.messages.update_one(
                {"_id": doc["_id"]}, {"$set": {"send_started_at": datetime.now(UTC)}}
            )
        conv = await self.store.conversations.find_one(
            {"_id": doc.get("conversation_id")}, CONVERSATION_FIELDS
        )
        try:
            msg = outbound_of(doc, conv)
            channel.check_outbound(account, msg)
            if msg.template is not None and (
                why := await wa_templates.refusal(
                    self.store, doc["channel"], doc["account"], msg.template
                )
            ):
                raise SendError(why, retryable=False, code="template_not_approved")
            if isinstance(channel, EmailChannel):
                attached = await stored_attachments(self.store, account, msg)
                result = await channel.send(account, resolve_secret(account), msg, attached)
            else:
                result = await channel.send(account, resolve_secret(account), msg)
        except SendError as exc:
            attempts = int(doc.get("attempts", 0)) + 1
            if exc.unknown:
                log.warning(
                    "outbox.unknown", message_id=doc["_id"], channel=doc["channel"], code=exc.code
                )
                await outbox.mark_unknown(self.store, doc, exc.detail, exc.code)
                return
            if exc.retryable and attempts < self.max_attempts:
                delay = backoff_s(attempts, exc.retry_after)
                log.info(
                    "outbox.retry",
                    message_id=doc["_id"],
                    channel=doc["channel"],
                    code=exc.code,
                    delay_s=round(delay, 2),
                    attempt=attempts,
                )
                await outbox.mark_retry(self.store, doc, delay, exc.detail)
            else:
                log.warning(
                    "outbox.failed",
                    message_id=doc["_id"],
                    channel=doc["channel"],
                    code=exc.code,
                    detail=exc.detail,
                )
                await outbox.mark_failed(self.store, doc, exc.detail, exc.code)
            return
        except ValidationError as exc:
            await outbox.mark_failed(self.store, doc, str(exc), "invalid_message")
            return
        await outbox.mark_sent(self.store, doc, result.provider_id, result.state)
        log.info("outbox.sent", message_id=doc["_id"], channel=doc["channel"])


def describe(doc: Document) -> dict[str, Any]:
    """The operator-facing view of an outbound message."""
    return {
        k: doc.get(k)
        for k in (
            "_id",
            "channel",
            "account",
            "conversation_id",
            "state",
            "provider_id",
            "error",
            "error_code",
            "attempts",
        )
    }
