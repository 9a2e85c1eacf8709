"""Data schemas of the events automation and the CRM edits it relies on append
(listed in ``inbox/event_catalogue.py``, documented in docs/events.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TaskCreated(_Data):
    title: str
    template: str | None = Field(description="the task's kind (rules test it)")
    assignee_id: str | None
    watchers: list[str]
    deadline: datetime | None
    rule_id: str | None = Field(description="the rule that created it (None: a person)")


class TaskChanged(_Data):
    template: str | None
    assignee_id: str | None
    by: str | None = Field(description="the user (or automation:<rule>) who did it")


class NotificationCreated(_Data):
    user_id: str = Field(description="who is notified")
    text: str
    rule_id: str | None


class TimerFired(_Data):
    rule_id: str
    timer_id: str
    n: int = Field(description="which firing of the timer this is (1, 2, …)")
    due_at: datetime


class FieldChange(BaseModel):
    old: Any = None
    new: Any = None


class FieldChanged(_Data):
    fields: dict[str, FieldChange] = Field(description="every field that changed")
    by: str | None


class ResponsibleChanged(_Data):
    from_: str | None = Field(alias="from")
    to: str | None
    by: str | None


class EntityDeleted(_Data):
    by: str | None
    reason: str = Field(description="why: duplicate (automation), or deleted (a user)")


class AutomationFailed(_Data):
    rule_id: str
    action: str = Field(description="the kind of action: move_to_stage, webhook, …")
    key: str = Field(description="the action's idempotency key")
    code: str = Field(description="stage_refused, no_conversation, webhook_failed, …")
    error: str
