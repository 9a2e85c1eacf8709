"""Telegram Bot API channel (webhook mode), in and out.

In: ``POST /webhooks/telegram/{account}`` with one ``Update`` as JSON per request. The
``X-Telegram-Bot-Api-Secret-Token`` header must equal the webhook secret (compared in
constant time; missing, wrong or not configured → 403, nothing stored). The body is read
(channels/telegram_read.py) with python-telegram-bot's ``Update.de_json`` where the
library accepts it, and by a tolerant reading of the raw JSON where it does not (older Bot
API versions lack ``from.is_bot``, ``file_unique_id``, a sticker's ``type`` …; both
readers give the same result). Odd values are dropped or clamped: ids are kept as strings
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
* ``deleted_business_messages`` → one :class:`MessageDeletion` per message id.
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
import logging
import re
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypedDict
from urllib.parse import parse_qs, urlencode

from telegram import Bot, Message, ReplyParameters
from telegram import error as tg
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from channels.base import (
    Forbidden,
    OutboundMessage,
    Parsed,
    SendError,
    SendResult,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.signing import same
from channels.telegram_read import read_update
from config.models import ChannelAccount

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
    if not same(expected, got):
        raise Forbidden(f"missing or wrong {SECRET_HEADER} header")


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
        return read_update(account, req.body)  # channels/telegram_read.py

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
