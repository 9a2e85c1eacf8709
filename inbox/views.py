"""What the operator API answers about stored things: one pydantic model per kind, built
from the stored document with ``X.of(doc)`` (unknown stored keys are dropped, missing
optional ones are null). The WebSocket and the web page read the same shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from crm_store.store import Document


class View(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str

    @classmethod
    def of(cls, doc: Document) -> Self:
        return cls.model_validate({**doc, "id": doc["_id"]})


class TargetView(BaseModel):
    kind: Literal["lead", "deal", "contact", "none"]
    id: str | None = None
    open: bool = False


class SmsOptOut(BaseModel):
    """The customer asked not to be texted (docs/channels/sms.md#opt-out)."""

    at: datetime | None = None
    reason: str | None = None
    by: str | None = None


class ContactView(View):
    name: str | None = None
    phones: list[str] = Field(default_factory=list)
    emails: list[str] = Field(default_factory=list)
    identities: list[str] = Field(default_factory=list)
    failing_emails: list[str] = Field(default_factory=list)
    responsible_id: str | None = None
    origin: str | None = None
    spam: bool = False
    merged_into: str | None = Field(default=None, description="set on a contact merged away")
    company_id: str | None = Field(default=None, description="its company, if any")
    sms_opt_out: SmsOptOut | None = Field(default=None, description="set: never texted")
    fields: dict[str, Any] = Field(
        default_factory=dict, description="custom fields (PATCH /api/v1/contacts/{id})"
    )
    created_at: datetime | None = None


class EntityView(View):
    """A lead or a deal."""

    kind: Literal["lead", "deal"]
    title: str | None = None
    contact_id: str | None = None
    pipeline_id: str
    stage_id: str
    open: bool = True
    is_repeat: bool = False
    source_id: str | None = None
    responsible_id: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    stage_entered_at: datetime | None = None
    last_activity_at: datetime | None = None
    converted_to: str | None = Field(default=None, description="a converted lead: its deal")
    company_id: str | None = Field(default=None, description="the company it is with, if any")
    visit: dict[str, str] = Field(
        default_factory=dict,
        description="where a website lead came from (the message that created it): "
        "page_url, referrer, page_title, utm_source … utm_content, those present",
    )

    @classmethod
    def of_kind(cls, kind: Literal["lead", "deal"], doc: Document) -> EntityView:
        visit = visit_of(doc.get("meta"))
        return cls.model_validate({**doc, "id": doc["_id"], "kind": kind, "visit": visit})


VISIT_KEYS = (
    "page_url",
    "referrer",
    "page_title",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
)


def visit_of(meta: Any) -> dict[str, str]:
    """The page and campaign a lead's first message was written from (its ``meta``; the
    website chat sets them); nothing else of the meta is shown."""
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in VISIT_KEYS if isinstance(meta.get(k), str) and meta[k]}


class AttachmentView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: str = "file"
    url: str | None = None
    file_id: str | None = None
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None


class StateChange(BaseModel):
    state: str
    at: datetime


class MessageView(View):
    conversation_id: str | None = None
    direction: Literal["in", "out", "note"]
    channel: str
    account: str
    text: str | None = None
    attachments: list[AttachmentView] = Field(default_factory=list)
    sender: dict[str, Any] | None = Field(default=None, description="inbound: who wrote")
    author_id: str | None = Field(default=None, description="outbound and notes: the user")
    automatic: bool = False
    state: str | None = Field(default=None, description="outbound: delivery state")
    state_history: list[StateChange] = Field(default_factory=list)
    error: str | None = None
    received_at: datetime | None = None
    sent_at: datetime | None = None
    edited_at: datetime | None = None
    call: dict[str, Any] | None = Field(default=None, description="a call's record, if a call")
    sms: dict[str, Any] | None = Field(
        default=None, description="an SMS: {segments, encoding: gsm7|ucs2, units}"
    )

    @classmethod
    def of(cls, doc: Document) -> Self:
        error = doc.get("error")
        if isinstance(error, dict):
            error = error.get("detail") or error.get("code")
        return cls.model_validate(
            {**doc, "id": doc["_id"], "error": None if error is None else str(error)}
        )


class ConversationView(View):
    channel: str
    account: str
    status: Literal["open", "closed", "snoozed"] = "open"
    snoozed_until: datetime | None = None
    assignee_id: str | None = None
    department: str | None = None
    contact_id: str | None = None
    target: TargetView = TargetView(kind="none")
    unread: int = 0
    message_count: int = 0
    reply_to: str | None = None
    last_message_at: datetime | None = None
    last_inbound_at: datetime | None = None
    last_outbound_at: datetime | None = None
    created_at: datetime | None = None
