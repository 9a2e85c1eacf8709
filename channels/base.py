"""The one interface every provider module implements, and the models that cross it.

A channel module turns one authenticated HTTP request into zero or more
:class:`InboundMessage` objects. It never touches the database: ingest/ stores what it
returns, routing/ decides where it belongs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field

from config.models import ChannelAccount


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(default="file", max_length=32, description="file, image, audio, video …")
    url: str | None = Field(default=None, max_length=4096)
    file_id: str | None = Field(default=None, max_length=512)
    name: str | None = Field(default=None, max_length=512)
    mime_type: str | None = Field(default=None, max_length=255)
    size: int | None = Field(default=None, ge=0)


class Sender(BaseModel):
    """Who wrote, as the provider tells it. Identity normalisation happens in routing/."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phone: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    name: str | None = Field(default=None, max_length=256)
    # The provider's user id (Telegram user id, VK peer id …), scoped by the account.
    external_user_id: str | None = Field(default=None, max_length=256)


class PostRef(BaseModel):
    """The public post a comment was written under (VK wall post, Facebook Page post,
    Instagram media)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=256)
    url: str | None = Field(default=None, max_length=4096)
    # The beginning of the post's text or caption, when the provider sends it.
    text: str | None = Field(default=None, max_length=2000)


class InboundMessage(BaseModel):
    """One customer message, normalized. ``(channel, account, provider_id)`` is unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    provider_id: str = Field(min_length=1, max_length=512)
    # Chat / thread on the provider side; messages with the same thread share a
    # conversation. None: the conversation is keyed by the sender.
    thread_id: str | None = None
    sender: Sender
    text: str = ""
    sent_at: datetime | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    # Automatic mail (auto-replies, bounces) and spam never create leads.
    automatic: bool = False
    # The provider address replies go to (chat id, peer id, wa_id …); kept on the
    # conversation for the outbox.
    reply_to: str | None = Field(default=None, max_length=512)
    # Provider specifics worth keeping (Avito item_id, Telegram business_connection_id …);
    # copied onto a lead/deal the message creates.
    meta: dict[str, str | int | bool | None] = Field(default_factory=dict)
    # Provider ids of earlier messages this one answers, nearest first (e-mail:
    # In-Reply-To, then References newest to oldest). The first one that is stored
    # decides the conversation, before thread_id and the sender.
    references: list[str] = Field(default_factory=list, max_length=200)
    # "comment": a public comment under a post (``post`` set; ``provider_id`` is the
    # comment's id; ``thread_id`` keys one conversation per post and commenter;
    # ``parent_id`` the comment it answers, if any). "message": a direct message.
    kind: Literal["message", "comment"] = "message"
    post: PostRef | None = None
    parent_id: str | None = Field(default=None, max_length=512)


class WebhookError(Exception):
    """A request the channel refuses; nothing from it is stored."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class Unauthorized(WebhookError):
    status = 401
    code = "unauthorized"


class Forbidden(WebhookError):
    status = 403
    code = "forbidden"


class InvalidPayload(WebhookError):
    status = 422
    code = "invalid_payload"


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What a channel sees of an HTTP request: method, headers, query and the raw body."""

    method: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    # The optional last path segment: ``/webhooks/{channel}/{account}/{token}`` (for
    # providers that sign nothing, an unguessable token in the URL).
    path_token: str | None = None


class DeliveryState(StrEnum):
    """Delivery state of an outbound message; it only ever moves forward (see RANK)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    # The send's outcome is not known (the answer was lost after the request may have
    # reached the provider) and resending could deliver it twice: never resent.
    UNKNOWN = "unknown"


# A state update applies only when its rank is higher than the stored one. ``failed``
# can replace queued/sent but never a delivered or read message.
STATE_RANK: dict[DeliveryState, int] = {
    DeliveryState.QUEUED: 0,
    DeliveryState.SENT: 1,
    # Same rank as sent: a later receipt (failed, delivered) settles it, "sent" does not.
    DeliveryState.UNKNOWN: 1,
    DeliveryState.FAILED: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.READ: 4,
}


class MessageEdit(BaseModel):
    """The customer edited a message we stored: replace its text, keep the history."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    provider_id: str
    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list)
    edited_at: datetime | None = None


class MessageDeletion(BaseModel):
    """The customer deleted (revoked) a message we stored: it is marked deleted; its text
    stays for the operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    provider_id: str
    deleted_at: datetime | None = None


class MessageReaction(BaseModel):
    """The customer reacted to a stored message (either direction): the reaction is kept on
    that message, never as a new message. ``reaction`` None: the reaction was removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    provider_id: str
    reaction: str | None = Field(default=None, max_length=64)
    # Who reacted (the provider's user id, scoped by the account).
    by: str | None = Field(default=None, max_length=256)
    at: datetime | None = None


class TemplateStatus(BaseModel):
    """Meta's verdict on one message template of the account (WhatsApp
    ``message_template_status_update``): kept per account, name and language
    (crm_store/wa_templates.py); a template that is not approved is not sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    name: str = Field(min_length=1, max_length=512)
    # None: the update did not say (it then applies to every language of the name).
    language: str | None = Field(default=None, max_length=16)
    # Meta's event in lower case: approved, rejected, paused, disabled, pending, flagged …
    status: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=1000)
    template_id: str | None = Field(default=None, max_length=256)
    at: datetime | None = None


class StatusUpdate(BaseModel):
    """A delivery receipt for one of our outbound messages (by the provider's id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    provider_id: str
    state: DeliveryState
    at: datetime | None = None
    error: str | None = None


class ReadWatermark(BaseModel):
    """A receipt that names no message: every outbound message of this account to
    ``recipient`` sent up to ``upto`` reached ``state`` (Messenger's ``read`` and
    ``delivery`` watermarks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    recipient: str = Field(min_length=1, max_length=512)
    state: DeliveryState
    upto: datetime


class Reachability(BaseModel):
    """The customer blocked/unblocked us (or (un)subscribed) on this channel account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    sender: Sender
    reachable: bool
    at: datetime | None = None
    reason: str | None = None


# --- telephony: calls as providers report them (merged by channels/calls.py) ---------


class CallDirection(StrEnum):
    IN = "in"
    OUT = "out"
    INTERNAL = "internal"


class CallStage(StrEnum):
    """How far a call got; it only moves forward (``ringing`` < ``answered`` < ``ended``)."""

    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class Disposition(StrEnum):
    """How a call ended, whatever the provider's words (see each channel module)."""

    ANSWERED = "answered"
    MISSED = "missed"
    BUSY = "busy"
    FAILED = "failed"


class CallEvent(BaseModel):
    """One provider report about one call (a PBX webhook), normalized. Reports of one call
    may arrive in any order and more than once; channels/calls.py merges them so that the
    stored call converges. Every field is what this one report says (None: it says
    nothing about it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    account: str
    # The provider's id of the whole call (MegaFon callid, Mango entry_id, Zadarma
    # pbx_call_id, Asterisk Linkedid).
    call_id: str = Field(min_length=1, max_length=256)
    # The provider's name of the report (for logs and the call's history).
    event: str = Field(max_length=64)
    leg_id: str | None = Field(default=None, max_length=256)
    direction: CallDirection | None = None
    # The customer's number as the provider wrote it, and our number (the DID dialled or
    # shown); routing and the call record normalize them.
    customer: str | None = Field(default=None, max_length=64)
    line: str | None = Field(default=None, max_length=64)
    # The employee (PBX login or extension) the report is about.
    agent: str | None = Field(default=None, max_length=128)
    stage: CallStage | None = None
    disposition: Disposition | None = None
    # The provider's summary of the whole call (MegaFon history, Mango summary, …): its
    # agent is the one who had the call last.
    final: bool = False
    transferred: bool = False
    # When the provider says the report happened, and what it says of the call's times.
    at: datetime | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: int | None = Field(default=None, ge=0)
    talk_s: int | None = Field(default=None, ge=0)
    hangup_cause: str | None = Field(default=None, max_length=128)
    recording_url: str | None = Field(default=None, max_length=4096)
    recording_id: str | None = Field(default=None, max_length=256)
    rating: int | None = None
    # The provider's sequence number of the report within the call, if it has one.
    seq: int | None = Field(default=None, ge=0)
    # Our click-to-call request the call answers (Mango's ``command_id``), if it says.
    request_id: str | None = Field(default=None, max_length=128)


@dataclass(frozen=True, slots=True)
class CallerQuery:
    """A PBX asks, while the phone rings, who is calling: the app looks ``phone`` up in
    the contacts and the channel (a :class:`CallerLookup`) formats the answer."""

    phone: str


@dataclass(frozen=True, slots=True)
class Caller:
    """A known caller, as the ring-path lookup found it."""

    contact_id: str
    name: str | None
    responsible_id: str | None


@runtime_checkable
class CallerLookup(Protocol):
    """A channel whose PBX asks who is calling (:attr:`Parsed.lookup`)."""

    name: str

    def caller_reply(self, account: ChannelAccount, caller: Caller | None) -> Parsed:
        """The answer to the PBX for a known caller, or for an unknown one (None)."""
        ...


@dataclass(frozen=True, slots=True)
class Parsed:
    """The result of parsing one webhook request: what to store, and what to answer."""

    messages: list[InboundMessage] = field(default_factory=list)
    edits: list[MessageEdit] = field(default_factory=list)
    deletions: list[MessageDeletion] = field(default_factory=list)
    reactions: list[MessageReaction] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    # Receipts by time rather than by message (Messenger's watermarks).
    watermarks: list[ReadWatermark] = field(default_factory=list)
    reachability: list[Reachability] = field(default_factory=list)
    # Call reports (telephony): applied to the ``calls`` collection.
    calls: list[CallEvent] = field(default_factory=list)
    # Message template verdicts (WhatsApp): applied to ``wa_templates``.
    templates: list[TemplateStatus] = field(default_factory=list)
    # A ring-path "who is calling" question: nothing is stored, the answer comes from
    # the channel's :meth:`CallerLookup.caller_reply`.
    lookup: CallerQuery | None = None
    # A response body some providers require (VK "ok", handshakes, challenges);
    # None → ``{"ok": true, ...}`` as JSON.
    reply: str | None = None
    reply_content_type: str = "text/plain"
    # Parts of the delivery the channel skipped because it could not read them (one
    # entry's error each, e.g. one bad entry of a WhatsApp batch). Non-empty: ingest keeps
    # the whole body as an ``unparsed`` intake record too (``omniroute intake reparse``
    # reads it again; what was already stored is a duplicate then).
    unreadable: list[str] = field(default_factory=list)


class OutboundMessage(BaseModel):
    """An operator's (or automation's) message to the customer, as a channel sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="our message id: stable across retries (idempotency key)")
    channel: str
    account: str
    # Where to send, as the inbound messages of the conversation said (chat id, peer id,
    # wa_id, e-mail address …).
    recipient: str
    thread_id: str | None = None
    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list)
    # When the customer last wrote in this conversation (WhatsApp's 24 h window).
    last_inbound_at: datetime | None = None
    # The provider id of a message the operator chose to quote (messengers show it as a
    # reply to that message), if any.
    in_reply_to: str | None = None
    # The provider id of the conversation's last inbound message and the chain before it
    # (e-mail threads on them: In-Reply-To / References, oldest first).
    answers: str | None = None
    references: list[str] = Field(default_factory=list)
    # The conversation's subject (e-mail: sent as "Re: <subject>").
    subject: str | None = None
    # Sent by automation rather than an operator (e-mail marks it Auto-Submitted).
    automatic: bool = False
    # The message it answers was itself automatic (an auto-reply, a bounce, a null
    # reverse-path): an automatic message must not answer it.
    answers_automatic: bool = False
    # Answering a public comment (the conversation's messages are comments): "public" posts
    # a reply under ``comment_id``; "private" writes to the commenter directly (Messenger /
    # Instagram private reply, a VK message). None: an ordinary message.
    reply_mode: Literal["public", "private"] | None = None
    comment_id: str | None = Field(default=None, max_length=512)
    # A provider message template (WhatsApp): sent instead of ``text``; the only way to
    # write outside a messaging window.
    template: TemplateRef | None = None


class TemplateRef(BaseModel):
    """An approved template and its parameters, as configured on the account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(default="ru", max_length=16)
    params: list[str] = Field(default_factory=list, max_length=100)


OutboundMessage.model_rebuild()


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_id: str
    state: DeliveryState = DeliveryState.SENT


class SendError(Exception):
    """A send that did not happen. ``retryable`` with ``retry_after`` (seconds, if the
    provider said) → the outbox tries again later; otherwise the message is failed and
    ``detail`` is shown to the operator."""

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        code: str = "send_failed",
        unknown: bool = False,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code
        # The request may have reached the provider: the message is marked ``unknown``
        # instead of failed or retried (SMS gateways without a dedupe key).
        self.unknown = unknown


class Channel(Protocol):
    """A provider module. ``name`` is the ``{channel}`` in ``/webhooks/{channel}/{account}``.

    Receiving is two steps (ingest/app.py): :meth:`authenticate` decides whether the
    request comes from the provider; only a refusal there is answered 4xx. :meth:`read`
    then turns the authentic request into what to store. ``read`` is a lenient reader:
    whatever it raises, the delivery is kept as an ``unparsed`` intake record (answered
    2xx, re-read by ``omniroute intake reparse``) — an authentic delivery is never
    refused for its shape.
    """

    name: str
    # The body answered for an authentic delivery that could not be read (VK wants "ok");
    # None → JSON.
    ack_reply: str | None
    # Fields of a JSON or form body that hold a secret (VK ``secret``, MegaFon
    # ``crm_token``): redacted before a raw body is stored.
    secret_fields: tuple[str, ...]

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        """Refuse a request that does not come from the provider: raise
        :class:`Unauthorized` / :class:`Forbidden`. A provider whose authenticity lives
        inside the body (VK, MegaFon) raises :class:`WebhookError` (400) for a body it
        cannot read."""
        ...

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        """Read an authenticated request. Never called on one that failed
        :meth:`authenticate`; an exception here parks the delivery as unparsed."""
        ...

    def parse(self, account: ChannelAccount, secret: str | None, req: WebhookRequest) -> Parsed:
        """:meth:`authenticate`, then :meth:`read`."""
        ...


class WebhookChannel:
    """The common part of every provider module: ``parse`` is authenticate + read."""

    name: str = ""
    ack_reply: str | None = None
    secret_fields: tuple[str, ...] = ()

    def authenticate(
        self, account: ChannelAccount, secret: str | None, req: WebhookRequest
    ) -> None:
        raise NotImplementedError

    def read(self, account: ChannelAccount, req: WebhookRequest) -> Parsed:
        raise NotImplementedError

    def parse(self, account: ChannelAccount, secret: str | None, req: WebhookRequest) -> Parsed:
        self.authenticate(account, secret, req)
        return self.read(account, req)


@runtime_checkable
class SendingChannel(Protocol):
    """A channel that can send messages to customers."""

    name: str

    def check_outbound(self, account: ChannelAccount, msg: OutboundMessage) -> None:
        """Refuse at once what the provider would refuse (raise :class:`SendError` with
        ``retryable=False``): outside WhatsApp's 24 h window, text over the limit …"""
        ...

    async def send(
        self, account: ChannelAccount, secret: str | None, msg: OutboundMessage
    ) -> SendResult:
        """Send one message; raise :class:`SendError` when it did not go out."""
        ...


@runtime_checkable
class CommentModerator(Protocol):
    """A channel whose provider lets us hide, unhide or delete a public comment
    (Facebook Page, Instagram)."""

    name: str

    async def moderate(
        self,
        account: ChannelAccount,
        secret: str | None,
        comment_id: str,
        action: Literal["hide", "unhide", "delete"],
    ) -> None:
        """Apply ``action`` to the comment ``comment_id`` (the provider's id, as
        ``InboundMessage.provider_id`` of the comment); raise :class:`SendError` if the
        provider refuses (``detail`` in words an operator understands)."""
        ...


@runtime_checkable
class WebhookRegistrar(Protocol):
    """A channel whose provider lets us register our webhook URL through its API."""

    name: str

    async def register_webhook(
        self, account: ChannelAccount, secret: str | None, base_url: str
    ) -> str:
        """Register ``{base_url}/webhooks/{channel}/{account}[/{token}]`` with the provider;
        return the URL registered. Raise :class:`SendError` if the provider refuses."""
        ...


def setting_str(account: ChannelAccount, key: str, default: str | None = None) -> str | None:
    """A string from the account's ``settings`` (numbers are converted)."""
    value = account.settings.get(key, default)
    return None if value is None else str(value)


def setting_env(account: ChannelAccount, key: str) -> str | None:
    """The secret held by the environment variable named in ``settings[key]`` (keys that
    name secrets end in ``_env``, e.g. ``app_secret_env``)."""
    name = account.settings.get(key)
    return os.environ.get(name) if isinstance(name, str) and name else None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else is refused with 400 (nothing stored)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookError(f"body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WebhookError("body is not a JSON object")
    return value
