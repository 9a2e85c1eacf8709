"""Public comments under posts (VK, Facebook, Instagram): the thread, answers, moderation.

A comment conversation is one post and one commenter (its thread is
``comment:<post id>:<commenter>``, channels/base.py); its inbound messages are comments
(``kind: "comment"``, the ``post`` they were written under, ``parent_id``).

- ``GET /api/v1/conversations/{id}/comments`` — the post (id, link, text when the
  provider sends it), the customer's comments with their state (deleted, hidden, the last
  moderation), and what the provider lets an operator do (``moderation``). A conversation
  that is not a comment conversation answers ``post: null`` and no comments.
- Replying: ``POST /api/v1/conversations/{id}/messages`` (inbox/messages_api.py) takes
  ``mode`` ("public" — the default in a comment conversation: a reply under the comment;
  "private" — a direct message to the commenter) and ``comment_id`` (the message id of a
  customer comment of this conversation; default: the latest one). :func:`answer` checks
  and queues it; the outbox passes ``reply_mode``/``comment_id`` (the comment's provider
  id) to the channel. A customer's answer to a private reply arrives as a direct message,
  in the commenter's direct conversation, not here.
- ``POST /api/v1/conversations/{id}/comments/{comment_id}/moderate`` ``{"action": "hide" |
  "unhide" | "delete"}`` — done at the provider by the channel's ``moderate``, then
  recorded on the message (``moderation``, ``hidden``; a delete marks it deleted) and as a
  ``comment.moderated`` event. 422 ``moderation_not_supported`` where the provider cannot
  (VK has no hidden comments), 409 ``comment_deleted`` for a comment already deleted, 409
  ``provider_refused`` with the provider's reason, 503 ``provider_unavailable`` (retry).

Who may: whoever sees the conversation (inbox/access.py, through
:func:`visible_conversation`); the comment must belong to it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from channels import REGISTRY
from channels.base import CommentModerator, OutboundMessage, SendError, SendingChannel
from config.loader import resolve_secret
from crm_store import outbox
from crm_store.events import append, event
from crm_store.store import Document
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.conversations_api import visible_conversation
from ingest.outbox import outbound_of

TAG = "comments"
Mode = Literal["public", "private"]
ModerationAction = Literal["hide", "unhide", "delete"]
ALL_ACTIONS: tuple[ModerationAction, ...] = ("hide", "unhide", "delete")
COMMENT_FIELDS = {
    "_id": 1,
    "provider_id": 1,
    "text": 1,
    "post": 1,
    "parent_id": 1,
    "deleted": 1,
    "hidden": 1,
    "moderation": 1,
    "sent_at": 1,
    "received_at": 1,
    "channel": 1,
    "conversation_id": 1,
    "contact_id": 1,
    "target": 1,
}


class PostView(BaseModel):
    id: str
    url: str | None = None
    text: str | None = None


class ModerationView(BaseModel):
    action: ModerationAction
    at: datetime
    by: str | None = None


class CommentView(BaseModel):
    message_id: str = Field(description="pass as comment_id to reply under it or moderate it")
    provider_id: str = Field(description="the provider's id of the comment")
    text: str = ""
    parent_id: str | None = Field(default=None, description="the comment it answers (provider id)")
    deleted: bool = False
    hidden: bool = False
    moderation: ModerationView | None = Field(default=None, description="the last one")
    received_at: datetime | None = None

    @classmethod
    def of(cls, doc: Document) -> CommentView:
        return cls(
            message_id=doc["_id"],
            provider_id=doc.get("provider_id") or "",
            text=doc.get("text") or "",
            parent_id=doc.get("parent_id"),
            deleted=bool(doc.get("deleted")),
            hidden=bool(doc.get("hidden")),
            moderation=doc.get("moderation"),
            received_at=doc.get("received_at"),
        )


class CommentThread(BaseModel):
    post: PostView | None = Field(description="null: not a comment conversation")
    comments: list[CommentView] = Field(description="the customer's comments, oldest first")
    moderation: list[ModerationAction] = Field(
        description="what the provider lets an operator do to a comment here"
    )


class ModerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: ModerationAction


def is_comment_conversation(conv: Document) -> bool:
    thread = conv.get("thread")
    return isinstance(thread, str) and thread.startswith("thread:comment:")


def moderation_actions(channel_name: str) -> list[ModerationAction]:
    """What the channel's ``moderate`` can do (``moderation_actions`` on the channel;
    all three when it does not say); none without ``moderate``."""
    channel = REGISTRY.get(channel_name)
    if not isinstance(channel, CommentModerator):
        return []
    said = getattr(channel, "moderation_actions", ALL_ACTIONS)
    return [a for a in ALL_ACTIONS if a in said]


async def _comments(call: Call, conv: Document, limit: int = 200) -> list[Document]:
    return [
        d
        async for d in call.svc.store.messages.find(
            {"conversation_id": conv["_id"], "direction": "in", "kind": "comment"},
            COMMENT_FIELDS,
            sort=[("received_at", 1), ("_id", 1)],
            limit=limit,
        )
    ]


async def _comment(call: Call, conv: Document, message_id: str | None) -> Document:
    """The named customer comment of this conversation, or its latest one."""
    query: Document = {"conversation_id": conv["_id"], "direction": "in", "kind": "comment"}
    if message_id is not None:
        doc = await call.svc.store.messages.find_one({**query, "_id": message_id}, COMMENT_FIELDS)
        if doc is None:
            raise ApiError(
                404,
                "comment_not_found",
                f"no comment {message_id} in this conversation",
                errors=[{"in": "body", "field": "comment_id", "message": "not in conversation"}],
            )
        return doc
    doc = await call.svc.store.messages.find_one(
        query, COMMENT_FIELDS, sort=[("received_at", -1), ("_id", -1)]
    )
    if doc is None:
        raise ApiError(422, "no_comment", "the conversation has no customer comment to answer")
    return doc


@route(
    "GET",
    "/api/v1/conversations/{id}/comments",
    summary="The post and the customer's comments of a comment conversation",
    tag=TAG,
    response=CommentThread,
    errors=(404,),
)
async def comment_thread(call: Call) -> CommentThread:
    conv = await visible_conversation(call)
    if not is_comment_conversation(conv):
        return CommentThread(post=None, comments=[], moderation=[])
    docs = await _comments(call, conv)
    post = next((d["post"] for d in reversed(docs) if isinstance(d.get("post"), dict)), None)
    return CommentThread(
        post=PostView.model_validate(post) if post else None,
        comments=[CommentView.of(d) for d in docs],
        moderation=moderation_actions(conv["channel"]),
    )


async def answer(
    call: Call,
    conv: Document,
    text: str,
    attachments: list[dict[str, Any]],
    mode: Mode | None,
    comment_id: str | None,
) -> Document | None:
    """Queue an operator's answer in a comment conversation (public under the comment, or
    private to the commenter); None for any other conversation (the ordinary reply path
    goes on), where ``mode``/``comment_id`` are refused."""
    if not is_comment_conversation(conv):
        if mode is not None or comment_id is not None:
            field = "mode" if mode is not None else "comment_id"
            raise ApiError(
                422,
                "not_a_comment_conversation",
                "mode and comment_id apply only to a conversation of comments under a post",
                errors=[{"in": "body", "field": field, "message": "not a comment conversation"}],
            )
        return None
    chosen: Mode = mode or "public"
    comment = await _comment(call, conv, comment_id)
    if chosen == "public" and comment.get("deleted"):
        raise ApiError(
            409,
            "comment_deleted",
            "the comment was deleted: a public reply cannot go under it; answer privately",
        )
    channel = REGISTRY.get(conv["channel"])
    account = call.svc.config.account(conv["channel"], conv["account"])
    if not isinstance(channel, SendingChannel) or account is None:
        raise ApiError(
            422,
            "channel_cannot_send",
            f"channel {conv['channel']}/{conv['account']} cannot send replies",
        )
    if chosen == "private" and not conv.get("reply_to"):
        raise ApiError(422, "no_recipient", "the conversation has no commenter to write to")
    draft: Document = {
        "_id": "draft",
        "channel": conv["channel"],
        "account": conv["account"],
        "recipient": conv.get("reply_to") or "",
        "text": text,
        "attachments": attachments,
        "reply_mode": chosen,
        "comment_id": comment["provider_id"],
    }
    msg: OutboundMessage = outbound_of(draft, conv)
    try:
        channel.check_outbound(account, msg)
    except SendError as exc:
        raise ApiError(422, exc.code, exc.detail) from None
    return await outbox.queue(
        call.svc.store,
        conv,
        text=text,
        attachments=attachments,
        author_id=call.principal.user.id,
        reply_mode=chosen,
        comment_id=comment["provider_id"],
    )


def _refused(exc: SendError) -> ApiError:
    if exc.code == "not_supported":
        return ApiError(422, "moderation_not_supported", exc.detail)
    if exc.retryable:
        return ApiError(503, "provider_unavailable", f"{exc.detail} (try again)")
    return ApiError(409, "provider_refused", exc.detail)


@route(
    "POST",
    "/api/v1/conversations/{id}/comments/{comment_id}/moderate",
    summary="Hide, unhide or delete a customer's comment at the provider",
    tag=TAG,
    body=ModerateBody,
    response=CommentView,
    errors=(404, 409, 422, 503),
)
async def moderate_comment(call: Call) -> CommentView:
    action = call.b(ModerateBody).action
    conv = await visible_conversation(call)
    if not is_comment_conversation(conv):
        raise ApiError(404, "comment_not_found", "this conversation holds no comments")
    comment = await _comment(call, conv, call.path("comment_id"))
    if comment.get("deleted"):
        raise ApiError(409, "comment_deleted", "the comment is already deleted")
    if action not in moderation_actions(conv["channel"]):
        raise ApiError(
            422,
            "moderation_not_supported",
            f"{conv['channel']} cannot {action} a comment"
            + (
                " (VK has no hidden comments: delete it instead)" if conv["channel"] == "vk" else ""
            ),
        )
    channel = REGISTRY.get(conv["channel"])
    account = call.svc.config.account(conv["channel"], conv["account"])
    if not isinstance(channel, CommentModerator) or account is None:
        raise ApiError(422, "channel_cannot_send", "the channel account is not configured")
    try:
        await channel.moderate(account, resolve_secret(account), comment["provider_id"], action)
    except SendError as exc:
        raise _refused(exc) from None
    return CommentView.of(await _record(call, comment, action))


async def _record(call: Call, comment: Document, action: ModerationAction) -> Document:
    """The moderation on the message and as a ``comment.moderated`` event."""
    at = datetime.now(UTC).replace(microsecond=0)
    by = call.principal.user.id
    update: Document = {"moderation": {"action": action, "at": at, "by": by}}
    if action == "delete":
        update.update(deleted=True, deleted_at=at)
    else:
        update["hidden"] = action == "hide"
    await call.svc.store.messages.update_one({"_id": comment["_id"]}, {"$set": update})
    refs: dict[str, str | None] = {
        "message_id": comment["_id"],
        "conversation_id": comment.get("conversation_id"),
        "contact_id": comment.get("contact_id"),
    }
    target = comment.get("target") or {}
    if target.get("kind") in ("lead", "deal"):
        refs[f"{target['kind']}_id"] = target.get("id")
    data = {
        "channel": comment.get("channel"),
        "action": action,
        "comment_id": comment.get("provider_id"),
        "by": by,
    }
    await append(
        call.svc.store,
        [event("comment.moderated", refs, data, key=[comment["_id"], action, at.isoformat()])],
    )
    return {**comment, **update}
