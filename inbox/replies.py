"""Operator replies: checked at once, then queued for the outbox worker.

What the provider would certainly refuse (no send support, no address, outside
WhatsApp's 24 h window, text over the limit) is refused here with a clear error instead
of failing later in the background.
"""

from __future__ import annotations

from typing import Any

from channels import REGISTRY
from channels.base import SendError, SendingChannel
from config.models import AppConfig
from crm_store import outbox
from crm_store.store import Document, Store
from ingest.outbox import outbound_of


class ReplyError(Exception):
    def __init__(self, code: str, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


async def reply(
    store: Store,
    config: AppConfig,
    conversation: str | Document,
    text: str,
    *,
    attachments: list[dict[str, Any]] | None = None,
    author_id: str | None = None,
) -> Document:
    """Queue a reply in ``conversation`` (its id, or its document as just read)."""
    if isinstance(conversation, str):
        conv = await store.conversations.find_one({"_id": conversation})
        conversation_id = conversation
    else:
        conv, conversation_id = conversation, conversation["_id"]
    if conv is None:
        raise ReplyError("conversation_not_found", f"no conversation {conversation_id}", 404)
    channel = REGISTRY.get(conv["channel"])
    account = config.account(conv["channel"], conv["account"])
    if not isinstance(channel, SendingChannel) or account is None:
        raise ReplyError(
            "channel_cannot_send",
            f"channel {conv['channel']}/{conv['account']} cannot send replies",
        )
    if not conv.get("reply_to"):
        raise ReplyError("no_recipient", "the conversation has no address to reply to")
    draft: Document = {
        "_id": "draft",
        "channel": conv["channel"],
        "account": conv["account"],
        "recipient": conv["reply_to"],
        "text": text,
        "attachments": attachments or [],
    }
    try:
        channel.check_outbound(account, outbound_of(draft, conv))
    except SendError as exc:
        raise ReplyError(exc.code, exc.detail) from None
    return await outbox.queue(store, conv, text=text, attachments=attachments, author_id=author_id)
