"""VK communities: the Callback API in, ``messages.send`` out.

Inbound: VK POSTs one JSON event per request to ``/webhooks/vk/{account}``::

    {"type": "message_new", "group_id": 1, "event_id": "…", "v": "5.199",
     "secret": "…", "object": {"message": {…}, "client_info": {…}}}

* ``secret`` (the Callback API "secret key") is compared in constant time; a wrong or
  missing one, or an event for another community, is refused with 403 and nothing is
  stored. Malformed JSON → 400.
* ``confirmation`` is answered with the configured confirmation string (plain text);
  every other event with the body ``ok`` — also the ones we ignore.
* ``message_new`` (API ≥ 5.103: ``object.message``; older: the message is ``object``)
  → :class:`InboundMessage`. ``provider_id`` is ``<peer_id>_<conversation_message_id>``
  (``id<message id>`` without one, ``event<event_id>`` without either, else a hash of
  the body), so a redelivered event (same ``event_id``) or the same message in a new
  event is stored once. ``X-Retry-Counter`` is informational.
* The reader is lenient (channels/lenient.py): ids of any size (beyond 64 bits kept as
  strings in ``meta``), implausible dates → None, an attachment out of the model's limits
  is skipped. The secret lives in the body, so a body that is not a JSON object with a
  string ``type`` is refused with 400 by ``authenticate``.
* The community's own messages (``message_reply``, ``out=1``, ``from_id = -group_id``)
  are echoes, not inbound. A customer's ``message_edit`` → :class:`MessageEdit`.
* ``message_allow`` / ``message_deny`` → :class:`Reachability`; ``message_read`` (the
  customer read our message ``read_message_id``) → a ``read`` :class:`StatusUpdate`.
* Comments (channels/vk_comments.py): ``wall_reply_*``, ``photo_comment_*``,
  ``video_comment_*``, ``market_comment_*`` (``_new`` / ``_edit`` / ``_restore`` /
  ``_delete``) → comment messages, edits and deletions (a restore is the comment plus an
  edit restoring its text, which lifts the deletion: crm_store/updates.py). The community's own
  comments are echoes. Public replies go out with ``wall.createComment`` (or
  ``photos``/``video``/``market.createComment``), private ones with ``messages.send`` to
  the commenter; :meth:`VkChannel.moderate` deletes a comment (VK cannot hide one).

Outbound: ``messages.send`` with ``peer_id``, ``message``, ``random_id`` and API version
5.199 through the ``vk_api`` package. It is synchronous (requests, ``time.sleep``
throttling under a lock), so it runs in a worker thread. ``random_id`` is derived from
our message id: a retry of the same message cannot be delivered twice.

Account settings (``channels.yaml``):

``group_id``              community id, a positive number (required)
``confirmation``          the string VK expects back for ``type=confirmation`` (required)
``callback_secret_env``   NAME of the env var holding the Callback API secret key
                          (required: without it every request is refused)
``api_base``              API base URL, default ``https://api.vk.ru``
``timeout_s``             timeout of one API call in seconds (an int, or a quoted
                          number like "2.5"), default 10

``secret_env`` names the env var holding the community access token (``messages`` right).
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import jconfig  # type: ignore[import-untyped]
import requests
import vk_api
from pydantic import ValidationError

from channels import lenient
from channels.base import (
    Attachment,
    DeliveryState,
    Forbidden,
    InboundMessage,
    InvalidPayload,
    MessageEdit,
    OutboundMessage,
    Parsed,
    Reachability,
    Sender,
    SendError,
    SendResult,
    StatusUpdate,
    WebhookChannel,
    WebhookError,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.signing import same
from config.models import ChannelAccount

API_VERSION = "5.199"
VK_API_HOST = "https://api.vk.ru"  # hard-coded in vk_api
DEFAULT_TIMEOUT_S = 10.0
MAX_TEXT = 9000
MAX_ATTACHMENTS = 10
CHAT_PEER_BASE = 2_000_000_000  # peer_id of a group chat = 2000000000 + chat_id
OK = "ok"
# Comment events: ``<prefix>_new|_edit|_restore|_delete`` (channels/vk_comments.py).
COMMENT_EVENTS = frozenset({"wall_reply", "photo_comment", "video_comment", "market_comment"})
# Media already on VK, as messages.send's ``attachment`` wants it: photo-1_2[_accesskey].
MEDIA_REF = re.compile(r"[a-z_]+-?\d+_\d+(?:_[0-9A-Za-z]+)?")

# VK error code → seconds to wait before retrying (None: the outbox's backoff).
RETRYABLE: dict[int, float | None] = {
    1: None,  # unknown error
    6: 1.0,  # too many requests per second
    9: 60.0,  # flood control
    10: None,  # internal server error
    29: 60.0,  # rate limit reached (comments)
}
REASONS = {
    5: "VK rejected the community access token",
    7: "the community token lacks the permission ('messages'; 'wall' for comments)",
    15: "VK denied access (the comment or post is not reachable with this token)",
    212: "comments on this post are closed",
    213: "comments on this post are closed",
    222: "VK forbids links in this comment",
    223: "the comment thread has too many replies",
    901: "the user has not allowed messages from this community "
    "(never wrote to it, or turned messages off)",
    902: "the user's privacy settings do not allow messages from this community",
}


class Misconfigured(WebhookError):
    """The account lacks a setting it needs; VK retries until it is fixed."""

    status = 500
    code = "channel_misconfigured"


# --- inbound ------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,40}", value.strip()):
        return int(value)
    return None


def _str(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _url(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 4096 else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> datetime | None:
    """VK times are unix seconds; an implausible one (0, negative, year 9999 …) is None."""
    return lenient.epoch(value)


def _meta_int(value: int) -> int | str:
    """An id for ``meta`` (stored in MongoDB: beyond 64 bits it is kept as a string)."""
    small = lenient.int64(value)
    return small if small is not None else str(value)


def _load(body: bytes) -> dict[str, Any]:
    event = lenient.load_object(body)
    if not isinstance(event.get("type"), str):
        raise WebhookError("event has no 'type'")
    return event


def _group_id(account: ChannelAccount) -> int:
    group = _int(setting_str(account, "group_id"))
    if not group or group < 0:
        raise Misconfigured(f"vk account {account.account!r}: settings.group_id is not set")
    return group


def _authenticate(account: ChannelAccount, event: dict[str, Any]) -> None:
    expected = setting_env(account, "callback_secret_env")
    if not expected:
        raise Forbidden("no callback secret configured (settings.callback_secret_env)")
    given = event.get("secret")
    if not isinstance(given, str) or not same(expected, given):
        raise Forbidden("secret does not match")
    if _int(event.get("group_id")) != _group_id(account):
        raise Forbidden(f"event for group {event.get('group_id')!r}, not this account's")


def _message_of(obj: dict[str, Any]) -> dict[str, Any]:
    """API ≥ 5.103 wraps the message in ``object.message``; older versions send it bare."""
    message = obj.get("message")
    return message if isinstance(message, dict) else obj


def _author(msg: dict[str, Any]) -> int | None:
    """The customer who wrote ``msg``, or None for the community's own messages (echoes),
    other communities' bots and chat service messages."""
    author = _int(msg.get("from_id", msg.get("user_id")))  # user_id: API < 5.80
    if author is None or author <= 0 or msg.get("out") in (1, True) or "action" in msg:
        return None
    return author


def _peer(msg: dict[str, Any], author: int) -> int:
    return _int(msg.get("peer_id")) or _int(msg.get("user_id")) or author


def _provider_id(msg: dict[str, Any], peer: int, event: dict[str, Any]) -> str | None:
    cmid = _int(msg.get("conversation_message_id"))
    if cmid:
        return f"{peer}_{cmid}"
    mid = _int(msg.get("id"))
    if mid:
        return f"id{mid}"
    event_id = lenient.ident(event.get("event_id"), 200)
    return f"event{event_id}" if event_id else None


def _largest(images: Any) -> str | None:
    """URL of the biggest of VK's image sizes (``[{url, width, height}, …]``)."""
    sizes = [s for s in images if isinstance(s, dict)] if isinstance(images, list) else []
    if not sizes:
        return None
    _, best = max(
        enumerate(sizes),
        key=lambda p: ((_int(p[1].get("width")) or 0) * (_int(p[1].get("height")) or 0), p[0]),
    )
    return _url(best.get("url"))


def _attachment(item: Any) -> Attachment | None:
    """Metadata of one ``{type, <type>: {…}}`` attachment; nothing is downloaded."""
    kind = _dict(item).get("type")
    data = _dict(_dict(item).get(kind)) if isinstance(kind, str) else {}
    if not isinstance(kind, str) or not data:
        return None
    owner, media = _int(data.get("owner_id")), _int(data.get("id"))
    ref = f"{kind}{owner}_{media}" if owner is not None and media is not None else None
    if ref and (key := _str(data.get("access_key"), 100)):
        ref += f"_{key}"
    url, name = _url(data.get("url")), None
    if kind in ("photo", "graffiti"):
        return Attachment(kind="image", file_id=ref, url=_largest(data.get("sizes")) or url)
    if kind == "doc":
        ext = _str(data.get("ext"), 16)
        mime = mimetypes.guess_type(f"file.{ext}")[0] if ext else None
        return Attachment(
            kind="file",
            file_id=ref,
            url=url,
            name=_str(data.get("title"), 512),
            mime_type=mime,
            size=lenient.size(_int(data.get("size"))) or None,
        )
    if kind == "audio_message":
        ogg, mp3 = _url(data.get("link_ogg")), _url(data.get("link_mp3"))
        mime = "audio/ogg" if ogg else "audio/mpeg" if mp3 else None
        return Attachment(kind="voice", file_id=ref, url=ogg or mp3, mime_type=mime)
    if kind == "video":
        url = _url(data.get("player")) or (ref and f"https://vk.com/video{owner}_{media}")
        return Attachment(kind="video", file_id=ref, url=url, name=_str(data.get("title"), 512))
    if kind == "sticker":
        sticker = _int(data.get("sticker_id"))
        return Attachment(
            kind="sticker",
            file_id=None if sticker is None else str(sticker),
            url=_largest(data.get("images")),
        )
    if kind == "wall":
        owner = _int(data.get("owner_id", data.get("to_id", data.get("from_id"))))
        post = f"wall{owner}_{media}" if owner is not None and media is not None else None
        return Attachment(kind="wall", file_id=post, url=post and f"https://vk.com/{post}")
    if kind in ("link", "audio"):
        name = _str(data.get("title"), 512)
        if kind == "audio" and name and (artist := _str(data.get("artist"), 256)):
            name = f"{artist} — {name}"[:512]
    return Attachment(kind=kind[:32], file_id=ref, url=url, name=name)


def _geo(msg: dict[str, Any]) -> Attachment | None:
    geo = _dict(msg.get("geo"))
    coords = geo.get("coordinates")
    lat: Any
    lon: Any
    if isinstance(coords, dict):
        lat, lon = coords.get("latitude"), coords.get("longitude")
    elif isinstance(coords, str) and len(parts := coords.split()) == 2:  # older: "55.7 37.6"
        lat, lon = parts
    else:
        return None
    try:
        point = f"geo:{float(lat)},{float(lon)}"
    except (TypeError, ValueError):
        return None
    place = _str(_dict(geo.get("place")).get("title"), 512)
    return Attachment(kind="location", url=point, name=place)


def _attachments(msg: dict[str, Any]) -> list[Attachment]:
    found: list[Attachment | None] = []
    for item in lenient.objs(msg.get("attachments")):
        try:
            found.append(_attachment(item))
        except ValidationError:  # one attachment out of any sane bounds: the rest is kept
            continue
    found.append(_geo(msg))
    return [a for a in found if a is not None]


def _text(msg: dict[str, Any]) -> str:
    return lenient.text(msg.get("text", msg.get("body")))  # body: API < 5.80


def _meta(msg: dict[str, Any], peer: int) -> dict[str, str | int | bool | None]:
    meta: dict[str, str | int | bool | None] = {"vk_peer_id": _meta_int(peer)}
    if cmid := _int(msg.get("conversation_message_id")):
        meta["vk_conversation_message_id"] = _meta_int(cmid)
    if mid := _int(msg.get("id")):
        meta["vk_message_id"] = _meta_int(mid)
    if payload := _str(msg.get("payload"), 1000):  # a keyboard button's payload
        meta["vk_payload"] = payload
    if quoted := _int(_dict(msg.get("reply_message")).get("conversation_message_id")):
        meta["vk_reply_to"] = _meta_int(quoted)
    if isinstance(fwd := msg.get("fwd_messages"), list) and fwd:
        meta["vk_forwarded"] = len(fwd)
    return meta


# --- outbound -----------------------------------------------------------------------


def random_id(message_id: str) -> int:
    """VK's idempotency key for our message: a non-zero signed 32-bit int (the range of
    ``vk_api.utils.get_random_id``) from its id, so every retry sends the same one."""
    value = int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:4], "big", signed=True)
    return value or 1


def _recipient(recipient: str) -> int | None:
    peer = _int(recipient)
    return peer if peer else None


class _ApiSession(requests.Session):
    """vk_api POSTs to its hard-coded host: send that to ``api_base``, with a timeout."""

    def __init__(self, api_base: str, timeout: float) -> None:
        super().__init__()
        self.api_base = api_base
        self.timeout = timeout
        self.headers["User-Agent"] = "omniroute"

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if isinstance(url, str) and url.startswith(VK_API_HOST):
            url = self.api_base + url[len(VK_API_HOST) :]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, *args, **kwargs)


def _api_error(code: int, message: str) -> SendError:
    detail = f"VK error {code}: {message}"
    if code in REASONS:
        detail = f"{REASONS[code]} ({detail})"
    if code in RETRYABLE:
        return SendError(detail, retryable=True, retry_after=RETRYABLE[code], code=f"vk_{code}")
    return SendError(detail, retryable=False, code=f"vk_{code}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def _http_error(response: Any) -> SendError:
    status = int(response.status_code)
    detail = f"VK API answered HTTP {status}"
    if status in (408, 429) or status >= 500:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return SendError(detail, retryable=True, retry_after=retry_after, code=f"http_{status}")
    return SendError(f"{detail}: {response.text[:300]}", retryable=False, code=f"http_{status}")


class VkChannel(WebhookChannel):
    name = "vk"
    ack_reply: str | None = OK
    secret_fields: tuple[str, ...] = ("secret",)
    # What :meth:`moderate` can do to a comment: VK has no hidden comments.
    moderation_actions: tuple[str, ...] = ("delete",)

    def __init__(self) -> None:
        # One vk_api client per account/token: its lock and clock throttle the account.
        self._clients: dict[tuple[str, str, float, str], Any] = {}

    # inbound

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        _authenticate(account, _load(req.body))

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        event = _load(req.body)
        kind, obj = event["type"], _dict(event.get("object"))
        if kind == "confirmation":
            code = setting_str(account, "confirmation")
            if not code:
                raise Misconfigured(f"vk account {account.account!r}: settings.confirmation")
            return Parsed(reply=code)
        try:
            if kind == "message_new":
                msg = self._inbound(account, event, _message_of(obj), req.body)
                return Parsed(messages=[msg] if msg else [], reply=OK)
            if kind == "message_edit":  # the object is the message itself
                edit = self._edit(account, event, obj)
                return Parsed(edits=[edit] if edit else [], reply=OK)
            if kind.rsplit("_", 1)[0] in COMMENT_EVENTS:
                from channels import vk_comments  # it reads with this module's helpers

                return vk_comments.read(account, _group_id(account), kind, obj)
        except ValidationError as exc:
            raise InvalidPayload(f"{kind}: {exc.error_count()} invalid field(s)") from None
        if kind in ("message_allow", "message_deny") and (user := _int(obj.get("user_id"))):
            reach = Reachability(
                channel=self.name,
                account=account.account,
                sender=Sender(external_user_id=str(user)),
                reachable=kind == "message_allow",
                reason=kind,
            )
            return Parsed(reachability=[reach], reply=OK)
        if kind == "message_read":  # the customer read our messages up to this one
            read, reader = _int(obj.get("read_message_id")), _int(obj.get("from_id"))
            if read and reader and reader > 0:
                receipt = StatusUpdate(
                    channel=self.name,
                    account=account.account,
                    provider_id=str(read),
                    state=DeliveryState.READ,
                )
                return Parsed(statuses=[receipt], reply=OK)
        # message_reply (our own messages), typing, wall, group_join …: acknowledged only.
        return Parsed(reply=OK)

    def _inbound(
        self, account: ChannelAccount, event: dict[str, Any], msg: dict[str, Any], body: bytes
    ) -> InboundMessage | None:
        author = _author(msg)
        if author is None:
            return None
        peer = _peer(msg, author)
        # No conversation_message_id, id or event_id: keyed by a hash of the body, so VK's
        # redelivery (the same body) is stored once.
        provider_id = _provider_id(msg, peer, event) or lenient.body_id(body)
        return InboundMessage(
            channel=self.name,
            account=account.account,
            provider_id=provider_id,
            thread_id=str(peer) if peer >= CHAT_PEER_BASE else None,
            sender=Sender(external_user_id=str(author)),
            text=_text(msg),
            sent_at=_time(msg.get("date")),
            attachments=_attachments(msg),
            reply_to=str(peer),
            meta=_meta(msg, peer),
        )

    def _edit(
        self, account: ChannelAccount, event: dict[str, Any], msg: dict[str, Any]
    ) -> MessageEdit | None:
        author = _author(msg)
        if author is None:
            return None
        provider_id = _provider_id(msg, _peer(msg, author), event)
        if provider_id is None or provider_id.startswith("event"):
            return None
        return MessageEdit(
            channel=self.name,
            account=account.account,
            provider_id=provider_id,
            text=_text(msg),
            attachments=_attachments(msg),
            edited_at=_time(msg.get("update_time")),
        )

    # outbound

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        def refuse(detail: str, code: str) -> SendError:
            return SendError(detail, retryable=False, code=code)

        if msg.reply_mode == "public":
            from channels import vk_comments  # it reads with this module's helpers

            if vk_comments.create_call(msg, _group_id(account)) is None:
                raise refuse(
                    f"not a VK comment to answer under: {msg.comment_id!r}", "invalid_comment"
                )
        elif _recipient(msg.recipient) is None:
            raise refuse(f"not a VK peer id: {msg.recipient!r}", "invalid_recipient")
        if len(msg.text) > MAX_TEXT:
            raise refuse(f"VK messages are at most {MAX_TEXT} characters", "text_too_long")
        if len(msg.attachments) > MAX_ATTACHMENTS:
            raise refuse(f"VK takes at most {MAX_ATTACHMENTS} attachments", "too_many_attachments")
        if any(not (a.file_id and MEDIA_REF.fullmatch(a.file_id)) for a in msg.attachments):
            raise refuse(
                "VK sends only media already uploaded to VK: an attachment needs a file_id "
                "like photo-123_456",
                "unsupported_attachment",
            )
        if not msg.text.strip() and not msg.attachments:
            raise refuse("the message is empty", "empty_message")

    def _client(self, account: ChannelAccount, token: str) -> Any:
        base = (setting_str(account, "api_base") or VK_API_HOST).rstrip("/")
        try:
            timeout = float(setting_str(account, "timeout_s") or DEFAULT_TIMEOUT_S)
        except ValueError:
            timeout = DEFAULT_TIMEOUT_S
        key = (account.account, base, timeout, token)
        client = self._clients.get(key)
        if client is None:
            client = vk_api.VkApiGroup(
                token=token,
                api_version=API_VERSION,
                session=_ApiSession(base, timeout),
                config=jconfig.MemoryConfig,
            )
            # vk_api would sleep and retry error 6 forever inside our thread: let the
            # outbox reschedule instead.
            client.error_handlers[vk_api.exceptions.TOO_MANY_RPS_CODE] = lambda _error: None
            self._clients[key] = client
        return client

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        if not secret:
            raise SendError(
                "no community access token configured (secret_env)",
                retryable=False,
                code="not_configured",
            )
        if msg.reply_mode == "public":
            return await self._comment(account, secret, msg)
        rid = random_id(msg.id)
        values: dict[str, Any] = {"peer_id": _recipient(msg.recipient), "random_id": rid}
        if msg.text:
            values["message"] = msg.text
        if msg.attachments:
            values["attachment"] = ",".join(a.file_id or "" for a in msg.attachments)
        result = await self._call(account, secret, "messages.send", values)
        sent = _int(result)
        # A message id is expected; VK may answer 0 where ids are unavailable.
        return SendResult(provider_id=str(sent) if sent and sent > 0 else f"random{rid}")

    async def _comment(
        self, account: ChannelAccount, secret: str, msg: OutboundMessage
    ) -> SendResult:
        """A public reply under a comment (channels/vk_comments.py); ``guid`` = our id,
        so VK does not post a retry twice."""
        from channels import vk_comments

        call = vk_comments.create_call(msg, _group_id(account))
        if call is None:
            raise SendError(
                f"not a VK comment to answer under: {msg.comment_id!r}",
                retryable=False,
                code="invalid_comment",
            )
        result = await self._call(account, secret, *call)
        made = vk_comments.sent_key(msg, result)
        return SendResult(provider_id=made or f"guid{msg.id}")

    async def moderate(
        self, account: ChannelAccount, secret: str | None, comment_id: str, action: str
    ) -> None:
        """Delete a comment (``wall.deleteComment`` …). VK has no hidden comments: hide
        and unhide are refused (code ``not_supported``)."""
        from channels import vk_comments

        if action != "delete":
            raise SendError(
                "VK cannot hide comments, only delete them", retryable=False, code="not_supported"
            )
        call = vk_comments.delete_call(comment_id)
        if call is None:
            raise SendError(
                f"not a VK comment: {comment_id!r}", retryable=False, code="invalid_comment"
            )
        if not secret:
            raise SendError(
                "no community access token configured (secret_env)",
                retryable=False,
                code="not_configured",
            )
        await self._call(account, secret, *call)

    async def _call(
        self, account: ChannelAccount, secret: str, method: str, values: dict[str, Any]
    ) -> Any:
        """One VK API call in a worker thread (vk_api is synchronous); its failures as
        :class:`SendError`."""
        client = self._client(account, secret)
        try:
            return await asyncio.to_thread(client.method, method, values)
        except vk_api.exceptions.ApiError as exc:
            error = _dict(exc.error)
            raise _api_error(int(exc.code), str(error.get("error_msg", ""))) from None
        except vk_api.exceptions.ApiHttpError as exc:
            raise _http_error(exc.response) from None
        except vk_api.exceptions.Captcha:
            raise SendError(
                "VK asks for a captcha (error 14)", retryable=False, code="vk_14"
            ) from None
        except requests.RequestException as exc:  # connection, timeout, non-JSON answer
            raise SendError(
                f"VK API unreachable: {type(exc).__name__}: {exc}"[:1000],
                retryable=True,
                code="network",
            ) from None
        except (KeyError, TypeError):  # JSON without "response"
            raise SendError(
                "VK API answered without a response", retryable=True, code="bad_response"
            ) from None
