"""Reading Meta's ``messaging[]`` items (Messenger's Page inbox and Instagram Direct share
them, CHANNEL_PROTOCOLS.md §9.3 and §10.2) into what omniroute stores.

One item is one of: a ``message`` (inbound; an echo of our own is not; ``is_deleted`` is
an unsend), a ``message_edit``, a ``reaction``, a ``delivery`` / ``read`` receipt, a
``postback`` (a button tapped: its title is the text, its payload kept in ``meta``) or a
standalone ``referral`` (the person opened the thread from an ad, an m.me / ig.me link:
kept as a message whose ``meta`` carries the source, so the lead it opens gets it). Items
of any other kind (optins, handover notices …) are skipped.

Lenient throughout (channels/lenient.py): ids of any JSON type stay strings, times in ms
or in seconds (numbers or strings) are read, an unknown attachment type is kept by its
name, a message without a readable ``mid`` is keyed by a hash of the item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from channels import lenient
from channels.base import (
    Attachment,
    DeliveryState,
    InboundMessage,
    MessageDeletion,
    MessageEdit,
    MessageReaction,
    Parsed,
    ReadWatermark,
    Sender,
    StatusUpdate,
)
from channels.identity import normalize_email, normalize_phone
from config.models import ChannelAccount

Json = dict[str, Any]
Meta = dict[str, str | int | bool | None]

# Attachment types whose payload is media (the rest are links: shares, posts, reels …).
MEDIA = {"image": "image", "audio": "audio", "video": "video", "file": "file", "sticker": "sticker"}
# A quick reply's payload that is a phone number (and nothing else: "SIZE_42" is not).
PHONE_LIKE = re.compile(r"\+?[\d\s\-()]{7,24}")
# A recipient that is not a page-scoped id: chat-plugin threads (v7.0+) start with one.
USER_REF = "user_ref:"


@dataclass(frozen=True, slots=True)
class Flavour:
    """Which product an item came through: the channel name and how operators call it."""

    channel: str
    product: str


def _id(value: Any, limit: int = 256) -> str | None:
    return lenient.ident(value, limit)


def _time(value: Any) -> datetime | None:
    return lenient.epoch(value)


def _attachment(att: Json, meta: Meta) -> Attachment:
    kind = lenient.clip(att.get("type"), 32) or "file"
    payload = lenient.obj(att.get("payload"))
    url = lenient.url(payload.get("url")) or lenient.url(att.get("url"))
    if kind == "story_mention":
        meta["story_mention_url"] = url
    if payload.get("sticker_id") is not None:
        meta["sticker_id"] = _id(payload.get("sticker_id"))
    return Attachment(
        kind=MEDIA.get(kind, kind),
        url=url,
        name=lenient.clip(att.get("title") or payload.get("title"), 512),
    )


def _referral(ref: Json, meta: Meta) -> None:
    """An entry point (ad, m.me / ig.me link, chat plugin): kept in ``meta``."""
    for key in ("ref", "source", "type", "ad_id", "referer_uri", "product_id"):
        if (value := ref.get(key)) is not None and (text := lenient.clip(value, 512)):
            meta[f"referral_{key}"] = text
    ads = lenient.obj(ref.get("ads_context_data"))
    if title := lenient.clip(ads.get("ad_title"), 512):
        meta["referral_ad_title"] = title


def _shared_contact(payload: str | None, sender: dict[str, str | None]) -> None:
    """A quick reply of type ``user_phone_number`` / ``user_email`` carries the number or
    address the person tapped as its payload: it joins the contact."""
    if not payload:
        return
    if "@" in payload and (email := normalize_email(payload)):
        sender["email"] = email
    elif PHONE_LIKE.fullmatch(payload) and (phone := normalize_phone(payload)):
        sender["phone"] = phone


def _who(item: Json) -> str | None:
    """The customer's id (PSID / IGSID), or ``user_ref:…`` for a chat-plugin thread."""
    sender = lenient.obj(item.get("sender"))
    if psid := _id(sender.get("id")):
        return psid
    if ref := _id(sender.get("user_ref")):
        return USER_REF + ref
    return None


def _message(
    f: Flavour, account: str, item: Json, who: str, content: Json, meta: Meta
) -> InboundMessage:
    mid = _id(content.get("mid"), 512) or lenient.item_id(item)
    sender: dict[str, str | None] = {}
    attachments = [_attachment(a, meta) for a in lenient.objs(content.get("attachments"))]
    text = lenient.text(content.get("text"))
    quick = lenient.obj(content.get("quick_reply"))
    if (payload := lenient.clip(quick.get("payload"), 512)) is not None:
        meta["quick_reply_payload"] = payload
        _shared_contact(payload, sender)
    reply = lenient.obj(content.get("reply_to"))
    if in_reply_to := _id(reply.get("mid"), 512):
        meta["in_reply_to"] = in_reply_to
    story = lenient.obj(reply.get("story"))
    if story:
        meta["story_id"] = _id(story.get("id"))
        meta["story_url"] = lenient.url(story.get("url"))
    _referral(lenient.obj(content.get("referral")), meta)
    if not text and not attachments:
        if content.get("is_unsupported") is True:
            text = f"[a {f.product} message omniroute cannot show]"
        else:
            text = f"[{f.product} message]"
    elif not text and meta.get("story_mention_url"):
        text = "[mentioned you in their story]"
    return _inbound(f, account, item, who, mid, text, attachments, meta, sender)


def _inbound(
    f: Flavour,
    account: str,
    item: Json,
    who: str,
    mid: str,
    text: str,
    attachments: list[Attachment],
    meta: Meta,
    shared: dict[str, str | None] | None = None,
) -> InboundMessage:
    return InboundMessage(
        channel=f.channel,
        account=account,
        provider_id=mid,
        thread_id=who,
        sender=Sender(external_user_id=who, **(shared or {})),
        text=text,
        sent_at=_time(item.get("timestamp")),
        attachments=attachments,
        reply_to=who,
        meta={k: v for k, v in meta.items() if v is not None},
    )


def read_item(f: Flavour, account: str, own_id: str | None, item: Json, out: Parsed) -> None:
    """Add what one ``messaging[]`` / ``standby[]`` item reports to ``out``."""
    who = _who(item)
    at = _time(item.get("timestamp"))
    meta: Meta = {}
    if "message" in item:
        content = lenient.obj(item.get("message"))
        # An echo: what the page / account itself sent (from here or its own inbox).
        if content.get("is_echo") is True or (own_id is not None and who == own_id):
            if mid := _id(content.get("mid"), 512):
                out.statuses.append(
                    StatusUpdate(
                        channel=f.channel,
                        account=account,
                        provider_id=mid,
                        state=DeliveryState.SENT,
                        at=at,
                    )
                )
            return
        if content.get("is_deleted") is True:
            if mid := _id(content.get("mid"), 512):
                out.deletions.append(
                    MessageDeletion(
                        channel=f.channel, account=account, provider_id=mid, deleted_at=at
                    )
                )
            return
        if who is None:
            raise ValueError(f"a {f.product} message without a readable sender")
        out.messages.append(_message(f, account, item, who, content, meta))
        return
    if "message_edit" in item:
        edit = lenient.obj(item.get("message_edit"))
        if mid := _id(edit.get("mid"), 512):
            out.edits.append(
                MessageEdit(
                    channel=f.channel,
                    account=account,
                    provider_id=mid,
                    text=lenient.text(edit.get("text")),
                    edited_at=at,
                )
            )
        return
    if "reaction" in item:
        r = lenient.obj(item.get("reaction"))
        if mid := _id(r.get("mid"), 512):
            removed = r.get("action") == "unreact"
            emoji = lenient.clip(r.get("emoji"), 64) or lenient.clip(r.get("reaction"), 64)
            out.reactions.append(
                MessageReaction(
                    channel=f.channel,
                    account=account,
                    provider_id=mid,
                    reaction=None if removed else (emoji or "other"),
                    by=who,
                    at=at,
                )
            )
        return
    if "delivery" in item or "read" in item:
        state = DeliveryState.DELIVERED if "delivery" in item else DeliveryState.READ
        receipt = lenient.obj(item.get("delivery") if "delivery" in item else item.get("read"))
        mids = [m for v in _list(receipt.get("mids")) if (m := _id(v, 512))]
        if mid := _id(receipt.get("mid"), 512):  # Instagram's seen names its message
            mids.append(mid)
        when = _time(receipt.get("watermark")) or at
        for m in mids:
            out.statuses.append(
                StatusUpdate(
                    channel=f.channel, account=account, provider_id=m, state=state, at=when
                )
            )
        # A watermark alone ("everything sent before this time") names no message: every
        # outbound message to this person sent up to then moves.
        if not mids and who is not None and (upto := _time(receipt.get("watermark"))):
            out.watermarks.append(
                ReadWatermark(
                    channel=f.channel, account=account, recipient=who, state=state, upto=upto
                )
            )
        return
    if "postback" in item:
        pb = lenient.obj(item.get("postback"))
        if who is None:
            raise ValueError(f"a {f.product} postback without a readable sender")
        payload = lenient.clip(pb.get("payload"), 512)
        meta["postback_payload"] = payload
        _referral(lenient.obj(pb.get("referral")), meta)
        title = lenient.text(pb.get("title")) or payload or "[button]"
        mid = _id(pb.get("mid"), 512) or f"postback:{who}:{item.get('timestamp')}:{payload}"
        out.messages.append(_inbound(f, account, item, who, mid[:512], title, [], meta))
        return
    if "referral" in item:
        ref = lenient.obj(item.get("referral"))
        if who is None:
            raise ValueError(f"a {f.product} referral without a readable sender")
        _referral(ref, meta)
        said = meta.get("referral_ad_id") or meta.get("referral_ref") or meta.get("referral_source")
        text = f"[opened the conversation from {said}]" if said else "[opened the conversation]"
        key = f"referral:{who}:{item.get('timestamp')}:{meta.get('referral_ref')}"
        out.messages.append(_inbound(f, account, item, who, key[:512], text, [], meta))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


def skipped(channel: str, item: dict[str, Any], exc: Exception, account: ChannelAccount) -> str:
    """One item a reader could not read: logged, and described for ``Parsed.unreadable``
    (the whole delivery is then kept as unparsed too)."""
    item_id = lenient.ident(lenient.obj(item.get("message")).get("mid") or item.get("id"), 80)
    structlog.get_logger(f"omniroute.{channel}").warning(
        f"{channel}.item_skipped", account=account.account, id=item_id, error=str(exc)[:200]
    )
    return f"item {item_id or '?'}: {type(exc).__name__}: {str(exc)[:200]}"
