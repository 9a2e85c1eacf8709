"""The event catalogue: every event type consumers can receive, with its data schema.

Each event, in the feed and in webhook bodies, is an :class:`Envelope`. ``version`` is
the version of the type's data schema; a change that is not backward compatible gets a
new version (and both are documented while consumers move over). ``docs/events.md`` is
generated from these models: ``omniroute events schema --markdown > docs/events.md``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from automation.event_schemas import (
    AutomationFailed,
    EntityDeleted,
    FieldChanged,
    NotificationCreated,
    ResponsibleChanged,
    TaskChanged,
    TaskCreated,
    TimerFired,
)
from crm_store.calls import CallEnded, CallMissed, CallStarted


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class Refs(BaseModel):
    """The entities an event is about (ids); absent when not applicable."""

    model_config = ConfigDict(extra="allow")

    contact_id: str | None = None
    lead_id: str | None = None
    deal_id: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None


class ContactCreated(_Data):
    identities: list[str] = Field(description="identity keys: phone:+7…, email:…, tg:bot:id")
    origin: str = Field(description="routing (an unknown sender wrote) or manual/import")


class EntityCreated(_Data):
    pipeline_id: str
    stage_id: str
    source_id: str | None
    responsible_id: str | None
    is_repeat: bool


class TargetRef(BaseModel):
    kind: Literal["lead", "deal", "contact", "none"]
    id: str | None = None
    open: bool


class ConversationChanged(_Data):
    channel: str
    account: str
    target: TargetRef


class MessageAttached(_Data):
    channel: str
    rule: str = Field(description="the routing rule that decided (docs/routing.md)")
    reason: str
    automatic: bool


class StageChanged(_Data):
    from_: str | None = Field(alias="from")
    to: str
    by: str | None
    pipeline_id: str
    final: bool


class MessageSent(_Data):
    channel: str
    provider_id: str


class DeliveryChanged(_Data):
    state: Literal["sent", "delivered", "read", "failed", "unknown"]
    error: str | None = None
    code: str | None = None


class MessageEdited(_Data):
    channel: str
    number: int = Field(description="the edit's number on this message: 1, 2, …")
    at: datetime | None = Field(description="when the customer edited it (provider's time)")


class MessageDeleted(_Data):
    channel: str
    at: datetime | None = Field(description="when the customer deleted it")


class MessageRestored(_Data):
    channel: str
    at: datetime | None = Field(description="when the deleted message was put back")


class CommentModerated(_Data):
    channel: str
    action: Literal["hide", "unhide", "delete"]
    comment_id: str = Field(description="the provider's id of the comment")
    by: str | None = Field(description="the user who did it")


class AddressFailing(_Data):
    address: str = Field(description="the e-mail address the bounce reported as failing")
    channel: str
    account: str = Field(description="the mailbox the bounce arrived in")


class ConversationAssigned(_Data):
    assignee_id: str | None = Field(description="null: unassigned")
    previous_assignee_id: str | None
    department: str | None = Field(description="the department the conversation belongs to now")
    by: str | None = Field(description="the user who did it")


class ConversationStatus(_Data):
    status: Literal["open", "closed", "snoozed"]
    snoozed_until: datetime | None = None
    department: str | None
    by: str | None


class ConversationRead(_Data):
    department: str | None
    by: str


class ContactMerged(_Data):
    merged_id: str = Field(description="the contact merged into this one (now merged_into)")
    identities: list[str] = Field(description="the identities that moved over")
    by: str
    audit_id: str = Field(description="the contact_merges record with both snapshots")


class ByWhom(_Data):
    by: str | None


class TaskCancelled(_Data):
    template: str | None
    assignee_id: str | None
    reason: str = Field(description="its lead/deal closed (won, failed), was converted or deleted")


class WatchersChanged(_Data):
    user: str
    added: bool = Field(description="true: started watching; false: stopped")
    by: str | None


class CompanyCreated(_Data):
    name: str
    inn: str | None
    type: str
    by: str | None


class CompanyUpdated(_Data):
    changes: dict[str, dict[str, Any]] = Field(description="{attribute: {old, new}}")
    by: str | None


class LeadConverted(_Data):
    deal_id: str
    pipeline_id: str
    stage_id: str
    by: str | None


class OperatorMessage(_Data):
    channel: str
    author_id: str | None
    department: str | None


class DocumentChanged(_Data):
    document_id: str
    type: str = Field(description="the template's document type (config/templates/)")
    number: str
    version: int
    status: Literal["generated", "sent", "signed"]
    by: str | None


class SurveyAnswered(_Data):
    deal_id: str = Field(description="the survey deal")
    survey: str | None = Field(description="the survey's id in the pipeline's config")
    answers: dict[str, int] = Field(description="{question key: 1..5}")
    average: float
    all_top: bool = Field(description="every answer is the top score")


EVENT_TYPES: dict[str, tuple[type[BaseModel], str]] = {
    "contact.created": (ContactCreated, "routing created a contact for a new sender"),
    "lead.created": (EntityCreated, "a new lead (unknown sender, rule 5)"),
    "lead.repeat_created": (EntityCreated, "a repeat lead (known contact, nothing open)"),
    "deal.created": (EntityCreated, 'a deal opened by routing ("no leads" sources)'),
    "conversation.opened": (ConversationChanged, "the first message of a conversation"),
    "conversation.retargeted": (
        ConversationChanged,
        "a conversation whose lead/deal closed moved to a new target",
    ),
    "message.attached": (
        MessageAttached,
        "an inbound message was received and attached (every message)",
    ),
    "lead.stage_changed": (StageChanged, "a lead moved to another stage"),
    "deal.stage_changed": (StageChanged, "a deal moved to another stage"),
    "message.sent": (MessageSent, "an outbound message was accepted by the provider"),
    "message.delivery_changed": (
        DeliveryChanged,
        "an outbound message's delivery state moved forward (or failed)",
    ),
    "message.edited": (
        MessageEdited,
        "the customer edited a message (once per applied edit; a stale or repeated edit "
        "emits nothing)",
    ),
    "message.deleted": (
        MessageDeleted,
        "the customer deleted a message (it stays stored, marked deleted)",
    ),
    "message.restored": (
        MessageRestored,
        "a deleted message was put back (a VK comment restored): no longer marked deleted",
    ),
    "comment.moderated": (
        CommentModerated,
        "an operator hid, unhid or deleted a customer's public comment at the provider",
    ),
    # --- e-mail
    "contact.address_failing": (
        AddressFailing,
        "a bounce reported that mail to one of the contact's addresses fails",
    ),
    # --- telephony
    "call.started": (
        CallStarted,
        "a customer's call began (inbound or outbound); refs: call, message, contact if known",
    ),
    "call.ended": (
        CallEnded,
        "a customer's call ended, with its disposition (answered, missed, busy, failed)",
    ),
    "call.missed": (
        CallMissed,
        "an inbound call from a known contact ended unanswered: someone should call back",
    ),
    # --- automation
    "task.created": (TaskCreated, "a task was created (by a rule or a person)"),
    "task.completed": (TaskChanged, "a task was marked done"),
    "task.reopened": (TaskChanged, "a done task was opened again"),
    "survey.answered": (
        SurveyAnswered,
        "a customer answered a quality survey (once per survey; docs/survey.md)",
    ),
    "task.cancelled": (
        TaskCancelled,
        "an open task was cancelled (not done): its lead or deal closed, was converted or deleted",
    ),
    "notification.created": (
        NotificationCreated,
        "a user was notified (stored; the inbox shows it); one event per user",
    ),
    "timer.fired": (
        TimerFired,
        "a rule's timer came due with its condition still holding, and its actions ran",
    ),
    "lead.field_changed": (FieldChanged, "fields of a lead were set or cleared"),
    "deal.field_changed": (FieldChanged, "fields of a deal were set or cleared"),
    "lead.responsible_changed": (ResponsibleChanged, "a lead got another responsible"),
    "deal.responsible_changed": (ResponsibleChanged, "a deal got another responsible"),
    "contact.responsible_changed": (
        ResponsibleChanged,
        "a contact got another responsible (e.g. cascaded from its deal)",
    ),
    "company.responsible_changed": (
        ResponsibleChanged,
        "a company got another responsible (e.g. cascaded from a deal)",
    ),
    "lead.deleted": (EntityDeleted, "a duplicate lead was removed from the pipeline"),
    "deal.deleted": (EntityDeleted, "a duplicate deal was removed from the pipeline"),
    "automation.failed": (
        AutomationFailed,
        "an action of a rule could not be carried out (a refused stage move, no "
        "conversation to write to, a webhook that kept failing)",
    ),
    # --- CRM views (the operator API, inbox/contacts_api.py, inbox/entities_api.py)
    "contact.merged": (ContactMerged, "an operator merged another contact into this one"),
    "contact.deleted": (ByWhom, "a contact was deleted (its identities are free again)"),
    "lead.converted": (LeadConverted, "a lead was converted into a deal for its contact"),
    "lead.watchers_changed": (WatchersChanged, "a user started or stopped watching a lead"),
    "deal.watchers_changed": (WatchersChanged, "a user started or stopped watching a deal"),
    # --- companies (crm_store/companies.py)
    "company.created": (CompanyCreated, "a company was created (operator or lead conversion)"),
    "company.updated": (CompanyUpdated, "a company's name, INN, KPP, type, address or fields"),
    "company.contact_linked": (ByWhom, "a contact became one of the company's"),
    "company.contact_unlinked": (ByWhom, "a contact left the company"),
    # --- conversations (the operator API, inbox/conversations_api.py)
    "conversation.assigned": (
        ConversationAssigned,
        "a conversation was assigned, transferred, taken or unassigned (assignee null)",
    ),
    "conversation.closed": (ConversationStatus, "an operator closed a conversation"),
    "conversation.reopened": (
        ConversationStatus,
        "a closed or snoozed conversation is open again (by an operator, or a snooze ended)",
    ),
    "conversation.snoozed": (ConversationStatus, "a conversation was snoozed until a time"),
    "conversation.read": (ConversationRead, "an operator marked a conversation read"),
    "message.queued": (OperatorMessage, "an operator's reply was queued for sending"),
    "message.note_added": (OperatorMessage, "an internal note (never sent) was added"),
    # --- documents of deals (crm_store/paperwork.py, docs/documents.md)
    "document.generated": (DocumentChanged, "a document (a new version) was filled in"),
    "document.sent": (DocumentChanged, "a document was sent to the customer or marked sent"),
    "document.signed": (DocumentChanged, "the signed scan of a document was attached"),
}


class Envelope(BaseModel):
    """One event as consumers receive it."""

    id: str = Field(description="stable id: the same event always has the same id")
    type: str
    version: int = Field(description="version of the data schema of this type")
    sequence: int = Field(description="position in the log; increases, unique")
    occurred_at: datetime
    refs: Refs
    data: dict[str, Any]


def schema(type_: str) -> dict[str, Any]:
    """JSON Schema of the envelope of one event type."""
    model, description = EVENT_TYPES[type_]
    env = Envelope.model_json_schema()
    data = model.model_json_schema(by_alias=True)
    env["title"] = type_
    env["description"] = description
    env["properties"]["type"] = {"const": type_}
    env["properties"]["version"] = {"const": 1}
    env["properties"]["data"] = data
    return env


def markdown() -> str:
    lines = [
        "# Events",
        "",
        "<!-- generated by `omniroute events schema --markdown`; do not edit by hand -->",
        "",
        "Every routing and pipeline decision appends an event to an ordered log. Consumers",
        "read it with `GET /api/v1/events?after=<sequence>` or receive it pushed to a",
        "webhook subscription; both carry the same envelope:",
        "",
        "```json",
        '{"id": "…", "type": "lead.created", "version": 1, "sequence": 42,',
        ' "occurred_at": "2026-11-23T10:15:00Z",',
        ' "refs": {"contact_id": "…", "lead_id": "…", "message_id": "…"},',
        ' "data": {"pipeline_id": "leads", "stage_id": "new", "…": "…"}}',
        "```",
        "",
        "- `id` is stable: a redelivery or a replay carries the same id — deduplicate on it.",
        "- `sequence` increases; the feed never returns an event after a gap that may still",
        "  be filled, so a consumer that stores `next_after` never misses one.",
        "- `version` is the version of the `data` schema of that type.",
        "",
        "| type | when |",
        "|---|---|",
    ]
    lines += [f"| `{t}` | {d} |" for t, (_, d) in EVENT_TYPES.items()]
    lines += ["", "## JSON Schemas", ""]
    for t in EVENT_TYPES:
        lines += [f"### {t}", "", "```json", json.dumps(schema(t), indent=2), "```", ""]
    return "\n".join(lines)
