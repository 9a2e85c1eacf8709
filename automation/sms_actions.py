"""The ``send_sms`` and ``send_survey`` actions (docs/channels/sms.md, docs/survey.md)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pymongo.errors import DuplicateKeyError

from automation.rules_base import Ident, Strict

if TYPE_CHECKING:
    from automation.actions import Executor
    from automation.conditions import Snapshot
    from automation.evaluate import Planned
    from config.models import ChannelAccount


class SendSms(Strict):
    text: str = Field(min_length=1, max_length=1000)
    # An account of channel ``sms``; default: the first one configured.
    account: Ident | None = None


class SendSurvey(Strict):
    # A survey of the pipeline's configuration.
    survey: Ident
    via: Literal["conversation", "sms"] = "conversation"


def sms_account(ex: Executor, name: str | None) -> ChannelAccount:
    """The SMS account ``name``, or the first enabled one configured."""
    from automation.actions import ActionError

    found = next(
        (
            a
            for a in ex.config.channels.accounts
            if a.channel == "sms" and a.enabled and (name is None or a.account == name)
        ),
        None,
    )
    if found is None:
        raise ActionError("no_sms_account", f"no SMS account {name or ''}".rstrip())
    return found


async def contact_phone(ex: Executor, contact_id: str | None) -> str:
    """The contact's first phone (E.164); refused if it has none or opted out of SMS."""
    from automation.actions import ActionError
    from crm_store import sms_contacts

    if contact_id is None:
        raise ActionError("no_contact", "the entity has no contact to text")
    why = await sms_contacts.opt_out_reason(ex.store, contact_id)
    if why is not None:
        raise ActionError("sms_opted_out", f"the contact opted out of SMS: {why}")
    doc = await ex.store.contacts.find_one({"_id": contact_id}, {"identities": 1})
    for key in (doc or {}).get("identities") or []:
        if isinstance(key, str) and key.startswith("phone:"):
            return key.removeprefix("phone:")
    raise ActionError("no_phone", "the contact has no phone number")


async def queue_sms(
    ex: Executor, p: Planned, snap: Snapshot, account: ChannelAccount, text: str
) -> None:
    """Queue ``text`` to the contact's phone on ``account``; once per planned action
    (the message id is the action's key: a retried firing finds it queued)."""
    from automation.actions import ActionError
    from channels import REGISTRY
    from channels.base import OutboundMessage, SendError, SendingChannel
    from crm_store import outbox, sms_contacts

    phone = await contact_phone(ex, snap.contact_id)
    assert snap.contact_id is not None
    target = (
        {"kind": snap.kind, "id": snap.id, "open": snap.open} if snap.kind != "contact" else None
    )
    conv = await sms_contacts.sms_conversation(
        ex.store, account.account, snap.contact_id, phone, target
    )
    channel = REGISTRY["sms"]
    assert isinstance(channel, SendingChannel)
    try:
        channel.check_outbound(
            account,
            OutboundMessage(
                id=p.key, channel="sms", account=account.account, recipient=phone, text=text
            ),
        )
    except SendError as exc:
        raise ActionError(exc.code, exc.detail) from None
    with contextlib.suppress(DuplicateKeyError):  # queued by an earlier run
        await outbox.queue(
            ex.store, conv, text=text, author_id=ex.by(p), message_id=p.key, automatic=True
        )


async def send_sms(ex: Executor, p: Planned, spec: SendSms, snap: Snapshot) -> None:
    await queue_sms(ex, p, snap, sms_account(ex, spec.account), ex.text(p, snap, spec.text))


async def send_survey(ex: Executor, p: Planned, spec: SendSurvey, snap: Snapshot) -> None:
    """The deal's survey (one per deal and survey: the same link every time) and a
    message with its signed link, through the conversation's channel or by SMS."""
    from automation import templates
    from automation.actions import ActionError
    from automation.rules import SendMessage
    from crm_store import entities, outbox, surveys

    ex.deal_or_lead(snap, "send_survey")
    pipeline = ex.config.pipeline(snap.pipeline_id) if snap.pipeline_id else None
    survey = pipeline.survey(spec.survey) if pipeline is not None else None
    if snap.kind != "deal" or survey is None:
        raise ActionError(
            "no_survey", f"no survey '{spec.survey}' in the deal's pipeline {snap.pipeline_id}"
        )
    deal = await entities.get(ex.store, "deal", snap.id)
    if deal is None:
        raise ActionError("not_found", f"no deal {snap.id}")
    user = ex.config.user(snap.responsible_id) if snap.responsible_id else None
    doc = await surveys.create(
        ex.store,
        deal,
        survey,
        department=user.department if user is not None else None,
        at=ex.clock.now(),
    )
    expires: datetime = doc["expires_at"]
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    token = (await surveys.signer(ex.store)).token(doc["_id"], expires)
    link = f"{survey.base_url.rstrip('/')}/survey/{token}"
    text = templates.render(survey.text, {**ex.values(p, snap), "survey.link": link})
    if spec.via == "sms":
        await queue_sms(ex, p, snap, sms_account(ex, None), text)
        return
    conv = await ex.conversation(SendMessage(text=text), snap)
    if conv is None:
        raise ActionError("no_conversation", "no conversation with the customer")
    with contextlib.suppress(DuplicateKeyError):  # queued by an earlier run
        await outbox.queue(
            ex.store, conv, text=text, author_id=ex.by(p), message_id=p.key, automatic=True
        )
