"""What happened, as lines of text: one per event of the log (in order), said in the
words an owner of the process uses. Pure: events in, lines out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

Document = dict[str, Any]

# Events that would only repeat what another line says.
QUIET = frozenset(
    {
        "conversation.opened",
        "conversation.retargeted",
        "timer.fired",
        "sequence.filler",
        "contact.responsible_changed",
    }
)


def stamp(at: datetime, tz: ZoneInfo) -> str:
    local = at.astimezone(tz)
    return local.strftime("%Y-%m-%d %a %H:%M")


class Names:
    """Display names: people of the scenario by contact id, users by id."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self.contacts: dict[str, str] = {}

    def user(self, user_id: object) -> str:
        if not isinstance(user_id, str) or not user_id:
            return "nobody"
        return self.users.get(user_id, user_id)

    def contact(self, refs: Mapping[str, Any]) -> str:
        cid = refs.get("contact_id")
        return self.contacts.get(cid, "a customer") if isinstance(cid, str) else "a customer"


def _entity(refs: Mapping[str, Any]) -> str:
    if refs.get("deal_id"):
        return "deal"
    if refs.get("lead_id"):
        return "lead"
    return "item"


def _fields(data: Mapping[str, Any]) -> str:
    parts = []
    for name, change in (data.get("fields") or {}).items():
        new = change.get("new") if isinstance(change, dict) else change
        parts.append(f"{name}={new!r}")
    return ", ".join(parts)


def _time(value: object, tz: ZoneInfo) -> str:
    return stamp(value, tz) if isinstance(value, datetime) else "no deadline"


def line(e: Document, names: Names, tz: ZoneInfo) -> str | None:
    """One event as a line, or None for the ones the timeline leaves out."""
    kind: str = e.get("type", "")
    if kind in QUIET:
        return None
    d: Mapping[str, Any] = e.get("data") or {}
    refs: Mapping[str, Any] = e.get("refs") or {}
    who = names.contact(refs)
    formats: dict[str, Callable[[], str]] = {
        "contact.created": lambda: f"new contact: {who}",
        "lead.created": lambda: (
            f"new lead for {who} in {d.get('pipeline_id')}/{d.get('stage_id')}, "
            f"responsible {names.user(d.get('responsible_id'))}"
        ),
        "lead.repeat_created": lambda: (
            f"repeat lead for {who} in {d.get('pipeline_id')}/{d.get('stage_id')}, "
            f"responsible {names.user(d.get('responsible_id'))}"
        ),
        "deal.created": lambda: (
            f"new deal for {who} in {d.get('pipeline_id')}/{d.get('stage_id')}, "
            f"responsible {names.user(d.get('responsible_id'))}"
        ),
        "message.attached": lambda: (
            f"routing: {who}'s {d.get('channel')} message → {_entity(refs)} "
            f"(rule {d.get('rule')}: {d.get('reason')})"
        ),
        "lead.stage_changed": lambda: (
            f"{who}'s lead: {d.get('from')} → {d.get('to')} (by {names.user(d.get('by'))})"
        ),
        "deal.stage_changed": lambda: (
            f"{who}'s deal in {d.get('pipeline_id')}: {d.get('from')} → {d.get('to')} "
            f"(by {names.user(d.get('by'))})"
        ),
        "lead.field_changed": lambda: f"{who}'s lead: {_fields(d)}",
        "deal.field_changed": lambda: f"{who}'s deal: {_fields(d)}",
        "lead.responsible_changed": lambda: (
            f"{who}'s lead: responsible {names.user(d.get('from'))} → {names.user(d.get('to'))}"
        ),
        "deal.responsible_changed": lambda: (
            f"{who}'s deal: responsible {names.user(d.get('from'))} → {names.user(d.get('to'))}"
        ),
        "task.created": lambda: (
            f"task «{d.get('title')}» for {names.user(d.get('assignee_id'))}, due "
            f"{_time(d.get('deadline'), tz)}"
            + (f" (rule {d['rule_id']})" if d.get("rule_id") else "")
        ),
        "task.completed": lambda: f"task done by {names.user(d.get('by'))}",
        "notification.created": lambda: (
            f"notify {names.user(d.get('user_id'))}: «{d.get('text')}»"
            + (f" (rule {d['rule_id']})" if d.get("rule_id") else "")
        ),
        "message.queued": lambda: f"to {who}: «{d.get('text', '')}»",
        "lead.converted": lambda: f"{who}'s lead converted into a deal in {d.get('pipeline_id')}",
        "call.missed": lambda: f"missed call from {who}",
        "call.ended": lambda: f"call with {who} ended",
        "call.started": lambda: f"{who} calls",
        "automation.failed": lambda: (
            f"ROBOT FAILED: rule {d.get('rule_id')} {d.get('action')}: {d.get('error')}"
        ),
        "lead.deleted": lambda: f"{who}'s lead deleted ({d.get('reason')})",
        "deal.deleted": lambda: f"{who}'s deal deleted ({d.get('reason')})",
    }
    fmt = formats.get(kind)
    if fmt is not None:
        return fmt()
    shown = {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
    return f"{kind} {shown}" if shown else kind
