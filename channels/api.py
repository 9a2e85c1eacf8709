"""The generic API channel: site forms and custom integrations.

``POST /webhooks/api/{account}`` with a JSON body (:class:`ApiMessage`) signed with the
account's secret::

    X-Omniroute-Timestamp: <unix seconds>
    X-Omniroute-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>

Requests more than five minutes away from the server clock are refused (replay guard).

An authentic body that is not a valid message (not JSON, a schema error) is never lost and
never refused: ``read`` returns it as unreadable, so ingest keeps it as an ``unparsed``
intake record (``omniroute intake list --status unparsed``, ``omniroute intake reparse``),
and the answer is HTTP 200 with ``"ok": false``, ``"code": "invalid_payload"`` and the
field errors (:func:`invalid_answer`). Not 422: an integration that retries a 4xx — or
gives up on it — would lose the message, while the developer still reads every field
error in the answer (docs/webhooks.md, "The API channel: an invalid body").

Replies: an account with ``settings.reply_url`` gets every operator reply POSTed there as
JSON (:class:`ApiReply`), signed the same way with the same secret; a 2xx answer means it
was taken (``{"id": "<your id>"}`` in the answer is kept as the provider id, else ours),
429/5xx/timeouts are retried by the outbox, another 4xx fails the reply with the answer's
text. Without ``reply_url`` the account cannot reply (refused at once).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from channels import lenient
from channels.base import (
    Attachment,
    InboundMessage,
    OutboundMessage,
    Parsed,
    Sender,
    SendError,
    SendResult,
    Unauthorized,
    WebhookChannel,
    WebhookRequest,
    setting_str,
)
from channels.identity import normalize_email, normalize_phone
from channels.signing import matches, sign
from config.models import ChannelAccount

__all__ = ["ApiChannel", "ApiMessage", "ApiReply", "sign", "verify"]

MAX_SKEW_S = 300
TIMESTAMP_HEADER = "X-Omniroute-Timestamp"
SIGNATURE_HEADER = "X-Omniroute-Signature"


class ApiSender(Sender):
    """The sender as this channel accepts it: a phone or e-mail must be usable as one."""

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and normalize_phone(value) is None:
            raise ValueError("not a phone number")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and normalize_email(value) is None:
            raise ValueError("not an e-mail address")
        return value


class ApiMessage(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(
        min_length=1, max_length=256, description="Your id of this message; retries reuse it"
    )
    sender: ApiSender
    text: str = Field(default="", max_length=65536)
    sent_at: datetime | None = None
    thread_id: str | None = Field(
        default=None, max_length=256, description="Your conversation id, if you have one"
    )
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)

    @field_validator("attachments")
    @classmethod
    def _storable_sizes(cls, value: list[Attachment]) -> list[Attachment]:
        if any(a.size is not None and a.size > lenient.INT64_MAX for a in value):
            raise ValueError(f"an attachment size is at most {lenient.INT64_MAX}")
        return value

    @model_validator(mode="after")
    def _has_sender_identity(self) -> ApiMessage:
        s = self.sender
        if not ((s.phone or "").strip() or (s.email or "").strip() or s.external_user_id):
            raise ValueError("sender needs at least one of phone, email, external_user_id")
        if not self.text.strip() and not self.attachments:
            raise ValueError("a message needs text or attachments")
        return self


def verify(secret: str | None, req: WebhookRequest, now: float | None = None) -> None:
    if not secret:
        raise Unauthorized("this account has no secret configured")
    ts = req.headers.get(TIMESTAMP_HEADER, "")
    sig = req.headers.get(SIGNATURE_HEADER, "")
    if not ts or not sig:
        raise Unauthorized(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    try:
        ts_value = int(ts)
    except ValueError:
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be unix seconds") from None
    if abs((now if now is not None else time.time()) - ts_value) > MAX_SKEW_S:
        raise Unauthorized("timestamp is more than 5 minutes away from server time")
    if not matches(secret, ts, req.body, sig):
        raise Unauthorized("signature does not match")


def _sent_at(value: datetime | None) -> datetime | None:
    """Your ``sent_at`` (no zone: UTC); an implausible one (before 2000, more than a day
    ahead) is dropped — the message then counts from when it was received."""
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return lenient.plausible(value)


def invalid_answer(errors: list[dict[str, Any]]) -> Parsed:
    """An authentic body that is not a valid message: kept as unparsed by ingest
    (``Parsed.unreadable``), answered 200 with the field errors."""
    answer = {
        "ok": False,
        "accepted": [],
        "duplicates": [],
        "code": "invalid_payload",
        "detail": "the body is not a valid message; it is kept as unparsed, not routed",
        "errors": errors,
    }
    problems = [f"{e['field']}: {e['message']}" for e in errors]
    return Parsed(
        unreadable=problems or ["invalid body"],
        reply=orjson.dumps(answer).decode(),
        reply_content_type="application/json",
    )


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "body",
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


class ApiChannel(WebhookChannel):
    name = "api"

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        verify(secret, req)

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        try:
            raw = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return invalid_answer(
                [{"field": "body", "message": "the body is not JSON (UTF-8)", "type": "json"}]
            )
        try:
            body = ApiMessage.model_validate(raw)
            msg = InboundMessage(
                channel=self.name,
                account=account.account,
                provider_id=body.external_id,
                thread_id=body.thread_id,
                sender=body.sender,
                text=body.text,
                sent_at=_sent_at(body.sent_at),
                attachments=body.attachments,
                reply_to=_reply_address(body.sender),
            )
        except ValidationError as exc:
            return invalid_answer(_field_errors(exc))
        return Parsed([msg])

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        if not setting_str(account, "reply_url"):
            raise SendError(
                f"api account {account.account} has no settings.reply_url: it cannot reply",
                retryable=False,
                code="channel_cannot_send",
            )
        if not msg.text.strip() and not msg.attachments:
            raise SendError("empty message", retryable=False, code="empty_message")

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        self.check_outbound(account, msg)
        url = setting_str(account, "reply_url") or ""
        body = orjson.dumps(
            ApiReply(
                id=msg.id,
                account=account.account,
                recipient=msg.recipient,
                thread_id=msg.thread_id,
                text=msg.text,
                attachments=msg.attachments,
                automatic=msg.automatic,
            ).model_dump(mode="json")
        )
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret or "", stamp, body),
            "Idempotency-Key": msg.id,
        }
        timeout = aiohttp.ClientTimeout(total=float(setting_str(account, "timeout_s") or 10))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, data=body, headers=headers) as resp,
            ):
                answer = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(
                f"reply_url unreachable: {type(exc).__name__}", retryable=True, code="unreachable"
            ) from None
        if 200 <= status < 300:
            return SendResult(_their_id(answer) or msg.id)
        detail = answer[:300].decode(errors="replace") or f"HTTP {status}"
        retryable = status == 429 or status >= 500
        raise SendError(
            f"reply_url answered {status}: {detail}", retryable=retryable, code=f"http_{status}"
        )


class ApiReply(BaseModel):
    """What ``settings.reply_url`` receives for each reply."""

    id: str = Field(description="our message id: the same on every retry (deduplicate on it)")
    account: str
    recipient: str = Field(description="whom: user:<id>, phone:+7…, or email:…")
    thread_id: str | None
    text: str
    attachments: list[Attachment]
    automatic: bool


def _reply_address(sender: Sender) -> str | None:
    """Where a reply goes: the integration's own user id, else the phone, else the e-mail."""
    if sender.external_user_id:
        return f"user:{sender.external_user_id}"
    if sender.phone and (phone := normalize_phone(sender.phone)):
        return f"phone:{phone}"
    if sender.email and (email := normalize_email(sender.email)):
        return f"email:{email}"
    return None


def _their_id(answer: bytes) -> str | None:
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value)[:256] if value else None
