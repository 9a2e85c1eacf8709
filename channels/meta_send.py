"""Sending through Meta's Send API and answering comments: what Messenger and Instagram
share (CHANNEL_PROTOCOLS.md §9.5, §10.3, §11).

* A direct message: ``POST /{sender}/messages`` with ``recipient: {id}`` (or ``user_ref``
  for a chat-plugin thread), ``messaging_type`` / ``tag`` from :func:`channels.meta.window`,
  and the text or one attachment by URL (text and an attachment: the attachment first,
  then the text, as two messages — the Send API carries one of them per message).
* ``reply_mode="private"``: the Send API with ``recipient: {comment_id}`` — the one
  private reply a comment allows, within 7 days.
* ``reply_mode="public"``: a reply under the comment — Facebook ``POST
  /{comment-id}/comments``, Instagram ``POST /{ig-comment-id}/replies``.
* :func:`moderate`: hide, unhide or delete a comment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from channels.base import Attachment, OutboundMessage, SendError, SendResult
from channels.meta import Graph, Json, window
from channels.meta_messaging import USER_REF
from config.models import ChannelAccount

Action = Literal["hide", "unhide", "delete"]
SEND_KINDS = {"image": "image", "audio": "audio", "voice": "audio", "video": "video"}


@dataclass(frozen=True, slots=True)
class SendSpec:
    """How one product sends: its name, text limit, the path of the Send API and of a
    public reply under a comment, and how moderation is asked for."""

    product: str
    max_text: int
    messages_path: str
    public_reply: Callable[[str], str]
    # The public reply's text as JSON (Facebook) or as the ``message`` query (Instagram).
    reply_in_query: bool
    hide: Callable[[bool], tuple[Json | None, dict[str, str] | None]]


def check(account: ChannelAccount, msg: OutboundMessage, spec: SendSpec) -> None:
    """What the provider would refuse, refused at once (not retryable)."""

    def refuse(code: str, detail: str) -> SendError:
        return SendError(detail, retryable=False, code=code)

    if msg.reply_mode is not None and not msg.comment_id:
        raise refuse("no_comment", f"a {msg.reply_mode} reply needs the comment it answers")
    if msg.reply_mode is None and not msg.recipient:
        raise refuse("no_recipient", f"the conversation has no {spec.product} address")
    if not msg.text.strip() and not msg.attachments:
        raise refuse("empty_message", "the message has no text")
    if len(msg.text) > spec.max_text:
        raise refuse(
            "text_too_long",
            f"{spec.product} text is limited to {spec.max_text} characters ({len(msg.text)} given)",
        )
    if len(msg.attachments) > 1:
        raise refuse("too_many_attachments", f"{spec.product} replies carry one attachment")
    if msg.attachments and not msg.attachments[0].url:
        raise refuse(
            "unsupported_attachment",
            f"{spec.product} takes attachments by URL only; this one has none",
        )
    if msg.reply_mode == "private" and msg.attachments and msg.text.strip():
        raise refuse(
            "too_many_parts",
            "a private reply to a comment is one message: text or an attachment, not both",
        )
    if msg.reply_mode == "public":
        if msg.attachments and spec.reply_in_query:
            raise refuse("attachments_unsupported", "a public Instagram reply is text only")
        return
    window(account, msg, spec.product)


def _attachment(a: Attachment) -> Json:
    kind = SEND_KINDS.get(a.kind, "file")
    return {"attachment": {"type": kind, "payload": {"url": a.url, "is_reusable": True}}}


def _message_id(spec: SendSpec, answer: Json, key: str) -> str:
    found = answer.get(key)
    if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
        return str(found)
    # It may have gone out: a retry could duplicate it, so fail it visibly.
    raise SendError(
        f"{spec.product} API answered without a message id: {str(answer)[:300]}",
        retryable=False,
        code="bad_response",
    )


async def send(
    graph: Graph, account: ChannelAccount, msg: OutboundMessage, spec: SendSpec
) -> SendResult:
    check(account, msg, spec)
    if msg.reply_mode == "public":
        assert msg.comment_id is not None
        path = spec.public_reply(msg.comment_id)
        if spec.reply_in_query:
            answer = await graph.call("POST", path, params={"message": msg.text})
        else:
            body: Json = {"message": msg.text}
            if msg.attachments:
                body["attachment_url"] = msg.attachments[0].url
            answer = await graph.call("POST", path, body=body)
        return SendResult(provider_id=_message_id(spec, answer, "id"))
    if msg.reply_mode == "private":
        recipient: Json = {"comment_id": msg.comment_id}
    elif msg.recipient.startswith(USER_REF):
        recipient = {"user_ref": msg.recipient.removeprefix(USER_REF)}
    else:
        recipient = {"id": msg.recipient}
    typing = window(account, msg, spec.product)
    parts: list[Json] = [_attachment(a) for a in msg.attachments]
    if msg.text.strip():
        parts.append({"text": msg.text})
    first: str | None = None
    for n, part in enumerate(parts):
        body = {"recipient": recipient, **typing, "message": part}
        try:
            answer = await graph.call("POST", spec.messages_path, body=body)
        except SendError as exc:
            if n == 0:
                raise
            # The attachment went out, the text did not: a retry would repeat the first.
            raise SendError(
                f"the attachment was sent, the text was not: {exc.detail}",
                retryable=False,
                code=exc.code,
            ) from None
        mid = _message_id(spec, answer, "message_id")
        first = first or mid
    assert first is not None
    return SendResult(provider_id=first)


async def moderate(graph: Graph, spec: SendSpec, comment_id: str, action: Action) -> None:
    """Hide, unhide or delete a comment; :class:`SendError` if the provider refuses."""
    if not comment_id:
        raise SendError("no comment to moderate", retryable=False, code="no_comment")
    if action == "delete":
        await graph.call("DELETE", comment_id)
        return
    body, params = spec.hide(action == "hide")
    await graph.call("POST", comment_id, body=body, params=params)
