"""Matching conditions (pure): a condition against an entity snapshot and, for triggered
rules, the facts of the event.

A :class:`Snapshot` is what the engine knows of one lead, deal or contact when a rule runs;
:class:`Facts` is what the triggering event says (the stage entered, the fields changed,
the task completed …). Stage entry guards use the same matching with no facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from automation.rules import Compare, Condition, FieldRef, FieldTest, Operand

EMPTY: tuple[object, ...] = (None, "", [], {})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One lead, deal or contact as the engine sees it."""

    kind: str  # lead | deal | contact
    id: str
    pipeline_id: str | None = None
    stage_id: str | None = None
    stage_entered_at: datetime | None = None
    open: bool = True
    deleted: bool = False
    # How a closed lead/deal ended: won | failed | converted (a lead that became a deal:
    # terminal, its timers never fire) | merged …; None while open.
    outcome: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    responsible_id: str | None = None
    source_id: str | None = None
    is_repeat: bool = False
    title: str | None = None
    contact_id: str | None = None
    contact_name: str | None = None
    company_id: str | None = None
    # Deals of the contact in a won stage.
    won_deals: int = 0
    # The state of the latest task of each template on this entity: open | done.
    tasks: Mapping[str, str] = field(default_factory=dict)
    # The channel of the message that created the lead/deal.
    channel: str | None = None
    # Users watching the lead/deal (``watchers`` on it): the rules' ``watchers``.
    watchers: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        kind: str,
        doc: Mapping[str, Any],
        *,
        contact: Mapping[str, Any] | None = None,
        tasks: Mapping[str, str] | None = None,
        won_deals: int = 0,
        channel: str | None = None,
    ) -> Snapshot:
        if kind == "contact":
            contact = contact or doc
        return cls(
            kind=kind,
            id=str(doc["_id"]),
            pipeline_id=doc.get("pipeline_id"),
            stage_id=doc.get("stage_id"),
            stage_entered_at=doc.get("stage_entered_at") or doc.get("created_at"),
            open=bool(doc.get("open", True)),
            deleted=bool(doc.get("deleted", False)),
            outcome=doc.get("outcome"),
            fields=dict(doc.get("fields") or {}),
            responsible_id=doc.get("responsible_id"),
            source_id=doc.get("source_id"),
            is_repeat=bool(doc.get("is_repeat", False)),
            title=doc.get("title") or doc.get("name"),
            contact_id=doc.get("contact_id") if kind != "contact" else str(doc["_id"]),
            contact_name=(contact or {}).get("name"),
            company_id=doc.get("company_id") or (contact or {}).get("company_id"),
            won_deals=won_deals,
            tasks=dict(tasks or {}),
            channel=channel,
            watchers=tuple(w for w in doc.get("watchers") or () if isinstance(w, str)),
        )


@dataclass(frozen=True, slots=True)
class Facts:
    """What the triggering event says. Absent for timers and stage guards."""

    trigger: str
    event_id: str
    at: datetime
    pipeline_id: str | None = None
    stage_id: str | None = None
    from_stage: str | None = None
    to_stage: str | None = None
    changed: frozenset[str] = frozenset()
    task: str | None = None
    timer: str | None = None
    channel: str | None = None
    automatic: bool | None = None
    document: str | None = None  # the type of a document.* event's document


def filled(value: object) -> bool:
    """Has a value: not absent, null, "", [] or {} (0 and false are values)."""
    return value not in EMPTY


def _comparable(a: object, b: object) -> tuple[Any, Any] | None:
    """Both values in one comparable kind (numbers, text, dates), else None."""
    if isinstance(a, Decimal):
        a = float(a)
    if isinstance(b, Decimal):
        b = float(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if isinstance(a, bool) and isinstance(b, bool) else None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a, b
    if isinstance(a, (date, datetime)) and isinstance(b, str):
        return a.isoformat(), b
    if isinstance(a, str) and isinstance(b, (date, datetime)):
        return a, b.isoformat()
    if isinstance(a, date) and isinstance(b, date):
        return a, b
    return None


def _equal(a: object, b: object) -> bool:
    pair = _comparable(a, b)
    return pair is not None and pair[0] == pair[1]


def _operand(op: Operand, fields: Mapping[str, Any]) -> object:
    return fields.get(op.field) if isinstance(op, FieldRef) else op


def _order(a: object, b: object, test: str) -> bool:
    pair = _comparable(a, b)
    if pair is None or a is None or b is None:
        return False
    x, y = pair
    try:
        return bool({"gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}[test])
    except TypeError:
        return False


def compare(test: Compare, value: object, fields: Mapping[str, Any]) -> bool:
    if test.eq is not None and not _equal(value, _operand(test.eq, fields)):
        return False
    if test.ne is not None and _equal(value, _operand(test.ne, fields)):
        return False
    for name in ("gt", "gte", "lt", "lte"):
        op: Operand | None = getattr(test, name)
        if op is not None and not _order(value, _operand(op, fields), name):
            return False
    if test.in_ is not None and not any(_equal(value, v) for v in test.in_):
        return False
    if test.not_in is not None and any(_equal(value, v) for v in test.not_in):
        return False
    return test.filled is None or filled(value) is test.filled


def field_matches(test: FieldTest, value: object, fields: Mapping[str, Any]) -> bool:
    if test is None:
        return not filled(value)
    if isinstance(test, Compare):
        return compare(test, value, fields)
    if isinstance(test, list):
        return any(_equal(value, v) for v in test)
    return _equal(value, test)


def _one_of(allowed: tuple[str, ...] | None, value: str | None) -> bool:
    return allowed is None or (value is not None and value in allowed)


def matches(cond: Condition, snap: Snapshot, facts: Facts | None = None) -> bool:
    """Does ``cond`` hold for ``snap`` (and the event ``facts``, if any)?"""
    f = facts
    if cond.kind is not None and snap.kind not in cond.kind:
        return False
    pipeline = (f.pipeline_id if f and f.pipeline_id else None) or snap.pipeline_id
    if not _one_of(cond.pipeline, pipeline):
        return False
    stage = (f.stage_id if f and f.stage_id else None) or snap.stage_id
    if not _one_of(cond.stage, stage):
        return False
    if cond.from_stage is not None and not _one_of(cond.from_stage, f.from_stage if f else None):
        return False
    if cond.to_stage is not None and not _one_of(cond.to_stage, f.to_stage if f else None):
        return False
    if not _one_of(cond.source, snap.source_id):
        return False
    channel = (f.channel if f and f.channel else None) or snap.channel
    if not _one_of(cond.channel, channel):
        return False
    if not _one_of(cond.responsible, snap.responsible_id):
        return False
    if cond.is_repeat is not None and snap.is_repeat is not cond.is_repeat:
        return False
    if cond.open is not None and (snap.open and not snap.deleted) is not cond.open:
        return False
    if cond.automatic is not None and (f is None or f.automatic is not cond.automatic):
        return False
    if cond.changed is not None and not (f is not None and f.changed & set(cond.changed)):
        return False
    if cond.task is not None and not _one_of(cond.task, f.task if f else None):
        return False
    if cond.timer is not None and not _one_of(cond.timer, f.timer if f else None):
        return False
    if cond.document is not None and not _one_of(cond.document, f.document if f else None):
        return False
    for name, test in (cond.fields or {}).items():
        if not field_matches(test, snap.fields.get(name), snap.fields):
            return False
    for template, state in (cond.tasks or {}).items():
        if snap.tasks.get(template, "none") != state:
            return False
    if cond.won_deals is not None:
        won = cond.won_deals
        ok = compare(won, snap.won_deals, {}) if isinstance(won, Compare) else snap.won_deals == won
        if not ok:
            return False
    if cond.all is not None and not all(matches(c, snap, facts) for c in cond.all):
        return False
    if cond.any is not None and not any(matches(c, snap, facts) for c in cond.any):
        return False
    return cond.not_ is None or not matches(cond.not_, snap, facts)
