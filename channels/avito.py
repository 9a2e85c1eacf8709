"""Avito Messenger: webhook notifications in, the Messenger API out.

Inbound (``POST /webhooks/avito/{account}/{token}``): Avito signs nothing, so the URL we
register carries an unguessable per-account token in its last path segment. It is compared
in constant time with the token in ``settings.webhook_token_env``; a wrong or missing token
(or an account without one) is refused with **403** and nothing is stored.

* ``payload.type == "message"`` → one :class:`InboundMessage`. ``provider_id`` is
  ``payload.value.id`` (re-deliveries dedupe), the sender is the messenger id
  ``author_id``, and the chat (``chat_id``) is both the conversation (``thread_id``) and the
  reply address (``reply_to``). The ad (``item_id``) goes to ``meta["item_id"]`` (routing
  copies it onto the lead), ``chat_type`` to ``meta["avito_chat_type"]``.
* Content by ``type``: ``text``; ``image`` (URL of the largest size); ``voice``
  (``voice_id``; resolve it with ``getVoiceFiles``); ``file`` / ``video`` (whatever
  metadata Avito gives); ``link`` (text + URL); ``item`` (an ad card: title and price as
  text, the ad URL as an attachment); ``location`` (``geo:`` URL, address as text);
  ``call`` / ``appCall`` (a ``call`` attachment, ``meta["avito_call_status"]``). Other
  types keep their text and ``meta["avito_type"]``. Attachments are metadata only.
* ``author_id == user_id`` is our own message (sent from the app, the site or the API):
  not inbound. If it carries ``read``, the customer has read it → a ``read`` receipt.
* ``type == "system"`` (Avito's own notices and bots) → ignored. ``type == "deleted"`` → the
  stored message's text is cleared (an edit, the old text stays in its history).
* Anything else (the ``{}`` probe Avito suggests, other event types) → 200, ignored.
* The reader is lenient (channels/lenient.py): ids of any JSON type and size are kept as
  strings (an over-long one cut, with a hash of the whole), implausible times are None, a
  message without a readable ``id`` is keyed by a hash of the body, and a deletion carries
  the notification's ``timestamp`` as ``edited_at``. A body that is not a JSON object, or
  a message without a readable ``chat_id`` or ``author_id``, raises: ingest keeps such a
  delivery as ``unparsed`` (answered 200).

Outbound: an OAuth2 ``client_credentials`` token (``POST {api_base}/token``) is cached in
memory per API client (``api_base``, ``client_id``), fetched again 5 minutes before it
expires (or at half its lifetime, if shorter), and once more when a call is answered
401/403 (then the call is repeated once with the new token). Replies go to ``POST
{api_base}/messenger/v1/accounts/{user_id}/chats/{chat_id}/messages`` as
``{"message": {"text": …}, "type": "text"}``; the answer's ``id`` is the provider id. Text
over 1000 characters, empty text and attachments are refused before queuing (no
splitting: one reply is one Avito message). HTTP 429 (with ``Retry-After`` when given),
5xx, timeouts and connection errors are retryable; anything else fails the message with
Avito's description and code ``avito_http_<status>`` (``avito_token_…`` for the token).

Webhook registration: ``POST {api_base}/messenger/v3/webhook {"url": …}`` with the
token-bearing URL; Avito checks that the URL answers 200 within 2 s.

Account settings (``channels.yaml``); the client secret only through ``secret_env``:

``client_id``          OAuth2 client id of the Avito application (required to send)
``user_id``            the Avito account id (the ``user_id`` in API paths and payloads;
                       required to send)
``webhook_token_env``  NAME of the env var holding the webhook URL token (at least 16
                       characters, URL-safe; required to receive)
``api_base``           API base URL (default ``https://api.avito.ru``)
``timeout_s``          timeout of one API call in seconds (default 10)
"""

from __future__ import annotations

import asyncio
import math
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
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
    Sender,
    SendError,
    SendResult,
    StatusUpdate,
    WebhookChannel,
    WebhookRequest,
    setting_env,
    setting_str,
)
from channels.signing import same
from config.models import ChannelAccount

API_BASE = "https://api.avito.ru"
MAX_TEXT = 1000
MIN_WEBHOOK_TOKEN = 16
REFRESH_MARGIN_S = 300.0
DEFAULT_EXPIRES_S = 3600.0
Meta = dict[str, str | int | bool | None]


def verify(account: ChannelAccount, req: WebhookRequest) -> None:
    """The path token must equal the account's webhook token (constant-time compare)."""
    expected = setting_env(account, "webhook_token_env")
    if not expected or len(expected) < MIN_WEBHOOK_TOKEN:
        raise Forbidden(
            f"this account has no webhook token of at least {MIN_WEBHOOK_TOKEN} characters "
            "(settings.webhook_token_env)"
        )
    if not same(expected, req.path_token):
        raise Forbidden("missing or wrong webhook token in the URL")


# --- small readers of untrusted JSON -----------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any, limit: int | None = None) -> str | None:
    """A non-empty string (integers converted; cut to ``limit``), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return (text[:limit] if limit else text) or None


def _url(value: Any) -> str | None:
    url = _str(value)
    return url if url and len(url) <= 4096 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _time(value: Any) -> datetime | None:
    """Unix seconds → UTC datetime; an implausible time is None."""
    return lenient.epoch(value)


def _iso(value: Any) -> datetime | None:
    """RFC 3339 (``published_at``) → UTC datetime; an implausible time is None."""
    return lenient.iso_time(value)


def _largest(sizes: Any) -> str | None:
    """The URL of the largest ``"WxH": url`` entry of an image."""
    best: tuple[int, str] | None = None
    for key, url in _obj(sizes).items():
        width, _, height = str(key).partition("x")
        area = int(width) * int(height) if width.isdigit() and height.isdigit() else 0
        if (link := _url(url)) and (best is None or area > best[0]):
            best = (area, link)
    return best[1] if best else None


def _media(kind: str, part: dict[str, Any]) -> Attachment:
    """A file or video; Avito documents no fields for them, so take the usual names."""
    name = _str(part.get("name") or part.get("file_name"), 512)
    return Attachment(
        kind=kind,
        url=_url(part.get("url")),
        file_id=_str(part.get("id") or part.get(f"{kind}_id"), 512),
        name=name,
        mime_type=_str(part.get("mime_type"), 255)
        or (mimetypes.guess_type(name)[0] if name else None),
        size=_size(part.get("size")),
    )


def _content(kind: str, content: dict[str, Any]) -> tuple[str, list[Attachment], Meta]:
    """Text, attachments and extra meta of one message, by its ``type``."""
    text = _text(content.get("text"))
    part = _obj(content.get(kind))
    if kind == "text":
        return text, [], {}
    if kind == "image":
        return text, [Attachment(kind="image", url=_largest(part.get("sizes")))], {}
    if kind == "voice":
        return text, [Attachment(kind="voice", file_id=_str(part.get("voice_id"), 512))], {}
    if kind in ("file", "video"):
        return text, [_media(kind, part)], {}
    if kind == "link":
        url = _url(part.get("url"))
        caption = _text(part.get("text")) or text
        if url and url not in caption:
            caption = f"{caption}\n{url}" if caption else url
        return caption, [], {}
    if kind == "item":
        title = _str(part.get("title"), 512)
        label = " — ".join(p for p in (title, _str(part.get("price_string"))) if p)
        return (
            label or text,
            [Attachment(kind="item", url=_url(part.get("item_url")), name=title)],
            {},
        )
    if kind == "location":
        lat, lon = part.get("lat"), part.get("lon")
        geo = f"geo:{lat},{lon}" if all(isinstance(v, int | float) for v in (lat, lon)) else None
        title = _str(part.get("title"), 512)
        place = _text(part.get("text")) or text or title or ""
        return place, [Attachment(kind="location", url=geo, name=title)], {}
    if kind in ("call", "appCall"):
        status = _str((_obj(content.get("call")) or part).get("status"), 64)
        return text, [Attachment(kind="call")], {"avito_call_status": status} if status else {}
    return text, [], {"avito_type": kind[:64]}


# --- outbound helpers --------------------------------------------------------------------


def _seconds(value: str | None) -> float | None:
    """Non-negative seconds from a setting or a ``Retry-After`` (an HTTP date gives None)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None and math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class _Api:
    """What one account needs to call the API."""

    base: str
    client_id: str
    client_secret: str
    timeout_s: float

    @property
    def key(self) -> tuple[str, str]:
        return self.base, self.client_id


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    data: Any
    raw: bytes
    retry_after: float | None

    def reason(self) -> str:
        """Avito's description of an error, whichever of its shapes it came in."""
        data = _obj(self.data)
        error = data.get("error")
        if isinstance(error, dict) and (message := _str(error.get("message"))):
            return message
        parts = [_str(error), _str(data.get("error_description")), _str(data.get("message"))]
        found = [p for p in parts if p]
        if found:
            return ": ".join(found)
        return self.raw[:200].decode("utf-8", "replace").strip() or "no details"


def _fail(answer: _Answer, what: str, code: str) -> SendError:
    """The SendError for a non-2xx answer: 429 and 5xx retryable, the rest permanent."""
    retryable = answer.status == 429 or answer.status >= 500
    return SendError(
        f"{what} HTTP {answer.status}: {answer.reason()}",
        retryable=retryable,
        retry_after=answer.retry_after if retryable else None,
        code=f"{code}_http_{answer.status}",
    )


async def _call(
    http: aiohttp.ClientSession,
    url: str,
    *,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
) -> _Answer:
    headers = {"Accept": "application/json"}
    data: bytes | dict[str, str] | None = form
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = orjson.dumps(body)
    try:
        async with http.post(url, data=data, headers=headers) as resp:
            raw = await resp.read()
            retry_after = _seconds(resp.headers.get("Retry-After"))
            status = resp.status
    except TimeoutError:
        raise SendError(
            f"Avito did not answer within {http.timeout.total or 0:g} s",
            retryable=True,
            code="avito_timeout",
        ) from None
    except aiohttp.ClientError as exc:
        raise SendError(
            f"cannot reach Avito: {exc}", retryable=True, code="avito_unreachable"
        ) from None
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    return _Answer(status, parsed, raw, retry_after)


class AvitoChannel(WebhookChannel):
    name = "avito"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- inbound ------------------------------------------------------------------

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(account, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        body = lenient.load_object(req.body)
        payload = _obj(body.get("payload"))
        # A payload without a type but with a value is read as a message.
        if payload.get("type", "message" if "value" in payload else None) != "message":
            return Parsed()  # the {} probe, and events we do not handle
        value = _obj(payload.get("value"))
        if not value:
            raise InvalidPayload("payload.value of a message must be an object")
        try:
            return self._message(account, value, _time(body.get("timestamp")), req.body)
        except ValidationError as exc:
            raise InvalidPayload(
                f"message does not fit: {exc.error_count()} invalid field(s)"
            ) from None

    def _message(
        self, account: ChannelAccount, value: dict[str, Any], at: datetime | None, raw: bytes
    ) -> Parsed:
        acc = account.account
        # Without a readable id the message is keyed by a hash of the body (a redelivery
        # of the same body is stored once).
        mid = lenient.ident(value.get("id"), 512) or lenient.body_id(raw)
        chat, author = lenient.ident(value.get("chat_id")), lenient.ident(value.get("author_id"))
        if chat is None or author is None:
            raise InvalidPayload("a message needs payload.value.chat_id and author_id")
        kind = _str(value.get("type"), 64) or "text"
        if kind == "system":
            return Parsed()
        own = {lenient.ident(value.get("user_id")), setting_str(account, "user_id")} - {None}
        if author in own:
            read = _time(value.get("read"))
            if read is None:
                return Parsed()
            receipt = StatusUpdate(
                channel=self.name, account=acc, provider_id=mid, state=DeliveryState.READ, at=read
            )
            return Parsed(statuses=[receipt])
        if kind == "deleted":  # the notification's time is when it was deleted
            edit = MessageEdit(channel=self.name, account=acc, provider_id=mid, edited_at=at)
            return Parsed(edits=[edit])
        text, attachments, meta = _content(kind, _obj(value.get("content")))
        item = value.get("item_id")
        if (small := lenient.int64(item)) is not None:
            meta["item_id"] = small
        elif item_id := lenient.ident(item):
            meta["item_id"] = item_id
        if chat_type := _str(value.get("chat_type"), 32):
            meta["avito_chat_type"] = chat_type
        msg = InboundMessage(
            channel=self.name,
            account=acc,
            provider_id=mid,
            thread_id=chat,
            sender=Sender(external_user_id=author),
            text=text,
            sent_at=_time(value.get("created")) or _iso(value.get("published_at")),
            attachments=attachments,
            reply_to=chat,
            meta=meta,
        )
        return Parsed(messages=[msg])

    # --- outbound -----------------------------------------------------------------

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        def refuse(code: str, detail: str) -> SendError:
            return SendError(detail, retryable=False, code=code)

        if not setting_str(account, "client_id") or not setting_str(account, "user_id"):
            raise refuse(
                "avito_not_configured", "settings.client_id and settings.user_id are required"
            )
        if not msg.recipient:
            raise refuse("avito_no_recipient", "the conversation has no Avito chat id")
        if msg.attachments:
            raise refuse("avito_attachments_unsupported", "only text can be sent to Avito")
        if not msg.text.strip():
            raise refuse("avito_empty_text", "Avito needs a non-empty text")
        if len(msg.text) > MAX_TEXT:
            raise refuse(
                "avito_text_too_long",
                f"Avito accepts at most {MAX_TEXT} characters; this text has {len(msg.text)}",
            )

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        self.check_outbound(account, msg)
        user = quote(setting_str(account, "user_id") or "", safe="")
        path = f"/messenger/v1/accounts/{user}/chats/{quote(msg.recipient, safe='')}/messages"
        data = await self._post(
            account, secret, path, {"message": {"text": msg.text}, "type": "text"}
        )
        mid = _str(data.get("id"), 512)
        if mid is None:
            # Not retried: the message may well be out, and a retry would send it twice.
            raise SendError(
                "Avito answered without a message id", retryable=False, code="avito_bad_response"
            )
        return SendResult(provider_id=mid)

    async def register_webhook(
        self, account: ChannelAccount, secret: str | None, base_url: str
    ) -> str:
        token = setting_env(account, "webhook_token_env")
        if not token or len(token) < MIN_WEBHOOK_TOKEN:
            raise SendError(
                f"settings.webhook_token_env must name a variable holding at least "
                f"{MIN_WEBHOOK_TOKEN} characters",
                retryable=False,
                code="avito_no_webhook_token",
            )
        url = (
            f"{base_url.rstrip('/')}/webhooks/{self.name}/{account.account}/{quote(token, safe='')}"
        )
        data = await self._post(account, secret, "/messenger/v3/webhook", {"url": url})
        if data.get("ok") is not True:
            raise SendError(
                f"Avito did not confirm the subscription: {str(data)[:200]}",
                retryable=False,
                code="avito_webhook_refused",
            )
        return url

    def _api(self, account: ChannelAccount, secret: str | None) -> _Api:
        client_id = setting_str(account, "client_id")
        if not client_id:
            raise SendError(
                "settings.client_id is not set", retryable=False, code="avito_not_configured"
            )
        if not secret:
            raise SendError(
                "this account has no client secret (secret_env)",
                retryable=False,
                code="avito_no_client_secret",
            )
        timeout_s = _seconds(setting_str(account, "timeout_s", "10"))
        if not timeout_s:
            raise SendError(
                "settings.timeout_s must be a positive number of seconds",
                retryable=False,
                code="avito_bad_setting",
            )
        base = (setting_str(account, "api_base") or API_BASE).rstrip("/")
        return _Api(base, client_id, secret, timeout_s)

    async def _post(
        self, account: ChannelAccount, secret: str | None, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST one API call with a Bearer token; on 401/403 get a new token and try once
        more. The JSON object of a 2xx answer, else :class:`SendError`."""
        api = self._api(account, secret)
        timeout = aiohttp.ClientTimeout(total=api.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            token = await self._token(http, api)
            answer = await _call(http, api.base + path, token=token, body=body)
            if answer.status in (401, 403):
                token = await self._token(http, api, rejected=token)
                answer = await _call(http, api.base + path, token=token, body=body)
        if not 200 <= answer.status < 300:
            raise _fail(answer, "Avito", "avito")
        if not isinstance(answer.data, dict):
            raise SendError(
                f"Avito answered something else than a JSON object: {answer.reason()}",
                retryable=False,
                code="avito_bad_response",
            )
        return answer.data

    async def _token(
        self, http: aiohttp.ClientSession, api: _Api, rejected: str | None = None
    ) -> str:
        """The cached access token, or a new one when it is due for refresh (or is the one
        the API just ``rejected``). One token request per account at a time."""
        lock = self._locks.setdefault(api.key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(api.key)
            if cached and cached.value != rejected and self.clock() < cached.refresh_at:
                return cached.value
            self._tokens.pop(api.key, None)
            form = {
                "grant_type": "client_credentials",
                "client_id": api.client_id,
                "client_secret": api.client_secret,
            }
            answer = await _call(http, f"{api.base}/token", form=form)
            if not 200 <= answer.status < 300:
                raise _fail(answer, "Avito token", "avito_token")
            data = _obj(answer.data)
            value = _str(data.get("access_token"))
            if value is None:
                raise SendError(
                    f"Avito refused the client credentials: {answer.reason()}",
                    retryable=False,
                    code="avito_token_refused",
                )
            expires = data.get("expires_in")
            lifetime = (
                float(expires)
                if isinstance(expires, int | float)
                and not isinstance(expires, bool)
                and expires > 0
                else DEFAULT_EXPIRES_S
            )
            refresh_at = self.clock() + lifetime - min(REFRESH_MARGIN_S, lifetime / 2)
            self._tokens[api.key] = _Token(value, refresh_at)
            return value
