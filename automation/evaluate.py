"""The decision part of the engine (pure): which rules an event triggers, what they do now,
which timers they set, and what a timer does when it comes due.

Inputs are an event (its :class:`~automation.conditions.Facts`), a
:class:`~automation.conditions.Snapshot` of the entity, the :class:`RuleBook`, the working
calendar and the engine's now; outputs are :class:`Planned` actions — each with its
idempotency key, derived from the rule, the entity and the occurrence (the event, or the
timer and its firing number) — and :class:`TimerPlan` s. Nothing here reads or writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from automation.calendar import WorkingCalendar
from automation.conditions import Facts, Snapshot, matches
from automation.rules import TRIGGERS, Action, AtField, AutomationFile, Rule
from crm_store.documents import stable_id

# Event types → the triggers they are.
STAGE_EVENTS = ("lead.stage_changed", "deal.stage_changed")
FIELD_EVENTS = ("lead.field_changed", "deal.field_changed")
RESPONSIBLE_EVENTS = ("lead.responsible_changed", "deal.responsible_changed")
# Events after which a lead's/deal's open tasks are cancelled (automation/worker.py): a
# stage move may close it; conversion and deletion always do.
CLOSING_EVENTS = (*STAGE_EVENTS, "lead.converted", "lead.deleted", "deal.deleted")
SOURCE_EVENTS: dict[str, tuple[str, ...]] = {
    "lead.created": ("lead.created",),
    "lead.repeat_created": ("lead.repeat_created",),
    "deal.created": ("deal.created",),
    "call.missed": ("call.missed",),
    "task.completed": ("task.completed",),
    "timer.due": ("timer.fired",),
    "stage.entered": STAGE_EVENTS,
    "stage.left": STAGE_EVENTS,
    "field.changed": FIELD_EVENTS,
    "responsible.changed": RESPONSIBLE_EVENTS,
    "message.received": ("message.attached",),
    "document.generated": ("document.generated",),
    "document.sent": ("document.sent",),
    "document.signed": ("document.signed",),
}


@dataclass(frozen=True, slots=True)
class Planned:
    """One action to carry out."""

    rule: Rule
    index: int  # its position in the rule's ``do``
    action: Action
    key: str  # idempotency key: (rule, entity, occurrence, position)
    n: int | None = None  # which firing of a timer


@dataclass(frozen=True, slots=True)
class TimerPlan:
    id: str
    rule_id: str
    due_at: datetime
    in_stage: bool
    stage_id: str | None
    stage_since: datetime | None
    field: str | None
    field_value: Any
    times: int | None
    event_id: str


@dataclass(slots=True)
class Plan:
    actions: list[Planned] = field(default_factory=list)
    timers: list[TimerPlan] = field(default_factory=list)
    # The stage changed: cancel the entity's stage-bound timers of other visits.
    stage_changed: bool = False
    # (rule id, timer id to keep, or None): a date field changed, the rule's other timers
    # on the entity are void.
    replaced: list[tuple[str, str | None]] = field(default_factory=list)
    # (rule id, why): an ``until`` event happened, the rule's timers on the entity stop.
    stopped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.actions or self.timers or self.stage_changed or self.replaced or self.stopped
        )


@dataclass(frozen=True, slots=True)
class TimerDecision:
    fire: bool
    n: int
    actions: list[Planned] = field(default_factory=list)
    next_due: datetime | None = None
    reason: str = ""


class RuleBook:
    """The rules of a configuration, indexed by trigger."""

    def __init__(self, automation: AutomationFile) -> None:
        self.rules = [r for r in automation.rules if r.enabled]
        self.by_id = {r.id: r for r in self.rules}
        self.by_trigger: dict[str, list[Rule]] = {t: [] for t in TRIGGERS}
        for rule in self.rules:
            for trigger in rule.on:
                self.by_trigger[trigger].append(rule)
        # Rules whose timers an event stops (``until``), by trigger.
        self.stopped_by: dict[str, list[Rule]] = {t: [] for t in TRIGGERS}
        for rule in self.rules:
            for trigger in rule.until.on if rule.until is not None else ():
                self.stopped_by[trigger].append(rule)
        used = {
            key
            for r in self.rules
            for c in (r.if_, r.while_)
            if c is not None
            for key in c.keys_used()
        }
        # Fields a task's deadline is computed from (create_task deadline_at).
        self.deadline_fields = {
            a.create_task.deadline_at.field
            for r in self.rules
            for a in r.do
            if a.create_task is not None and a.create_task.deadline_at is not None
        }
        self.needs_tasks = "tasks" in used
        self.needs_won_deals = "won_deals" in used
        self.needs_channel = "channel" in used
        self.event_types = sorted(
            {
                etype
                for index in (self.by_trigger, self.stopped_by)
                for trigger, rules in index.items()
                if rules
                for etype in SOURCE_EVENTS[trigger]
            }
            # Stage moves and date fields also cancel timers; closings cancel tasks.
            | set(CLOSING_EVENTS)
            | (set(STAGE_EVENTS) if any(r.bound_to_stage for r in self.rules) else set())
            | (set(FIELD_EVENTS) if any(r.at is not None for r in self.rules) else set())
            # A task's deadline_at follows its field (AutomationWorker.follow_deadlines).
            | (set(FIELD_EVENTS) if self.deadline_fields else set())
        )

    def rules_for(self, trigger: str) -> list[Rule]:
        return self.by_trigger.get(trigger, [])


# --- events → facts --------------------------------------------------------------------


def facts_of(ev: Mapping[str, Any]) -> list[Facts]:
    """The triggers an event is, with what it says (empty: none)."""
    etype: str = ev["type"]
    data: Mapping[str, Any] = ev.get("data") or {}
    base: dict[str, Any] = {"event_id": str(ev["_id"]), "at": ev["occurred_at"]}
    if etype in ("lead.created", "lead.repeat_created", "deal.created"):
        return [
            Facts(etype, pipeline_id=data.get("pipeline_id"), stage_id=data.get("stage_id"), **base)
        ]
    if etype in STAGE_EVENTS:
        frm, to, pipeline = data.get("from"), data.get("to"), data.get("pipeline_id")
        out = [
            Facts(
                trigger,
                stage_id=stage,
                pipeline_id=pipeline,
                from_stage=frm,
                to_stage=to,
                **base,
            )
            for trigger, stage in (("stage.left", frm), ("stage.entered", to))
            if stage
        ]
        return out
    if etype in FIELD_EVENTS:
        return [Facts("field.changed", changed=frozenset(data.get("fields") or {}), **base)]
    if etype in RESPONSIBLE_EVENTS:
        return [Facts("responsible.changed", **base)]
    if etype == "message.attached":
        return [
            Facts(
                "message.received",
                channel=data.get("channel"),
                automatic=bool(data.get("automatic", False)),
                **base,
            )
        ]
    if etype == "call.missed":
        return [Facts("call.missed", channel=data.get("channel"), **base)]
    if etype == "task.completed":
        return [Facts("task.completed", task=data.get("template"), **base)]
    if etype == "timer.fired":
        return [Facts("timer.due", timer=data.get("rule_id"), **base)]
    if etype in ("document.generated", "document.sent", "document.signed"):
        kind = data.get("type")
        return [Facts(etype, document=kind if isinstance(kind, str) else None, **base)]
    return []


def entity_of(ev: Mapping[str, Any]) -> tuple[str, str] | None:
    """The lead, deal or contact an event is about (a deal before a lead before a
    contact)."""
    refs: Mapping[str, Any] = ev.get("refs") or {}
    for kind in ("deal", "lead", "contact"):
        if refs.get(f"{kind}_id"):
            return kind, str(refs[f"{kind}_id"])
    return None


# --- planning --------------------------------------------------------------------------


def action_key(rule_id: str, entity_id: str, occurrence: str, index: int) -> str:
    return stable_id("action", rule_id, entity_id, occurrence, str(index))


def planned(rule: Rule, entity_id: str, occurrence: str, n: int | None = None) -> list[Planned]:
    return [
        Planned(rule, i, a, action_key(rule.id, entity_id, occurrence, i), n)
        for i, a in enumerate(rule.do)
    ]


def as_moment(value: Any, cal: WorkingCalendar) -> tuple[date, time | None] | None:
    """A date field's value as (local date, local time or None for a date alone)."""
    if isinstance(value, datetime):
        local = cal.local(value) if value.tzinfo else value
        return local.date(), local.time().replace(tzinfo=None)
    if isinstance(value, date):
        return value, None
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text), None
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is not None:
            parsed = cal.local(parsed)
        return parsed.date(), parsed.time().replace(tzinfo=None)
    return None


def field_moment(at: AtField, value: Any, cal: WorkingCalendar) -> datetime | None:
    """The moment ``at`` names for a field value — the date at ``at.time`` (else the
    value's own time, else 00:00) plus the offset (working time included) — past or not;
    None when the value is no date (a task's ``deadline_at``)."""
    moment = as_moment(value, cal)
    if moment is None:
        return None
    day, clock = moment
    return cal.add(cal.at(day, at.time or clock or time(0, 0)), at.offset)


def at_field_due(at: AtField, value: Any, cal: WorkingCalendar, now: datetime) -> datetime | None:
    """When an ``at`` timer is due for a field value: the date (at ``at.time``, else the
    value's own time, else 00:00) plus the offset. A moment already past still fires —
    at once — if it falls on today; a past day is skipped (None)."""
    moment = as_moment(value, cal)
    if moment is None:
        return None
    day, clock = moment
    base = cal.at(day, at.time or clock or time(0, 0))
    due = cal.add(base, at.offset)
    if due >= now:
        return due
    if cal.local(due).date() >= cal.local(now).date():
        return now
    return None


def first_due(
    rule: Rule, snap: Snapshot, anchor: datetime, cal: WorkingCalendar, now: datetime
) -> datetime | None:
    if rule.after is not None:
        return cal.add(anchor, rule.after)
    if rule.every is not None:
        return cal.add(anchor, rule.every)
    if rule.at is not None:
        return at_field_due(rule.at, snap.fields.get(rule.at.field), cal, now)
    if rule.daily is not None:
        return cal.next_daily(anchor, rule.daily.at, working_days=rule.daily.working_days)
    return None


def next_due(
    rule: Rule, fired: int, due: datetime, cal: WorkingCalendar, now: datetime
) -> datetime | None:
    """After firing number ``fired`` (due at ``due``): when next, or None (done). A repeat
    that fell behind (the engine was down) is not caught up: the next one counts from now."""
    if rule.times is not None and fired >= rule.times:
        return None
    if rule.every is not None:
        nxt = cal.add(due, rule.every)
        return nxt if nxt > now else cal.add(now, rule.every)
    if rule.daily is not None:
        return cal.next_daily(max(due, now), rule.daily.at, working_days=rule.daily.working_days)
    return None


def _timer(
    rule: Rule, snap: Snapshot, facts: Facts, cal: WorkingCalendar, now: datetime
) -> TimerPlan | None:
    anchor = min(facts.at, now)
    stage_since: datetime | None = None
    if rule.bound_to_stage:
        # "After D in the stage, if still there": the visit must still be going on.
        if snap.stage_id is None or (facts.stage_id and snap.stage_id != facts.stage_id):
            return None
        stage_since = snap.stage_entered_at
        anchor = min(stage_since or anchor, now)
        basis = f"stage:{snap.stage_id}:{stage_since.isoformat() if stage_since else ''}"
    elif rule.at is not None:
        basis = f"field:{rule.at.field}:{snap.fields.get(rule.at.field)!r}"
    else:
        basis = f"event:{facts.event_id}:{facts.trigger}"
    due = first_due(rule, snap, anchor, cal, now)
    if due is None:
        return None
    return TimerPlan(
        id=stable_id("timer", rule.id, snap.id, basis),
        rule_id=rule.id,
        due_at=due,
        in_stage=rule.bound_to_stage,
        stage_id=snap.stage_id,
        stage_since=stage_since,
        field=rule.at.field if rule.at else None,
        field_value=snap.fields.get(rule.at.field) if rule.at else None,
        times=rule.times,
        event_id=facts.event_id,
    )


def plan_event(
    book: RuleBook, facts: list[Facts], snap: Snapshot, cal: WorkingCalendar, now: datetime
) -> Plan:
    """What an event makes the rules do for ``snap``."""
    plan = Plan()
    if snap.deleted:
        return plan
    for f in facts:
        if f.trigger in ("stage.entered", "stage.left"):
            plan.stage_changed = True
        if f.trigger == "field.changed":
            # A date a timer was set from changed: its old timers are void.
            for rule in book.rules:
                if rule.at is not None and rule.at.field in f.changed:
                    plan.replaced.append((rule.id, None))
        for rule in book.stopped_by.get(f.trigger, []):
            until = rule.until
            if until is not None and (until.if_ is None or matches(until.if_, snap, f)):
                plan.stopped.append((rule.id, f"until {f.trigger}"))
        for rule in book.rules_for(f.trigger):
            if rule.if_ is not None and not matches(rule.if_, snap, f):
                continue
            if rule.timed:
                timer = _timer(rule, snap, f, cal, now)
                if timer is not None:
                    plan.timers.append(timer)
                    if rule.at is not None:
                        plan.replaced = [(r, keep) for r, keep in plan.replaced if r != rule.id] + [
                            (rule.id, timer.id)
                        ]
            else:
                plan.actions.extend(planned(rule, snap.id, f"{f.event_id}:{f.trigger}"))
    return plan


def plan_timer(
    book: RuleBook,
    timer: Mapping[str, Any],
    snap: Snapshot | None,
    cal: WorkingCalendar,
    now: datetime,
) -> TimerDecision:
    """A due timer: fire (with its actions and when it is due next) or cancel, and why."""
    n = int(timer.get("fired", 0)) + 1
    rule = book.by_id.get(str(timer["rule_id"]))
    if rule is None:
        return TimerDecision(False, n, reason="the rule is gone or disabled")
    if snap is None or snap.deleted:
        return TimerDecision(False, n, reason="the lead/deal is gone")
    if snap.outcome == "converted":  # terminal: the work goes on in its deal
        return TimerDecision(False, n, reason="the lead was converted into a deal")
    if timer.get("in_stage") and (
        snap.stage_id != timer.get("stage_id") or snap.stage_entered_at != timer.get("stage_since")
    ):
        return TimerDecision(False, n, reason="it left the stage")
    if rule.at is not None and snap.fields.get(rule.at.field) != timer.get("field_value"):
        return TimerDecision(False, n, reason=f"{rule.at.field} changed")
    if rule.while_ is not None and not matches(rule.while_, snap):
        return TimerDecision(False, n, reason="its condition no longer holds")
    actions = planned(rule, snap.id, f"{timer['_id']}#{n}", n)
    return TimerDecision(True, n, actions, next_due(rule, n, timer["due_at"], cal, now))
