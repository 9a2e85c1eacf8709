"""Viber REST Bot API: signed webhook callbacks in, ``/pa/send_message`` out.

Inbound (``POST /webhooks/viber/{account}``): every callback carries
``X-Viber-Content-Signature`` = hex HMAC-SHA256 of the raw body keyed with the bot's auth
token; a missing or wrong signature is refused with 401 and nothing is stored.

* ``message`` → one :class:`InboundMessage` (text, picture, video, file, sticker, contact,
  location, url; other types keep their text). ``provider_id`` is the ``message_token``, so
  Viber's re-deliveries dedupe. The sender id is both the conversation (``thread_id``) and
  the reply address (``reply_to``); a shared contact's ``phone_number`` becomes
  ``Sender.phone``. Attachments are metadata only (the media URL, size, file name).
* ``delivered`` / ``seen`` / ``failed`` → delivery receipts of our messages (seen = read).
* ``subscribed`` / ``unsubscribed`` / ``conversation_started`` (and every message, since
  a message re-subscribes its sender) → contact reachability. ``conversation_started`` is
  answered with an empty body: Viber would send a non-empty one as a welcome message.
* ``webhook`` (the check Viber makes on ``set_webhook``) and anything else → 200, ignored.
* The reader is lenient (channels/lenient.py): ids of any JSON type and size are kept as
  strings, implausible timestamps are None, names are cut to the model's limits, a
  message without a readable ``message_token`` is keyed by a hash of the body. A body that
  is not a JSON object, or a message without ``sender.id`` or ``message``, raises: ingest
  keeps such a delivery as ``unparsed`` (answered 200).

Outbound: ``POST {api_base}/pa/send_message`` with ``X-Viber-Auth-Token``; Viber answers
HTTP 200 with ``status`` 0 and the ``message_token`` the receipts refer to. Status 12
(too many requests), HTTP 429/5xx, timeouts and connection errors are retryable; any
other status fails the message with Viber's ``status_message`` and code
``viber_status_<n>``.

Account settings (``channels.yaml``; the auth token only through ``secret_env``):

``sender_name``         the bot name shown with sent messages, ≤ 28 characters (required
                        to send)
``sender_avatar``       URL of the avatar shown with sent messages (optional)
``api_base``            API base URL (default ``https://chatapi.viber.com``)
``timeout_s``           timeout of one API call in seconds (default 10)
``rate_limit_retry_s``  seconds to wait after Viber's status 12 (default 300)
``event_types``         comma-separated callbacks to subscribe to on registration (default
                        ``delivered,seen,failed,subscribed,unsubscribed,conversation_started``)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import mimetypes
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from channels import lenient
from channels.base import (
    Attachment,
    DeliveryState,
    InboundMessage,
    InvalidPayload,
    OutboundMessage,
    Parsed,
    Reachability,
    Sender,
    SendError,
    SendResult,
    StatusUpdate,
    Unauthorized,
    WebhookChannel,
    WebhookRequest,
    setting_str,
)
from channels.signing import same
from config.models import ChannelAccount

API_BASE = "https://chatapi.viber.com"
SIGNATURE_HEADER = "X-Viber-Content-Signature"
TOKEN_HEADER = "X-Viber-Auth-Token"
DEFAULT_EVENT_TYPES = "delivered,seen,failed,subscribed,unsubscribed,conversation_started"
MAX_TEXT = 7000
MAX_REQUEST_BYTES = 30 * 1024
MAX_SENDER_NAME = 28
STATUS_TOO_MANY_REQUESTS = 12
RECEIPTS = {
    "delivered": DeliveryState.DELIVERED,
    "seen": DeliveryState.READ,
    "failed": DeliveryState.FAILED,
}
MEDIA_KINDS = {"picture": "image", "video": "video", "file": "file"}


def sign(token: str, body: bytes) -> str:
    """The ``X-Viber-Content-Signature`` of a body."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str | None, req: WebhookRequest) -> None:
    if not secret:
        raise Unauthorized("this account has no auth token configured")
    given = req.headers.get(SIGNATURE_HEADER, "").strip().lower()
    if not given:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    if not same(sign(secret, req.body), given):
        raise Unauthorized("signature does not match")


def _obj(value: Any) -> dict[str, Any]:
    return lenient.obj(value)


def _str(value: Any, limit: int = 256) -> str | None:
    """A non-empty string (numbers converted; over-long: cut with a hash), else None."""
    return lenient.ident(value, limit)


def _size(value: Any) -> int | None:
    return lenient.size(value)


def _time(value: Any) -> datetime | None:
    """Viber timestamps are epoch milliseconds (seconds are accepted too); an implausible
    one is None."""
    return lenient.epoch(value)


def _mime(file_name: str | None) -> str | None:
    return mimetypes.guess_type(file_name)[0] if file_name else None


def _content(body: dict[str, Any]) -> tuple[str, list[Attachment], str | None]:
    """Text, attachments and a shared phone number of a ``message`` callback."""
    m = _obj(body.get("message"))
    kind = _str(m.get("type"))
    text = lenient.text(m.get("text"))
    media = lenient.url(m.get("media"))
    if kind in MEDIA_KINDS:
        name = lenient.clip(m.get("file_name"), 512)
        att = Attachment(
            kind=MEDIA_KINDS[kind],
            url=media,
            name=name,
            size=_size(m.get("size")),
            mime_type=_mime(name),
        )
        return text, [att], None
    if kind == "sticker":
        return (
            text,
            [Attachment(kind="sticker", file_id=_str(m.get("sticker_id"), 512), url=media)],
            None,
        )
    if kind == "url":
        return media or text, [], None
    if kind == "location":
        loc = _obj(m.get("location"))
        lat, lon = lenient.number(loc.get("lat")), lenient.number(loc.get("lon"))
        url = f"geo:{lat},{lon}" if lat is not None and lon is not None else None
        return text, [Attachment(kind="location", url=url)], None
    if kind == "contact":
        contact = _obj(m.get("contact"))
        name = lenient.clip(contact.get("name"), 512)
        phone = lenient.clip(contact.get("phone_number"), 4096)
        shared = "\n".join(p for p in (name, phone) if p)
        phone = phone if phone and len(phone) <= 64 else None
        return text or shared, [Attachment(kind="contact", name=name)], phone
    return text, [], None


class ViberChannel(WebhookChannel):
    name = "viber"

    # --- inbound ------------------------------------------------------------------

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(secret, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        body = lenient.load_object(req.body)
        try:
            return self._parse(account.account, body, req.body)
        except ValidationError as exc:
            raise InvalidPayload(
                f"callback does not fit a message: {exc.error_count()} invalid field(s)"
            ) from None

    def _parse(self, acc: str, body: dict[str, Any], raw: bytes) -> Parsed:
        event = _str(body.get("event"))
        at = _time(body.get("timestamp"))
        if event == "message":
            return self._message(acc, body, at, raw)
        if event in RECEIPTS and (token := _str(body.get("message_token"))):
            state = RECEIPTS[event]
            error = None
            if state is DeliveryState.FAILED:
                error = lenient.clip(body.get("desc"), 1000) or "failed on the recipient's side"
            receipt = StatusUpdate(
                channel=self.name, account=acc, provider_id=token, state=state, at=at, error=error
            )
            return Parsed(statuses=[receipt])
        if event in ("subscribed", "conversation_started"):
            uid = _str(_obj(body.get("user")).get("id"))
            subscribed = True if event == "subscribed" else body.get("subscribed")
            # conversation_started: Viber would show a non-empty answer as a welcome message.
            reply = "" if event == "conversation_started" else None
            if uid is None or not isinstance(subscribed, bool):
                return Parsed(reply=reply)
            return Parsed(reachability=[self._reach(acc, uid, subscribed, event, at)], reply=reply)
        if event == "unsubscribed" and (uid := _str(body.get("user_id"))):
            return Parsed(reachability=[self._reach(acc, uid, False, event, at)])
        return Parsed()  # the "webhook" check, and whatever else Viber adds

    def _reach(
        self, acc: str, uid: str, reachable: bool, reason: str, at: datetime | None
    ) -> Reachability:
        return Reachability(
            channel=self.name,
            account=acc,
            sender=Sender(external_user_id=uid),
            reachable=reachable,
            at=at,
            reason=reason,
        )

    def _message(self, acc: str, body: dict[str, Any], at: datetime | None, raw: bytes) -> Parsed:
        # Without a readable message_token the message is keyed by a hash of the body, so
        # Viber's redelivery of it is still stored once.
        token = _str(body.get("message_token"), 512) or lenient.body_id(raw)
        user = _obj(body.get("sender"))
        uid = _str(user.get("id"))
        if uid is None or not _obj(body.get("message")):
            raise InvalidPayload("a message callback needs sender.id and message")
        text, attachments, phone = _content(body)
        meta: dict[str, str | int | bool | None] = {
            f"viber_{k}": v for k in ("country", "language") if (v := lenient.clip(user.get(k), 64))
        }
        kind = lenient.clip(_obj(body.get("message")).get("type"), 64)
        if kind not in (*MEDIA_KINDS, "text", "sticker", "url", "location", "contact"):
            meta["viber_type"] = kind
        name = lenient.clip(user.get("name"), 256)
        msg = InboundMessage(
            channel=self.name,
            account=acc,
            provider_id=token,
            thread_id=uid,
            sender=Sender(phone=phone, name=name, external_user_id=uid),
            text=text,
            sent_at=at,
            attachments=attachments,
            reply_to=uid,
            meta=meta,
        )
        # A message subscribes its sender again (Viber sends no "subscribed" for it).
        return Parsed(messages=[msg], reachability=[self._reach(acc, uid, True, "message", at)])

    # --- outbound -----------------------------------------------------------------

    def _send_body(self, account: ChannelAccount, msg: OutboundMessage) -> dict[str, Any]:
        sender = {"name": setting_str(account, "sender_name") or ""}
        if avatar := setting_str(account, "sender_avatar"):
            sender["avatar"] = avatar
        return {"receiver": msg.recipient, "type": "text", "text": msg.text, "sender": sender}

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        def refuse(code: str, detail: str) -> SendError:
            return SendError(detail, retryable=False, code=code)

        name = setting_str(account, "sender_name") or ""
        if not name.strip():
            raise refuse("viber_sender_name_missing", "settings.sender_name is not set")
        if len(name) > MAX_SENDER_NAME:
            raise refuse(
                "viber_sender_name_too_long",
                f"settings.sender_name is over {MAX_SENDER_NAME} characters",
            )
        if not msg.recipient:
            raise refuse("viber_no_recipient", "the conversation has no Viber user id")
        if msg.attachments:
            raise refuse("viber_attachments_unsupported", "only text can be sent to Viber")
        if not msg.text.strip():
            raise refuse("viber_empty_text", "Viber needs a non-empty text")
        if len(msg.text) > MAX_TEXT:
            raise refuse("viber_text_too_long", f"Viber accepts at most {MAX_TEXT} characters")
        if len(orjson.dumps(self._send_body(account, msg))) > MAX_REQUEST_BYTES:
            raise refuse("viber_request_too_large", "the request is over Viber's 30 KB limit")

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        self.check_outbound(account, msg)
        data = await self._call(account, secret, "send_message", self._send_body(account, msg))
        token = _str(data.get("message_token"))
        if token is None:
            raise SendError(
                "Viber answered ok without a message_token",
                retryable=False,
                code="viber_bad_response",
            )
        return SendResult(provider_id=token)

    async def register_webhook(
        self, account: ChannelAccount, secret: str | None, base_url: str
    ) -> str:
        url = f"{base_url.rstrip('/')}/webhooks/{self.name}/{account.account}"
        events = setting_str(account, "event_types", DEFAULT_EVENT_TYPES) or ""
        body = {
            "url": url,
            "event_types": [e.strip() for e in events.split(",") if e.strip()],
            "send_name": True,
        }
        await self._call(account, secret, "set_webhook", body)
        return url

    async def _call(
        self, account: ChannelAccount, secret: str | None, method: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST one API method; the answer of status 0, else :class:`SendError`."""
        if not secret:
            raise SendError(
                "this account has no auth token configured", retryable=False, code="viber_no_token"
            )
        url = f"{(setting_str(account, 'api_base') or API_BASE).rstrip('/')}/pa/{method}"
        timeout_s = _setting_s(account, "timeout_s", 10.0)
        headers = {TOKEN_HEADER: secret, "Content-Type": "application/json"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
                http.post(url, data=orjson.dumps(body), headers=headers) as resp,
            ):
                status, raw = resp.status, await resp.read()
                retry_after = _seconds(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise SendError(
                f"Viber did not answer within {timeout_s:g} s", retryable=True, code="viber_timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise SendError(
                f"cannot reach Viber: {exc}", retryable=True, code="viber_unreachable"
            ) from None
        snippet = raw[:200].decode("utf-8", "replace")
        if status == 429 or status >= 500:
            raise SendError(
                f"Viber HTTP {status}: {snippet}",
                retryable=True,
                retry_after=retry_after,
                code=f"viber_http_{status}",
            )
        if status != 200:
            raise SendError(
                f"Viber HTTP {status}: {snippet}", retryable=False, code=f"viber_http_{status}"
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("status"), int):
            raise SendError(
                f"Viber answered something else than its JSON: {snippet}",
                retryable=True,
                code="viber_bad_response",
            )
        code = data["status"]
        if code == 0:
            return data
        detail = f"Viber: {data.get('status_message') or 'error'} (status {code})"
        if code == STATUS_TOO_MANY_REQUESTS:
            wait = _setting_s(account, "rate_limit_retry_s", 300.0)
            raise SendError(detail, retryable=True, retry_after=wait, code=f"viber_status_{code}")
        raise SendError(detail, retryable=False, code=f"viber_status_{code}")


def _seconds(value: str | None) -> float | None:
    """Non-negative seconds from a setting or a ``Retry-After`` (an HTTP date gives None)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None and math.isfinite(seconds) else None


def _setting_s(account: ChannelAccount, key: str, default: float) -> float:
    value = _seconds(setting_str(account, key)) if key in account.settings else default
    if not value:
        raise SendError(
            f"settings.{key} must be a positive number of seconds",
            retryable=False,
            code="viber_bad_setting",
        )
    return value
