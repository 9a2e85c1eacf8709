"""The ``send_sms`` and ``send_survey`` actions (docs/channels/sms.md, docs/survey.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from automation.rules_base import Ident, Strict

if TYPE_CHECKING:
    from automation.actions import Executor
    from automation.conditions import Snapshot
    from automation.evaluate import Planned


class SendSms(Strict):
    text: str = Field(min_length=1, max_length=1000)
    # An account of channel ``sms``; default: the first one configured.
    account: Ident | None = None


class SendSurvey(Strict):
    # A survey of the pipeline's configuration.
    survey: Ident
    via: Literal["conversation", "sms"] = "conversation"


async def send_sms(ex: Executor, p: Planned, spec: SendSms, snap: Snapshot) -> None:
    from automation.actions import ActionError

    raise ActionError("not_available", "SMS is not built yet")


async def send_survey(ex: Executor, p: Planned, spec: SendSurvey, snap: Snapshot) -> None:
    from automation.actions import ActionError

    raise ActionError("not_available", "surveys are not built yet")
