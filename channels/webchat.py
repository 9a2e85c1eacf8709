"""The website live-chat channel (``webchat``): one account per site.

Visitors do not post to ``/webhooks/webchat/…`` — the widget talks to the endpoints in
inbox/webchat_api.py, which check the Origin and the visitor token and then hand the
message to this channel as an *envelope* (:class:`Envelope`: the authenticated visitor,
the client's id, the text, the page). The envelope is the intake record's raw body, so
``omniroute intake reparse`` reads it again with :meth:`WebchatChannel.read` like any
other delivery. A request to ``/webhooks/webchat/{account}`` is refused (403).

Also here, pure: the account's settings (:class:`WebchatSettings`), visitor tokens
(:class:`VisitorTokens`: ``v1.<visitor_id>.<sig>``), identity validation
(:func:`identifier_verified`). Sending a reply is making it available in the visitor's
feed: :meth:`WebchatChannel.send` returns ``sent`` at once (docs/channels/webchat-protocol.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from channels.base import (
    Attachment,
    Forbidden,
    InboundMessage,
    OutboundMessage,
    Parsed,
    Sender,
    SendError,
    SendResult,
    WebhookChannel,
    WebhookRequest,
)
from channels.signing import same
from config.models import ChannelAccount

TEXT_MAX = 4000
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
CLIENT_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
PRECHAT_FIELDS = ("name", "phone", "email")


class PrechatField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: Literal["name", "phone", "email"]
    required: bool


class WebchatSettings(BaseModel):
    """``settings`` of a webchat account (config/channels.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    origins: tuple[str, ...] = ()
    colour: str = Field(default="#1f6feb", pattern=r"^#[0-9A-Fa-f]{6}$")
    position: Literal["right", "left"] = "right"
    greeting_ru: str = "Здравствуйте! Чем помочь?"
    greeting_en: str = "Hello! How can we help?"
    offline_ru: str = "Сейчас мы не на связи. Оставьте контакты — ответим в рабочее время."
    offline_en: str = "We are offline. Leave your contacts and we will answer in working hours."
    prechat: tuple[PrechatField, ...] = ()
    # Rate limits: messages per visitor token, and requests per client address, a minute.
    messages_per_minute: int = Field(default=20, ge=1, le=10_000)
    requests_per_minute_ip: int = Field(default=60, ge=1, le=1_000_000)

    @classmethod
    def of(cls, account: ChannelAccount) -> WebchatSettings:
        """Parse ``account.settings``; ValueError names what is wrong."""
        raw = dict(account.settings)
        origins = str(raw.pop("origins", "") or "").split()
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?", origin):
                raise ValueError(
                    f"webchat {account.account}: origin {origin!r} is not scheme://host[:port]"
                )
        prechat = parse_prechat(str(raw.pop("prechat", "") or ""))
        try:
            return cls.model_validate(
                {**{k: str(v) for k, v in raw.items()}, "origins": origins, "prechat": prechat}
            )
        except ValidationError as exc:
            raise ValueError(f"webchat {account.account}: {exc}") from None

    def greeting(self, lang: str) -> str:
        return self.greeting_en if lang == "en" else self.greeting_ru

    def offline_text(self, lang: str) -> str:
        return self.offline_en if lang == "en" else self.offline_ru

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin.rstrip("/") in self.origins


def parse_prechat(value: str) -> list[PrechatField]:
    """``"name:optional phone:required email:off"`` → the fields shown, in that order."""
    out: list[PrechatField] = []
    for item in value.split():
        name, _, mode = item.partition(":")
        if name not in PRECHAT_FIELDS or mode not in ("required", "optional", "off"):
            raise ValueError(
                f"prechat item {item!r}: want <name|phone|email>:<required|optional|off>"
            )
        if mode != "off":
            out.append(PrechatField.model_validate({"field": name, "required": mode == "required"}))
    return out


# --- visitor tokens ----------------------------------------------------------------


class VisitorTokens:
    """``v1.<visitor_id>.<sig>``, sig = base64url HMAC-SHA256(key, "webchat-visitor." + id).
    The key is the server's file-link key (inbox/file_links.py), never an account's secret."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sig(self, visitor_id: str) -> str:
        mac = hmac.new(self._key, f"webchat-visitor.{visitor_id}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def issue(self, visitor_id: str | None = None) -> tuple[str, str]:
        vid = visitor_id or uuid.uuid4().hex
        return vid, f"v1.{vid}.{self._sig(vid)}"

    def visitor(self, token: str | None) -> str | None:
        """The visitor id of a genuine token, else None."""
        if not token:
            return None
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not re.fullmatch(r"[0-9a-f]{32}", parts[1]):
            return None
        return parts[1] if same(self._sig(parts[1]), parts[2]) else None


def identifier_verified(secret: str | None, identifier: str, given_hash: str | None) -> bool:
    """Identity validation: ``given_hash`` == hex HMAC-SHA256(key=secret, identifier),
    compared in constant time. No secret configured: nothing is verified."""
    if not secret or not given_hash:
        return False
    want = hmac.new(secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()
    return same(want, given_hash.strip().lower())


# --- the envelope: one visitor message as intake keeps it --------------------------


class Utm(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str | None = Field(default=None, max_length=200)
    medium: str | None = Field(default=None, max_length=200)
    campaign: str | None = Field(default=None, max_length=200)
    term: str | None = Field(default=None, max_length=200)
    content: str | None = Field(default=None, max_length=200)


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str | None = Field(default=None, max_length=2048)
    referrer: str | None = Field(default=None, max_length=2048)
    title: str | None = Field(default=None, max_length=500)
    utm: Utm | None = None

    def meta(self) -> dict[str, str | int | bool | None]:
        out: dict[str, str | int | bool | None] = {}
        if self.url:
            out["page_url"] = self.url
        if self.referrer:
            out["referrer"] = self.referrer
        if self.title:
            out["page_title"] = self.title
        if self.utm is not None:
            for key, value in self.utm.model_dump().items():
                if value:
                    out[f"utm_{key}"] = value
        return out


class Envelope(BaseModel):
    """A visitor message after the endpoint authenticated it (the intake raw body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    visitor_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    client_id: str = Field(pattern=CLIENT_ID)
    text: str = Field(default="", max_length=TEXT_MAX)
    attachments: list[Attachment] = Field(default_factory=list, max_length=10)
    page: Page | None = None
    name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    # A verified identifier (identity validation): the sender's id is "id:<identifier>".
    identifier: str | None = Field(default=None, max_length=200)
    offline: bool = False
    sent_at: datetime | None = None

    def message(self, account: str) -> InboundMessage:
        meta = self.page.meta() if self.page is not None else {}
        meta["visitor_id"] = self.visitor_id
        if self.offline:
            meta["offline_form"] = True
        user = f"id:{self.identifier}" if self.identifier else self.visitor_id
        return InboundMessage(
            channel=WebchatChannel.name,
            account=account,
            provider_id=f"{self.visitor_id}:{self.client_id}",
            thread_id=self.visitor_id,
            sender=Sender(
                name=self.name, email=self.email, phone=self.phone, external_user_id=user
            ),
            text=self.text,
            sent_at=self.sent_at,
            attachments=self.attachments,
            reply_to=f"visitor:{self.visitor_id}",
            meta=meta,
        )


class WebchatChannel(WebhookChannel):
    name = "webchat"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        raise Forbidden("webchat messages come through /webchat/{account}/messages")

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        return Parsed([Envelope.model_validate_json(req.body).message(account.account)])

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        if not msg.recipient.startswith("visitor:"):
            raise SendError("no visitor to answer", retryable=False, code="no_recipient")
        if not msg.text.strip() and not msg.attachments:
            raise SendError("empty message", retryable=False, code="empty_message")
        if len(msg.text) > TEXT_MAX:
            raise SendError(
                f"a webchat message is at most {TEXT_MAX} characters",
                retryable=False,
                code="text_too_long",
            )

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        """The reply is in the visitor's feed as soon as it is ``sent`` (the
        ``message.sent`` event): nothing to call. ``delivered`` / ``read`` follow from the
        visitor's connection (inbox/webchat_hub.py)."""
        self.check_outbound(account, msg)
        return SendResult(msg.id)
