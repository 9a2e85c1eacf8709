"""WhatsApp message templates chosen by an operator.

- ``GET /api/v1/conversations/{id}/templates`` — the templates of the conversation's
  WhatsApp account (channels.yaml ``templates``) with Meta's latest verdict on each
  (crm_store/wa_templates.py: approved unless a status webhook said otherwise), their
  parameters and preview, and whether the 24 h customer-service window is open. Another
  channel's conversation has none.
- ``POST /api/v1/conversations/{id}/template`` ``{"name", "language"?, "params": [...]}``
  — send one: checked at once (configured on the account, as many parameters as it
  takes, approved), queued like a reply (201, ``queued``) with the rendered preview as its
  text; the outbox sends the template (allowed outside the window).

Both need a conversation the caller sees (inbox/access.py, else 404).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from channels import REGISTRY
from channels import whatsapp_templates as wa
from channels.base import SendError, SendingChannel
from crm_store import conversations as convs
from crm_store import outbox, wa_templates
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.conversations_api import visible_conversation
from inbox.views import MessageView
from ingest.outbox import outbound_of

TAG = "messages"
WINDOW = timedelta(hours=24)


class TemplateView(BaseModel):
    name: str
    language: str
    category: str | None
    params: list[str] = Field(description="what {{1}}, {{2}} … stand for, in order")
    text: str = Field(description="the body as approved, with {{n}} placeholders")
    status: str = Field(description="Meta's latest verdict: approved unless it said otherwise")
    reason: str | None = None
    sendable: bool


class TemplateList(BaseModel):
    channel: str
    account: str
    window_open: bool = Field(description="the customer wrote within 24 h: free text allowed")
    window_closes_at: datetime | None
    items: list[TemplateView]


class TemplateSendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    language: str | None = Field(default=None, max_length=16)
    params: list[str] = Field(default_factory=list, max_length=wa.MAX_PARAMS)


def _aware(at: object) -> datetime | None:
    if not isinstance(at, datetime):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@route(
    "GET",
    "/api/v1/conversations/{id}/templates",
    summary="WhatsApp templates an operator may send in this conversation",
    tag=TAG,
    response=TemplateList,
    errors=(404,),
)
async def list_templates(call: Call) -> TemplateList:
    conv = await visible_conversation(call)
    last = _aware(conv.get("last_inbound_at"))
    closes = last + WINDOW if last is not None else None
    account = call.svc.config.account(conv["channel"], conv["account"])
    items: list[TemplateView] = []
    if account is not None and conv["channel"] == "whatsapp":
        found = await wa_templates.verdicts(call.svc.store, conv["channel"], conv["account"])
        for spec in wa.templates_of(account):
            verdict = wa_templates.verdict_of(found, spec.name, spec.language) or {}
            status = str(verdict.get("status") or wa_templates.APPROVED)
            items.append(
                TemplateView(
                    name=spec.name,
                    language=spec.language,
                    category=spec.category,
                    params=spec.params,
                    text=spec.text,
                    status=status,
                    reason=verdict.get("reason"),
                    sendable=status == wa_templates.APPROVED,
                )
            )
    return TemplateList(
        channel=conv["channel"],
        account=conv["account"],
        window_open=closes is not None and datetime.now(UTC) < closes,
        window_closes_at=closes,
        items=items,
    )


def _refused(code: str, detail: str, field: str = "name") -> ApiError:
    return ApiError(
        422, code, detail, errors=[{"in": "body", "field": field, "message": detail[:200]}]
    )


@route(
    "POST",
    "/api/v1/conversations/{id}/template",
    summary="Send a WhatsApp template (allowed outside the 24 h window)",
    tag=TAG,
    body=TemplateSendBody,
    response=MessageView,
    status=201,
    errors=(404, 422),
)
async def send_template(call: Call) -> MessageView:
    body = call.b(TemplateSendBody)
    conv = await visible_conversation(call)
    channel = REGISTRY.get(conv["channel"])
    account = call.svc.config.account(conv["channel"], conv["account"])
    if conv["channel"] != "whatsapp" or account is None or not isinstance(channel, SendingChannel):
        raise _refused(
            "templates_unsupported",
            f"templates are sent on WhatsApp; this conversation is {conv['channel']}",
        )
    try:
        ref, text = wa.prepare(account, body.name, body.params, body.language)
    except SendError as exc:
        field = "params" if exc.code == "template_params" else "name"
        raise _refused(exc.code, exc.detail, field) from None
    why = await wa_templates.refusal(call.svc.store, conv["channel"], conv["account"], ref)
    if why is not None:
        raise _refused("template_not_approved", why)
    if not conv.get("reply_to"):
        raise ApiError(422, "no_recipient", "the conversation has no address to reply to")
    draft = {
        "_id": "draft",
        "channel": conv["channel"],
        "account": conv["account"],
        "recipient": conv["reply_to"],
        "text": text,
        "template": ref.model_dump(),
    }
    try:
        channel.check_outbound(account, outbound_of(draft, conv))
    except SendError as exc:
        raise ApiError(422, exc.code, exc.detail) from None
    doc = await outbox.queue(
        call.svc.store,
        conv,
        text=text,
        author_id=call.principal.user.id,
        template=ref.model_dump(),
    )
    await convs.queued(call.svc.store, conv, doc)
    if call.svc.outbox is not None:
        call.svc.outbox.wake.set()
    return MessageView.of(doc)
