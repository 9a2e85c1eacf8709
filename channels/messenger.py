"""Facebook Messenger: a Facebook Page's inbox and the comments under its posts.

Inbound: ``/webhooks/messenger/{account}`` (the Meta app's **Page** webhook).

* ``GET``: Meta's verification handshake (channels/meta.py); ``POST``: ``X-Hub-Signature-256``
  with the app secret over the raw body (missing or wrong → 401, nothing stored).
* ``object: "page"``; every ``entry[]``; in each, every ``messaging[]`` and ``standby[]``
  item (channels/meta_messaging.py: messages, echoes, edits, unsends, reactions,
  receipts, postbacks, referrals) and every ``changes[]`` of field ``feed`` whose ``item``
  is ``comment`` (:func:`_comment`). An entry of another Page (``entry.id`` ≠
  ``settings.page_id``, when set) is skipped.
* A comment is an :class:`InboundMessage` of ``kind="comment"``: ``provider_id`` the
  comment id, ``thread_id = "comment:{post_id}:{commenter}"`` (one conversation per post
  and commenter), ``post`` the post, ``parent_id`` the comment it answers (None for a
  top-level comment, whose ``parent_id`` is the post), ``reply_to`` the commenter.
  ``edited`` → :class:`MessageEdit`, ``remove`` → :class:`MessageDeletion`; the Page's own
  comments are echoes (skipped); ``hide`` / ``unhide`` and other items are ignored.

Outbound (channels/meta_send.py): ``POST {api_base}/{api_version}/{page_id or
me}/messages``; public replies ``POST /{comment-id}/comments``; moderation: hide / unhide
``POST /{comment-id}`` ``{"is_hidden": …}``, delete ``DELETE /{comment-id}``.

Settings (``channels.yaml``): ``secret_env`` (the Page access token), ``app_secret_env``,
``verify_token_env``, ``page_id``, ``human_agent`` (true: answer up to 7 days with the
HUMAN_AGENT tag — the app must have that permission), ``api_base`` (default
``https://graph.facebook.com``), ``api_version`` (default v25.0), ``timeout_s``,
``appsecret_proof`` (true: send ``appsecret_proof`` with every call).
Details and set-up: docs/channels/messenger.md.
"""

from __future__ import annotations

from typing import Any

import structlog

from channels import lenient
from channels.base import (
    Attachment,
    InboundMessage,
    MessageDeletion,
    MessageEdit,
    OutboundMessage,
    Parsed,
    PostRef,
    Sender,
    SendResult,
    WebhookChannel,
    WebhookRequest,
    setting_str,
)
from channels.meta import Graph, handshake, verify_signature
from channels.meta_messaging import Flavour, read_item, skipped
from channels.meta_send import Action, SendSpec, check, moderate, send
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.messenger")

DEFAULT_API_BASE = "https://graph.facebook.com"
FLAVOUR = Flavour(channel="messenger", product="Messenger")
MAX_TEXT = 2000
Json = dict[str, Any]


def _spec(account: ChannelAccount) -> SendSpec:
    page = setting_str(account, "page_id") or "me"
    return SendSpec(
        product="Messenger",
        max_text=MAX_TEXT,
        messages_path=f"{page}/messages",
        public_reply=lambda comment: f"{comment}/comments",
        reply_in_query=False,
        hide=lambda hidden: ({"is_hidden": hidden}, None),
    )


def _comment(account: ChannelAccount, page_id: str | None, value: Json, out: Parsed) -> None:
    """One ``feed`` change about a comment."""
    cid = lenient.ident(value.get("comment_id"), 512)
    sender = lenient.obj(value.get("from"))
    who = lenient.ident(sender.get("id"))
    if cid is None or (page_id is not None and who == page_id):
        return  # unreadable, or the Page's own comment / reply (an echo)
    verb = value.get("verb")
    at = lenient.epoch(value.get("created_time"))
    if verb == "remove":
        out.deletions.append(
            MessageDeletion(
                channel="messenger", account=account.account, provider_id=cid, deleted_at=at
            )
        )
        return
    text = lenient.text(value.get("message"))
    attachments = []
    if photo := lenient.url(value.get("photo")):
        attachments.append(Attachment(kind="image", url=photo))
    if video := lenient.url(value.get("video")):
        attachments.append(Attachment(kind="video", url=video))
    if verb == "edited":
        out.edits.append(
            MessageEdit(
                channel="messenger",
                account=account.account,
                provider_id=cid,
                text=text,
                attachments=attachments,
                edited_at=at,
            )
        )
        return
    if verb != "add":
        return  # hide / unhide (usually our own moderation) …
    if who is None:
        raise ValueError("a Facebook comment without a readable author (from.id)")
    post = lenient.obj(value.get("post"))
    post_id = lenient.ident(value.get("post_id")) or lenient.ident(post.get("id")) or "unknown"
    parent = lenient.ident(value.get("parent_id"), 512)
    url = lenient.url(post.get("permalink_url")) or f"https://www.facebook.com/{post_id}"
    out.messages.append(
        InboundMessage(
            channel="messenger",
            account=account.account,
            provider_id=cid,
            thread_id=f"comment:{post_id}:{who}",
            sender=Sender(external_user_id=who, name=lenient.clip(sender.get("name"), 256)),
            text=text or ("[photo]" if attachments else "[comment]"),
            sent_at=at,
            attachments=attachments,
            reply_to=who,
            kind="comment",
            post=PostRef(id=post_id, url=url, text=lenient.clip(post.get("message"), 2000)),
            parent_id=None if parent in (None, post_id) else parent,
            meta={"post_id": post_id, "comment_id": cid},
        )
    )


class MessengerChannel(WebhookChannel):
    name = "messenger"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        if req.method == "GET":
            handshake(account, req.query)
        else:
            verify_signature(account, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        if req.method == "GET":
            return handshake(account, req.query)
        body = lenient.load_object(req.body)
        parsed = Parsed()
        if body.get("object", "page") != "page":
            return parsed
        configured = setting_str(account, "page_id")
        for entry in lenient.objs(body.get("entry")):
            page_id = lenient.ident(entry.get("id")) or configured
            if configured and page_id != configured:
                log.info("messenger.other_page", account=account.account, page_id=page_id)
                continue
            for item in (
                *lenient.objs(entry.get("messaging")),
                *lenient.objs(entry.get("standby")),
            ):
                try:
                    read_item(FLAVOUR, account.account, page_id, item, parsed)
                except Exception as exc:  # one unreadable item: the rest is stored
                    parsed.unreadable.append(skipped("messenger", item, exc, account))
            for change in lenient.objs(entry.get("changes")):
                value = lenient.obj(change.get("value"))
                if change.get("field") != "feed" or value.get("item") != "comment":
                    continue
                try:
                    _comment(account, page_id, value, parsed)
                except Exception as exc:
                    parsed.unreadable.append(skipped("messenger", value, exc, account))
        return parsed

    # --- outbound ---------------------------------------------------------------------

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        check(account, msg, _spec(account))

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        graph = Graph.of(account, secret, "Messenger", DEFAULT_API_BASE)
        return await send(graph, account, msg, _spec(account))

    async def moderate(
        self, account: ChannelAccount, secret: str | None, comment_id: str, action: Action
    ) -> None:
        graph = Graph.of(account, secret, "Messenger", DEFAULT_API_BASE)
        await moderate(graph, _spec(account), comment_id, action)
