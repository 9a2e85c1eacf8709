"""Reading one Telegram ``Update`` (the inbound half of channels/telegram.py).

python-telegram-bot's ``Update.de_json`` reads the update where the library accepts it
(:func:`read_with_library`); where it does not — older Bot API versions lack
``from.is_bot``, ``file_unique_id``, a sticker's ``type`` … — a tolerant reading of the raw
JSON takes over (:func:`read_raw`). Both fill the same :class:`_Msg`, so the stored
message does not depend on which one read it (tests/test_channel_telegram.py checks it).
Every value passes the lenient readers of channels/lenient.py: ids of any size are kept
as strings, implausible dates are None, over-long names are cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from telegram import Message, Update

from channels import lenient
from channels.base import (
    Attachment,
    InboundMessage,
    MessageDeletion,
    MessageEdit,
    Parsed,
    Reachability,
    Sender,
    WebhookError,
)
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.telegram")

CHANNEL = "telegram"


def _phone(raw: str) -> str:
    """Telegram gives international numbers, often without the plus."""
    return raw if raw.startswith("+") else "+" + raw


@dataclass(frozen=True, slots=True)
class _Msg:
    """What we read of one Telegram message — from python-telegram-bot's ``Message`` when
    it accepts the update, else from the raw JSON (:func:`_raw_msg`). Both readers fill
    the same fields, so the stored message does not depend on which one read it."""

    chat_id: str
    message_id: str | None
    chat_type: str | None
    chat_name: str | None
    # The author: a user, a chat posting on its own behalf (sender_chat), or None.
    user_id: str | None
    user_name: str | None
    username: str | None
    sender_chat_id: str | None
    sender_chat_name: str | None
    text: str
    attachments: list[Attachment]
    date: datetime | None
    edit_date: datetime | None
    business_connection_id: str | None
    from_business_bot: bool
    topic: str | None
    media_group_id: str | None
    # The phone of a contact the sender shared of themselves.
    own_phone: str | None


def _full_name(first: Any, last: Any) -> str | None:
    return lenient.clip(
        " ".join(p for p in (lenient.clip(first, 256), lenient.clip(last, 256)) if p), 256
    )


def _file(kind: str, f: Mapping[str, Any]) -> Attachment:
    return Attachment(
        kind=kind,
        file_id=lenient.ident(f.get("file_id"), 512),
        size=lenient.size(f.get("file_size")),
        name=lenient.clip(f.get("file_name"), 512),
        mime_type=lenient.clip(f.get("mime_type"), 255),
    )


FILE_KINDS = (
    ("document", "file"),
    ("audio", "audio"),
    ("voice", "voice"),
    ("video", "video"),
    ("video_note", "video_note"),
    ("animation", "animation"),
)


def _raw_attachments(m: Mapping[str, Any]) -> list[Attachment]:
    """Attachment metadata of a message as JSON (the reading of :func:`_attachments`)."""
    out: list[Attachment] = []
    sizes = list(lenient.objs(m.get("photo")))
    if sizes:
        p = sizes[-1]  # the largest size
        out.append(
            Attachment(
                kind="image",
                file_id=lenient.ident(p.get("file_id"), 512),
                mime_type="image/jpeg",
                size=lenient.size(p.get("file_size")),
            )
        )
    for key, kind in FILE_KINDS:
        if f := lenient.obj(m.get(key)):
            out.append(_file(kind, f))
    if s := lenient.obj(m.get("sticker")):
        mime = (
            "application/x-tgsticker"
            if s.get("is_animated") is True
            else "video/webm"
            if s.get("is_video") is True
            else "image/webp"
        )
        out.append(
            Attachment(
                kind="sticker",
                file_id=lenient.ident(s.get("file_id"), 512),
                name=lenient.clip(s.get("emoji"), 512),
                mime_type=mime,
                size=lenient.size(s.get("file_size")),
            )
        )
    loc = lenient.obj(m.get("location"))
    lat, lon = lenient.number(loc.get("latitude")), lenient.number(loc.get("longitude"))
    if lat is not None and lon is not None:
        venue = lenient.obj(m.get("venue"))
        out.append(
            Attachment(
                kind="location", url=f"geo:{lat},{lon}", name=lenient.clip(venue.get("title"), 512)
            )
        )
    if c := lenient.obj(m.get("contact")):
        phone = lenient.clip(c.get("phone_number"), 60)
        out.append(
            Attachment(
                kind="contact",
                url=f"tel:{_phone(phone)}" if phone else None,
                name=_full_name(c.get("first_name"), c.get("last_name")),
            )
        )
    return out


def _raw_msg(m: Mapping[str, Any]) -> _Msg:
    """Read a message from its JSON, whatever python-telegram-bot would refuse in it
    (older Bot API versions lack ``is_bot``, ``file_unique_id``, a sticker's ``type`` …).
    Raises :class:`WebhookError` only when the chat cannot be read."""
    chat = lenient.obj(m.get("chat"))
    chat_id = lenient.ident(chat.get("id"), 128)
    if chat_id is None:
        raise WebhookError("a Telegram message without a readable chat id")
    user = lenient.obj(m.get("from"))
    sender_chat = lenient.obj(m.get("sender_chat"))
    user_id = lenient.ident(user.get("id"), 128)
    contact = lenient.obj(m.get("contact"))
    own = user_id is not None and lenient.ident(contact.get("user_id"), 128) == user_id
    phone = lenient.clip(contact.get("phone_number"), 60) if own else None
    topic = (
        lenient.ident(m.get("message_thread_id"), 64) if m.get("is_topic_message") is True else None
    )
    return _Msg(
        chat_id=chat_id,
        message_id=lenient.ident(m.get("message_id"), 128),
        chat_type=lenient.clip(chat.get("type"), 32),
        chat_name=_full_name(chat.get("first_name"), chat.get("last_name"))
        or lenient.clip(chat.get("title"), 256),
        user_id=user_id,
        user_name=_full_name(user.get("first_name"), user.get("last_name")),
        username=lenient.clip(user.get("username"), 64),
        sender_chat_id=lenient.ident(sender_chat.get("id"), 128),
        sender_chat_name=lenient.clip(sender_chat.get("title"), 256),
        text=lenient.text(m.get("text")) or lenient.text(m.get("caption")),
        attachments=_raw_attachments(m),
        date=lenient.epoch(m.get("date")),
        edit_date=lenient.epoch(m.get("edit_date")),
        business_connection_id=lenient.ident(m.get("business_connection_id"), 200),
        from_business_bot=bool(lenient.obj(m.get("sender_business_bot"))),
        topic=topic,
        media_group_id=lenient.ident(m.get("media_group_id"), 128),
        own_phone=_phone(phone) if phone else None,
    )


def _attachments(m: Message) -> list[Attachment]:
    out: list[Attachment] = []
    if m.photo:
        p = m.photo[-1]  # the largest size
        out.append(
            Attachment(
                kind="image",
                file_id=lenient.ident(p.file_id, 512),
                mime_type="image/jpeg",
                size=lenient.size(p.file_size),
            )
        )
    files = (
        ("file", m.document),
        ("audio", m.audio),
        ("voice", m.voice),
        ("video", m.video),
        ("video_note", m.video_note),
        ("animation", m.animation),
    )
    for kind, f in files:
        if f is not None:
            out.append(
                Attachment(
                    kind=kind,
                    file_id=lenient.ident(f.file_id, 512),
                    size=lenient.size(f.file_size),
                    name=lenient.clip(getattr(f, "file_name", None), 512),
                    mime_type=lenient.clip(getattr(f, "mime_type", None), 255),
                )
            )
    if (s := m.sticker) is not None:
        mime = (
            "application/x-tgsticker"
            if s.is_animated is True
            else "video/webm"
            if s.is_video is True
            else "image/webp"
        )
        out.append(
            Attachment(
                kind="sticker",
                file_id=lenient.ident(s.file_id, 512),
                name=lenient.clip(s.emoji, 512),
                mime_type=mime,
                size=lenient.size(s.file_size),
            )
        )
    if (loc := m.location) is not None:
        lat, lon = lenient.number(loc.latitude), lenient.number(loc.longitude)
        if lat is not None and lon is not None:
            name = lenient.clip(m.venue.title, 512) if m.venue else None
            out.append(Attachment(kind="location", url=f"geo:{lat},{lon}", name=name))
    if (c := m.contact) is not None:
        phone = lenient.clip(c.phone_number, 60)
        out.append(
            Attachment(
                kind="contact",
                url=f"tel:{_phone(phone)}" if phone else None,
                name=_full_name(c.first_name, c.last_name),
            )
        )
    return out


def _ptb_msg(m: Message) -> _Msg:
    """Read a message python-telegram-bot accepted (its values still pass the same
    lenient readers: the library does not check types)."""
    chat_id = lenient.ident(m.chat.id, 128)
    if chat_id is None:
        raise WebhookError("a Telegram message without a readable chat id")
    u, sc = m.from_user, m.sender_chat
    user_id = lenient.ident(u.id, 128) if u is not None else None
    own = (
        m.contact is not None
        and user_id is not None
        and lenient.ident(m.contact.user_id, 128) == user_id
    )
    phone = lenient.clip(m.contact.phone_number, 60) if own and m.contact else None
    return _Msg(
        chat_id=chat_id,
        message_id=lenient.ident(m.message_id, 128),
        chat_type=lenient.clip(m.chat.type, 32),
        chat_name=_full_name(m.chat.first_name, m.chat.last_name)
        or lenient.clip(m.chat.title, 256),
        user_id=user_id,
        user_name=_full_name(u.first_name, u.last_name) if u is not None else None,
        username=lenient.clip(u.username, 64) if u is not None else None,
        sender_chat_id=lenient.ident(sc.id, 128) if sc is not None else None,
        sender_chat_name=lenient.clip(sc.title, 256) if sc is not None else None,
        text=lenient.text(m.text) or lenient.text(m.caption),
        attachments=_attachments(m),
        date=lenient.plausible(m.date),
        edit_date=lenient.plausible(m.edit_date),
        business_connection_id=lenient.ident(m.business_connection_id, 200),
        from_business_bot=m.sender_business_bot is not None,
        topic=lenient.ident(m.message_thread_id, 64) if m.is_topic_message is True else None,
        media_group_id=lenient.ident(m.media_group_id, 128),
        own_phone=_phone(phone) if phone else None,
    )


def _sender(m: _Msg) -> Sender:
    if m.sender_chat_id is not None:  # on behalf of a chat (anonymous admin, linked channel)
        return Sender(external_user_id=m.sender_chat_id, name=m.sender_chat_name)
    if m.user_id is None:
        return Sender(external_user_id=m.chat_id, name=m.chat_name)
    return Sender(external_user_id=m.user_id, name=m.user_name, phone=m.own_phone)


def _is_owner_echo(m: _Msg) -> bool:
    """A business-chat message written by the business owner (or a bot for them)."""
    return m.business_connection_id is not None and (
        m.from_business_bot or (m.user_id is not None and m.user_id != m.chat_id)
    )


def _provider_id(m: _Msg, update_id: str | None, body: bytes) -> str:
    """``{chat}:{message_id}`` (see :func:`provider_id`); a message whose id cannot be
    read is keyed by its update id, else by the body's hash (redeliveries still dedupe)."""
    message_id = m.message_id or (f"u{update_id}" if update_id else lenient.body_id(body))
    pid = f"{m.chat_id}:{message_id}"
    return f"{m.business_connection_id}:{pid}" if m.business_connection_id else pid


def _reply_address(m: _Msg) -> str:
    """:class:`Address` ``encode()``'s format, from the ids as read (strings)."""
    fields = {
        "chat_id": m.chat_id,
        "business_connection_id": m.business_connection_id,
        "message_thread_id": m.topic,
    }
    return urlencode({k: v for k, v in fields.items() if v is not None})


def _inbound(
    account: ChannelAccount, update_id: Any, m: _Msg, body: bytes
) -> InboundMessage | None:
    if (not m.text and not m.attachments) or _is_owner_echo(m):
        return None
    thread = ":".join(p for p in (m.business_connection_id, m.chat_id, m.topic) if p)
    uid = lenient.int64(update_id)
    meta: dict[str, str | int | bool | None] = {
        "update_id": uid if uid is not None else lenient.ident(update_id, 64),
        "chat_type": m.chat_type,
        "username": m.username,
        "business_connection_id": m.business_connection_id,
        "media_group_id": m.media_group_id,
    }
    return InboundMessage(
        channel=CHANNEL,
        account=account.account,
        provider_id=_provider_id(m, lenient.ident(update_id, 64), body),
        thread_id=thread,
        sender=_sender(m),
        text=m.text,
        sent_at=m.date,
        attachments=m.attachments,
        reply_to=_reply_address(m),
        meta={k: v for k, v in meta.items() if v is not None},
    )


def _edit(account: ChannelAccount, m: _Msg) -> MessageEdit:
    if m.message_id is None:
        raise WebhookError("an edited Telegram message without a readable message_id")
    return MessageEdit(
        channel=CHANNEL,
        account=account.account,
        provider_id=_provider_id(m, None, b""),
        text=m.text,
        attachments=m.attachments,
        edited_at=m.edit_date,
    )


def _reachability(account: ChannelAccount, cmu: Mapping[str, Any]) -> Reachability | None:
    """``my_chat_member`` (as JSON) in a private chat: the user blocked / unblocked the bot."""
    status = lenient.obj(cmu.get("new_chat_member")).get("status")
    if lenient.obj(cmu.get("chat")).get("type") != "private" or status not in ("kicked", "member"):
        return None
    u = lenient.obj(cmu.get("from"))
    user_id = lenient.ident(u.get("id"), 128)
    if user_id is None:
        return None
    return Reachability(
        channel=CHANNEL,
        account=account.account,
        sender=Sender(
            external_user_id=user_id, name=_full_name(u.get("first_name"), u.get("last_name"))
        ),
        reachable=status == "member",
        at=lenient.epoch(cmu.get("date")),
        reason="blocked the bot" if status == "kicked" else "unblocked the bot",
    )


def _deletions(account: ChannelAccount, gone: Mapping[str, Any]) -> list[MessageDeletion]:
    """``deleted_business_messages``: the customer deleted messages in a business chat.
    The update carries no time of the deletion (the store uses when it was received)."""
    connection = lenient.ident(gone.get("business_connection_id"), 200)
    chat = lenient.ident(lenient.obj(gone.get("chat")).get("id"), 128)
    if connection is None or chat is None:
        return []
    ids = gone.get("message_ids")
    return [
        MessageDeletion(
            channel=CHANNEL, account=account.account, provider_id=f"{connection}:{chat}:{mid}"
        )
        for mid in (lenient.ident(i, 128) for i in (ids if isinstance(ids, list) else []))
        if mid is not None
    ]


MESSAGE_KEYS = ("message", "business_message")
EDIT_KEYS = ("edited_message", "edited_business_message")


def read_with_library(raw: dict[str, Any]) -> tuple[str, _Msg] | None:
    """(the update's kind, its message) through python-telegram-bot's models; None for
    an update without a message we read. Raises whatever the library raises for input
    it does not accept."""
    update = Update.de_json(raw, None)
    for kind, m in (
        ("message", update.message),
        ("message", update.business_message),
        ("edit", update.edited_message),
        ("edit", update.edited_business_message),
    ):
        if m is not None:
            return kind, _ptb_msg(m)
    return None


def read_raw(raw: dict[str, Any]) -> tuple[str, _Msg] | None:
    """:func:`read_with_library` over the raw JSON, for updates the library refuses."""
    for keys, kind in ((MESSAGE_KEYS, "message"), (EDIT_KEYS, "edit")):
        for key in keys:
            if key in raw and raw[key] is not None:
                if not (m := lenient.obj(raw[key])):  # a list of one object is read
                    raise WebhookError(f"the update's {key} is not an object")
                return kind, _raw_msg(m)
    return None


def read_update(account: ChannelAccount, body: bytes) -> Parsed:
    """One Update: python-telegram-bot's models where they accept it, a tolerant reading
    of the JSON where they do not. Raises :class:`WebhookError` only for a body that is
    not a JSON object, or a message whose chat (or an edit whose message id) cannot be
    read — ingest keeps such a delivery as ``unparsed``."""
    raw = lenient.load_object(body)
    try:
        found = read_with_library(raw)
    except Exception as exc:  # a third-party model over untrusted input: any exception
        log.debug("telegram.update_read_raw", reason=type(exc).__name__)
        found = read_raw(raw)
    if found is None:
        if isinstance(cmu := raw.get("my_chat_member"), dict):
            r = _reachability(account, cmu)
            return Parsed(reachability=[r] if r else [])
        if isinstance(gone := raw.get("deleted_business_messages"), dict):
            return Parsed(deletions=_deletions(account, gone))
        return Parsed()  # channel posts, callback queries, polls …: not customer messages
    kind, m = found
    if kind == "edit":
        return Parsed(edits=[_edit(account, m)])
    msg = _inbound(account, raw.get("update_id"), m, body)
    return Parsed(messages=[msg] if msg else [])
