"""Telegram Bot API channel (webhook mode), in and out.

In: ``POST /webhooks/telegram/{account}`` with one ``Update`` as JSON per request. The
``X-Telegram-Bot-Api-Secret-Token`` header must equal the webhook secret (compared in
constant time; missing, wrong or not configured → 403, nothing stored). The body is read
with python-telegram-bot's ``Update.de_json`` where the library accepts it, and by a
tolerant reading of the raw JSON where it does not (older Bot API versions lack
``from.is_bot``, ``file_unique_id``, a sticker's ``type`` …; both readers give the same
result, see :class:`_Msg`). Odd values are dropped or clamped: ids are kept as strings
whatever their size, an implausible ``date`` is None, over-long names are cut. Only a body
that is not a JSON object, a message whose chat id cannot be read, or an edit without a
message id raises (ingest keeps such a delivery as ``unparsed``):

* ``message`` / ``business_message`` → an :class:`InboundMessage` (text or caption; photo,
  document, audio, voice, video, video_note, animation, sticker, location/venue and contact
  as attachment metadata with file ids — nothing is downloaded). A contact the sender
  shares of themselves (``contact.user_id == from.id``) fills ``Sender.phone``, which joins
  the Telegram user to the same person on other channels. Business messages written by the
  business owner (``from.id != chat.id`` in the private business chat) are echoes of our
  side and are ignored; so are service messages that carry nothing we can store.
* ``edited_message`` / ``edited_business_message`` → a :class:`MessageEdit` of the stored
  message (never a new message).
* ``my_chat_member`` in a private chat → :class:`Reachability` (``kicked``: the user
  blocked the bot; ``member``: unblocked).
* Everything else (``channel_post`` — our own channel's posts, not a customer's —,
  callback queries, polls …) is acknowledged (200) and ignored.

``provider_id`` is ``{chat.id}:{message_id}``, prefixed with ``{business_connection_id}:``
in business chats, so a redelivered update (same ``update_id``) dedupes in ``intake`` and an
edit finds its original (a message whose ``message_id`` cannot be read:
``{chat.id}:u{update_id}``, else a hash of the body). An edit carries Telegram's
``edit_date`` as ``edited_at``. ``reply_to`` is ``chat_id=…[&business_connection_id=…]
[&message_thread_id=…]``. The Bot API has no delivery or read receipts, so this channel
reports no :class:`StatusUpdate`; a sent reply stays ``sent``.

Out: ``sendMessage`` (or ``sendPhoto``/``sendDocument``/… for one attachment given by
``file_id`` or URL, the text as its caption) through python-telegram-bot's ``Bot``. The
``Bot`` is created once per token and API base, and initialised once (``getMe``). Errors:
``RetryAfter`` (429) → retryable after ``retry_after``; 5xx, timeouts and connection
errors → retryable; anything else (400 ``chat not found``, 403 ``bot was blocked by the
user``, a migrated group, an invalid token) → failed with Telegram's description. A reply
whose response was lost to a timeout may be delivered twice: the Bot API has no
idempotency key.

Registration: ``setWebhook`` with ``url``, ``secret_token`` and ``allowed_updates``
(``omniroute webhooks register``).

Account settings (``channels.yaml``):

* ``secret_env`` — NAME of the env var holding the bot token (from @BotFather).
* ``settings.webhook_secret_env`` — NAME of the env var holding the webhook secret token
  (1–256 characters of ``A-Z a-z 0-9 _ -``); required to accept webhooks.
* ``settings.api_base`` — Bot API base URL, default ``https://api.telegram.org`` (a local
  Bot API server or a test fake); the token path ``/bot<token>/<method>`` is appended.
* ``settings.timeout_s`` — connect/read/write timeout of Bot API calls in whole seconds,
  default 10.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import parse_qs, urlencode

import structlog
from telegram import Bot, Message, ReplyParameters, Update
from telegram import error as tg
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from channels import lenient
from channels.base import (
    Attachment,
    Forbidden,
    InboundMessage,
    MessageEdit,
    OutboundMessage,
    Parsed,
    Reachability,
    Sender,
    SendError,
    SendResult,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_env,
    setting_str,
)
from config.models import ChannelAccount

log = structlog.get_logger("omniroute.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
DEFAULT_API_BASE = "https://api.telegram.org"
DEFAULT_TIMEOUT_S = 10
ALLOWED_UPDATES = (
    "message",
    "edited_message",
    "business_message",
    "edited_business_message",
    "my_chat_member",
)
MAX_TEXT = 4096
MAX_CAPTION = 1024
SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# Attachment kinds we can send by file_id or URL.
SENDABLE = frozenset({"image", "video", "audio", "voice", "animation", "file"})
TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


class _RedactBotToken(logging.Filter):
    """httpx logs every request URL at INFO, and Bot API URLs carry the bot token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if TOKEN_IN_URL.search(message):
            record.msg, record.args = TOKEN_IN_URL.sub("/bot<token>", message), None
        return True


logging.getLogger("httpx").addFilter(_RedactBotToken())


class MethodNotAllowed(WebhookError):
    status = 405
    code = "method_not_allowed"


@dataclass(frozen=True, slots=True)
class Address:
    """Where a reply goes; encoded into ``InboundMessage.reply_to``."""

    chat_id: int
    business_connection_id: str | None = None
    message_thread_id: int | None = None

    def encode(self) -> str:
        fields = {
            "chat_id": self.chat_id,
            "business_connection_id": self.business_connection_id,
            "message_thread_id": self.message_thread_id,
        }
        return urlencode({k: v for k, v in fields.items() if v is not None})

    @classmethod
    def decode(cls, value: str) -> Address:
        """Parse ``encode()``'s output (a bare chat id is accepted too)."""
        try:
            if value.lstrip("-").isdigit():
                return cls(int(value))
            q = {k: v[0] for k, v in parse_qs(value, strict_parsing=True).items()}
            thread = q.get("message_thread_id")
            return cls(
                int(q["chat_id"]), q.get("business_connection_id"), int(thread) if thread else None
            )
        except (KeyError, ValueError):
            raise SendError(
                f"not a Telegram address: {value!r}", retryable=False, code="bad_recipient"
            ) from None


def provider_id(chat_id: int, message_id: int, business_connection_id: str | None) -> str:
    pid = f"{chat_id}:{message_id}"
    return f"{business_connection_id}:{pid}" if business_connection_id else pid


# --- inbound -------------------------------------------------------------------------


def _verify(account: ChannelAccount, req: WebhookRequest) -> None:
    expected = setting_env(account, "webhook_secret_env")
    if not expected:
        raise Forbidden("this account has no webhook secret configured")
    got = req.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(got.encode("utf-8", "replace"), expected.encode()):
        raise Forbidden(f"missing or wrong {SECRET_HEADER} header")


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
        channel=TelegramChannel.name,
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
        channel=TelegramChannel.name,
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
        channel=TelegramChannel.name,
        account=account.account,
        sender=Sender(
            external_user_id=user_id, name=_full_name(u.get("first_name"), u.get("last_name"))
        ),
        reachable=status == "member",
        at=lenient.epoch(cmu.get("date")),
        reason="blocked the bot" if status == "kicked" else "unblocked the bot",
    )


MESSAGE_KEYS = ("message", "business_message")
EDIT_KEYS = ("edited_message", "edited_business_message")


def _ptb_read(raw: dict[str, Any]) -> tuple[str, _Msg] | None:
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


def _raw_read(raw: dict[str, Any]) -> tuple[str, _Msg] | None:
    """:func:`_ptb_read` over the raw JSON, for updates the library refuses."""
    for keys, kind in ((MESSAGE_KEYS, "message"), (EDIT_KEYS, "edit")):
        for key in keys:
            if key in raw and (m := raw[key]) is not None:
                if not isinstance(m, dict):
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
        found = _ptb_read(raw)
    except Exception as exc:  # a third-party model over untrusted input: any exception
        log.debug("telegram.update_read_raw", reason=type(exc).__name__)
        found = _raw_read(raw)
    if found is None:
        if isinstance(cmu := raw.get("my_chat_member"), dict):
            r = _reachability(account, cmu)
            return Parsed(reachability=[r] if r else [])
        return Parsed()  # channel posts, callback queries, polls …: not customer messages
    kind, m = found
    if kind == "edit":
        return Parsed(edits=[_edit(account, m)])
    msg = _inbound(account, raw.get("update_id"), m, body)
    return Parsed(messages=[msg] if msg else [])


# --- outbound ------------------------------------------------------------------------


class _Target(TypedDict):
    chat_id: int
    business_connection_id: str | None
    message_thread_id: int | None
    reply_parameters: ReplyParameters | None


def _quote(to: Address, in_reply_to: str | None) -> ReplyParameters | None:
    """Quote the message we answer when it is in the same chat."""
    chat, _, message_id = (in_reply_to or "").rpartition(":")
    if (
        chat
        and message_id.isdigit()
        and f"{chat}:0" == provider_id(to.chat_id, 0, to.business_connection_id)
    ):
        return ReplyParameters(int(message_id), allow_sending_without_reply=True)
    return None


def _retry_after_s(exc: tg.RetryAfter) -> float:
    with warnings.catch_warnings():  # int vs timedelta migration notice
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def send_error(exc: tg.TelegramError, token: str | None = None) -> SendError:
    """Map a python-telegram-bot error onto the outbox's retry decision (the bot token,
    which python-telegram-bot puts into some messages, is redacted)."""
    detail = exc.message.replace(token, "<token>") if token else exc.message
    if isinstance(exc, tg.RetryAfter):
        return SendError(
            detail, retryable=True, retry_after=_retry_after_s(exc), code="rate_limited"
        )
    if isinstance(exc, tg.ChatMigrated):
        return SendError(
            f"{detail} (new chat id {exc.new_chat_id})", retryable=False, code="chat_migrated"
        )
    if isinstance(exc, tg.Forbidden):
        return SendError(detail, retryable=False, code="forbidden")
    if isinstance(exc, tg.InvalidToken):
        return SendError(detail, retryable=False, code="invalid_token")
    if isinstance(exc, tg.BadRequest):  # a NetworkError subclass: check it first
        return SendError(detail, retryable=False, code="bad_request")
    if isinstance(exc, tg.Conflict):
        return SendError(detail, retryable=False, code="conflict")
    if isinstance(exc, tg.TimedOut):
        return SendError(detail, retryable=True, code="timeout")
    if isinstance(exc, tg.NetworkError):  # 5xx, other statuses, connection errors
        return SendError(detail, retryable=True, code="unavailable")
    return SendError(detail, retryable=False, code="telegram_error")


class TelegramChannel(WebhookChannel):
    name = "telegram"

    def __init__(self) -> None:
        # One Bot (and its connection pool) per token/API base/timeout, per event loop.
        self._bots: dict[tuple[str, str, int], tuple[asyncio.AbstractEventLoop, Bot]] = {}

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        if req.method != "POST":
            raise MethodNotAllowed("Telegram delivers updates by POST")
        _verify(account, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        return read_update(account, req.body)

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        Address.decode(msg.recipient)
        if len(msg.attachments) > 1:
            raise SendError(
                "Telegram replies carry at most one attachment",
                retryable=False,
                code="too_many_attachments",
            )
        if msg.attachments:
            a = msg.attachments[0]
            if a.kind not in SENDABLE or not (a.file_id or a.url):
                raise SendError(
                    f"cannot send a {a.kind!r} attachment without file_id or url",
                    retryable=False,
                    code="unsupported_attachment",
                )
            if len(msg.text) > MAX_CAPTION:
                raise SendError(
                    f"caption longer than {MAX_CAPTION} characters",
                    retryable=False,
                    code="text_too_long",
                )
        elif not msg.text.strip():
            raise SendError("empty message", retryable=False, code="empty_message")
        elif len(msg.text) > MAX_TEXT:
            raise SendError(
                f"text longer than {MAX_TEXT} characters", retryable=False, code="text_too_long"
            )

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        self.check_outbound(account, msg)
        to = Address.decode(msg.recipient)
        target = _Target(
            chat_id=to.chat_id,
            business_connection_id=to.business_connection_id,
            message_thread_id=to.message_thread_id,
            reply_parameters=_quote(to, msg.in_reply_to),
        )
        try:
            bot = await self._bot(account, secret)
            sent = await (
                self._send_attachment(bot, msg, target)
                if msg.attachments
                else bot.send_message(text=msg.text, **target)
            )
        except tg.TelegramError as exc:
            raise send_error(exc, secret) from exc
        return SendResult(provider_id(to.chat_id, sent.message_id, to.business_connection_id))

    @staticmethod
    async def _send_attachment(bot: Bot, msg: OutboundMessage, target: _Target) -> Message:
        a = msg.attachments[0]
        ref = a.file_id or a.url or ""
        caption = msg.text or None
        if a.kind == "image":
            return await bot.send_photo(photo=ref, caption=caption, **target)
        if a.kind == "video":
            return await bot.send_video(video=ref, caption=caption, **target)
        if a.kind == "audio":
            return await bot.send_audio(audio=ref, caption=caption, **target)
        if a.kind == "voice":
            return await bot.send_voice(voice=ref, caption=caption, **target)
        if a.kind == "animation":
            return await bot.send_animation(animation=ref, caption=caption, **target)
        return await bot.send_document(document=ref, caption=caption, **target)

    async def register_webhook(
        self, account: ChannelAccount, secret: str | None, base_url: str
    ) -> str:
        token = setting_env(account, "webhook_secret_env")
        if not token or not SECRET_TOKEN.match(token):
            raise SendError(
                "settings.webhook_secret_env must name an env var holding 1-256 "
                "characters of A-Z a-z 0-9 _ -",
                retryable=False,
                code="bad_webhook_secret",
            )
        url = f"{base_url.rstrip('/')}/webhooks/{self.name}/{account.account}"
        try:
            async with self._new_bot(account, secret) as bot:
                await bot.set_webhook(
                    url=url, secret_token=token, allowed_updates=list(ALLOWED_UPDATES)
                )
        except tg.TelegramError as exc:
            raise send_error(exc, secret) from exc
        return url

    @staticmethod
    def _key(account: ChannelAccount, token: str | None) -> tuple[str, str, int]:
        """(token, API base, timeout): what a Bot is made of; SendError if unusable."""
        if not token:
            raise SendError(
                f"the bot token env var {account.secret_env!r} is not set",
                retryable=False,
                code="no_token",
            )
        base = (setting_str(account, "api_base") or DEFAULT_API_BASE).rstrip("/")
        timeout = setting_str(account, "timeout_s") or str(DEFAULT_TIMEOUT_S)
        if not timeout.isdigit() or int(timeout) < 1:
            raise SendError(
                f"settings.timeout_s must be a whole number of seconds, not {timeout!r}",
                retryable=False,
                code="bad_settings",
            )
        return token, base, int(timeout)

    @classmethod
    def _new_bot(cls, account: ChannelAccount, token: str | None) -> Bot:
        token, base, t = cls._key(account, token)
        request = HTTPXRequest(connect_timeout=t, read_timeout=t, write_timeout=t, pool_timeout=t)
        # We never call getUpdates: one connection pool serves both of the Bot's slots.
        return Bot(token, base_url=f"{base}/bot", request=request, get_updates_request=request)

    async def _bot(self, account: ChannelAccount, token: str | None) -> Bot:
        key = self._key(account, token)
        loop = asyncio.get_running_loop()
        cached = self._bots.get(key)
        if cached is None or cached[0] is not loop:
            cached = (loop, self._new_bot(account, token))
            self._bots[key] = cached
        bot = cached[1]
        await bot.initialize()  # getMe on first use; a no-op afterwards
        return bot
