"""Instagram Direct and comments of an Instagram professional account.

Inbound: ``/webhooks/instagram/{account}`` (the Meta app's **Instagram** webhook).

Two login flavours (``settings.login``), CHANNEL_PROTOCOLS.md §10.1:

* ``facebook`` (default): the account is linked to a Facebook Page; the Page access token
  sends, through ``graph.facebook.com``; webhooks are signed with the Meta app secret.
* ``instagram``: Instagram Login; the Instagram user token sends, through
  ``graph.instagram.com``. Which secret signs these webhooks is unverified (the Meta app
  secret, or the "Instagram app secret" of the product settings): both may be configured
  (``app_secret_env``, ``instagram_app_secret_env``) and either matching is accepted.

``object: "instagram"``; every ``entry[]``; each ``messaging[]`` / ``standby[]`` item as
for Messenger (channels/meta_messaging.py: unsends ``is_deleted``, story mentions and story
replies kept with their link, seen receipts naming their ``mid``); dashboard test
notifications, which put one such item in ``changes[{field: "messages", value}]``, are read
the same way. ``changes[]`` of field ``comments`` / ``live_comments`` are comments
(:func:`_comment`): ``kind="comment"``, ``provider_id`` the comment's ``id``, ``thread_id =
"comment:{media_id}:{commenter}"``, ``parent_id`` only on replies; the account's own
comments are echoes (skipped).

Outbound (channels/meta_send.py): ``POST /{page_id or me}/messages`` (facebook) or ``POST
/{ig_user_id or me}/messages`` (instagram); public replies ``POST
/{ig-comment-id}/replies?message=…``; moderation: hide / unhide ``POST
/{ig-comment-id}?hide=true|false``, delete ``DELETE /{ig-comment-id}``.

Settings: ``secret_env`` (the token), ``login``, ``app_secret_env``,
``instagram_app_secret_env``, ``verify_token_env``, ``ig_user_id`` (the account's IGID:
entries of another account are skipped), ``page_id``, ``human_agent``, ``api_base``,
``api_version``, ``timeout_s``, ``appsecret_proof``. Set-up: docs/channels/instagram.md.
"""

from __future__ import annotations

from typing import Any

import structlog

from channels import lenient
from channels.base import (
    InboundMessage,
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

log = structlog.get_logger("omniroute.instagram")

FACEBOOK_API_BASE = "https://graph.facebook.com"
INSTAGRAM_API_BASE = "https://graph.instagram.com"
FLAVOUR = Flavour(channel="instagram", product="Instagram")
MAX_TEXT = 1000
SECRETS = ("app_secret_env", "instagram_app_secret_env")
COMMENT_FIELDS = frozenset({"comments", "live_comments"})
# Test notifications and some subscriptions carry one messaging item as a change's value.
MESSAGING_FIELDS = frozenset(
    {
        "messages",
        "message_reactions",
        "message_edit",
        "messaging_seen",
        "messaging_postbacks",
        "messaging_referral",
    }
)
Json = dict[str, Any]


def _instagram_login(account: ChannelAccount) -> bool:
    return setting_str(account, "login") == "instagram"


def _spec(account: ChannelAccount) -> SendSpec:
    if _instagram_login(account):
        sender = setting_str(account, "ig_user_id") or "me"
    else:
        sender = setting_str(account, "page_id") or "me"
    return SendSpec(
        product="Instagram",
        max_text=MAX_TEXT,
        messages_path=f"{sender}/messages",
        public_reply=lambda comment: f"{comment}/replies",
        reply_in_query=True,
        hide=lambda hidden: (None, {"hide": "true" if hidden else "false"}),
    )


def _graph(account: ChannelAccount, secret: str | None) -> Graph:
    base = INSTAGRAM_API_BASE if _instagram_login(account) else FACEBOOK_API_BASE
    return Graph.of(account, secret, "Instagram", base)


def _comment(
    account: ChannelAccount, own_id: str | None, field: str, value: Json, entry: Json, out: Parsed
) -> None:
    cid = lenient.ident(value.get("id"), 512)
    sender = lenient.obj(value.get("from"))
    who = lenient.ident(sender.get("id"))
    if cid is None or (own_id is not None and who == own_id):
        return  # unreadable, or the account's own comment / reply (an echo)
    if who is None:
        raise ValueError("an Instagram comment without a readable author (from.id)")
    media = lenient.obj(value.get("media"))
    media_id = lenient.ident(media.get("id")) or "unknown"
    meta: dict[str, str | int | bool | None] = {
        "media_id": media_id,
        "comment_id": cid,
        "media_product_type": lenient.clip(media.get("media_product_type"), 64),
        "ad_id": lenient.ident(media.get("ad_id")),
        "username": lenient.clip(sender.get("username"), 256),
    }
    if field == "live_comments":
        meta["live"] = True
    out.messages.append(
        InboundMessage(
            channel="instagram",
            account=account.account,
            provider_id=cid,
            thread_id=f"comment:{media_id}:{who}",
            sender=Sender(
                external_user_id=who,
                name=lenient.clip(sender.get("username") or sender.get("name"), 256),
            ),
            text=lenient.text(value.get("text")) or "[comment]",
            # Comment entries give seconds (observed), messaging ones ms: epoch guesses.
            sent_at=lenient.epoch(value.get("timestamp")) or lenient.epoch(entry.get("time")),
            reply_to=who,
            kind="comment",
            post=PostRef(
                id=media_id,
                url=lenient.url(media.get("permalink")),
                text=lenient.clip(media.get("caption"), 2000),
            ),
            parent_id=lenient.ident(value.get("parent_id"), 512),
            meta={k: v for k, v in meta.items() if v is not None},
        )
    )


class InstagramChannel(WebhookChannel):
    name = "instagram"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        if req.method == "GET":
            handshake(account, req.query)
        else:
            verify_signature(account, req, SECRETS)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        if req.method == "GET":
            return handshake(account, req.query)
        body = lenient.load_object(req.body)
        parsed = Parsed()
        if body.get("object", "instagram") != "instagram":
            return parsed
        configured = setting_str(account, "ig_user_id")
        for entry in lenient.objs(body.get("entry")):
            entry_id = lenient.ident(entry.get("id"))
            # A dashboard test notification comes with entry.id "0".
            own_id = configured or (entry_id if entry_id != "0" else None)
            if configured and entry_id not in (configured, "0", None):
                log.info("instagram.other_account", account=account.account, ig_id=entry_id)
                continue
            items = [*lenient.objs(entry.get("messaging")), *lenient.objs(entry.get("standby"))]
            for change in lenient.objs(entry.get("changes")):
                field = str(change.get("field"))
                value = lenient.obj(change.get("value"))
                if field in MESSAGING_FIELDS:
                    items.append(value)
                elif field in COMMENT_FIELDS:
                    try:
                        _comment(account, own_id, field, value, entry, parsed)
                    except Exception as exc:
                        parsed.unreadable.append(skipped("instagram", value, exc, account))
            for item in items:
                try:
                    read_item(FLAVOUR, account.account, own_id, item, parsed)
                except Exception as exc:  # one unreadable item: the rest is stored
                    parsed.unreadable.append(skipped("instagram", item, exc, account))
        return parsed

    # --- outbound ---------------------------------------------------------------------

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        check(account, msg, _spec(account))

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        return await send(_graph(account, secret), account, msg, _spec(account))

    async def moderate(
        self, account: ChannelAccount, secret: str | None, comment_id: str, action: Action
    ) -> None:
        await moderate(_graph(account, secret), _spec(account), comment_id, action)
