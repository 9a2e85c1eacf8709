"""The rule language of ``config/automation.yaml`` (docs/automation.md).

A rule: ``on`` (triggers) · ``if`` (a condition on the event and the entity) · an optional
delay (``after`` / ``every`` + ``times`` / ``at`` a date field / ``daily``) with ``while``
(re-checked whenever the timer comes due) · ``do`` (actions, in order).

These are plain pydantic models with no reference to the rest of the configuration;
:func:`rule_problems` finds what a single rule gets wrong in itself, and
``config.loader`` checks the references into the other files.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time as TimeOfDay
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from automation.document_actions import MakeDocument
from automation.durations import Duration, DurationField, Unit
from automation.rules_base import IDENT_PATTERN, EnvName, Ident, Strict
from automation.sms_actions import SendSms, SendSurvey

__all__ = ["IDENT_PATTERN", "EnvName", "Ident", "Strict"]


def _listed(value: Any) -> Any:
    """A single value where a list is allowed: ``stage: won`` ≡ ``stage: [won]``,
    ``to: {user: x}`` ≡ ``to: [{user: x}]``."""
    single = isinstance(value, (str, int, float, bool, dict)) or value is None
    return [value] if single else value


IdList = Annotated[tuple[Ident, ...], BeforeValidator(_listed)]

TRIGGERS: tuple[str, ...] = (
    "lead.created",
    "lead.repeat_created",
    "deal.created",
    "stage.entered",
    "stage.left",
    "field.changed",
    "responsible.changed",
    "message.received",
    "call.missed",
    "task.completed",
    "timer.due",
    "document.generated",
    "document.sent",
    "document.signed",
)
Trigger = Literal[
    "lead.created",
    "lead.repeat_created",
    "deal.created",
    "stage.entered",
    "stage.left",
    "field.changed",
    "responsible.changed",
    "message.received",
    "call.missed",
    "task.completed",
    "timer.due",
    "document.generated",
    "document.sent",
    "document.signed",
]
TriggerList = Annotated[tuple[Trigger, ...], BeforeValidator(_listed), Field(min_length=1)]


# --- conditions ------------------------------------------------------------------------

Scalar = str | int | float | bool


class FieldRef(Strict):
    """Compare with another field of the same entity: ``{gte: {field: amount}}``."""

    field: Ident


Operand = Scalar | FieldRef


class Compare(Strict):
    """Tests of one field's value; all given must hold."""

    eq: Operand | None = None
    ne: Operand | None = None
    gt: Operand | None = None
    gte: Operand | None = None
    lt: Operand | None = None
    lte: Operand | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    # true: has a value (not absent, null, "" or []); false: has none.
    filled: bool | None = None


# A plain value means "equals", a list "one of", null "has no value".
FieldTest = Compare | list[Scalar] | Scalar | None
TaskState = Literal["open", "done", "none"]
EntityKind = Literal["lead", "deal", "contact"]
KindList = Annotated[tuple[EntityKind, ...], BeforeValidator(_listed)]


class Condition(Strict):
    """Every key given must hold (``all`` / ``any`` / ``not`` combine conditions).

    Stage keys look at the event where it names one (the stage entered or left, the stage a
    lead was created in); everything else at the entity as it is when the rule runs.
    """

    kind: KindList | None = None
    pipeline: IdList | None = None
    stage: IdList | None = None
    from_stage: IdList | None = None
    to_stage: IdList | None = None
    source: IdList | None = None
    channel: IdList | None = None
    responsible: IdList | None = None
    is_repeat: bool | None = None
    automatic: bool | None = None
    changed: IdList | None = None
    task: IdList | None = None
    timer: IdList | None = None
    # The document type of a document.* event (templates.yaml ``type``).
    document: IdList | None = None
    fields: dict[Ident, FieldTest] | None = None
    tasks: dict[Ident, TaskState] | None = None
    won_deals: Compare | int | None = None
    # The lead/deal is open (false: closed won or failed, converted, deleted).
    open: bool | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    def keys_used(self) -> Iterator[str]:
        """Every key set here and in nested conditions."""
        for name in self.model_fields_set:
            yield type(self).model_fields[name].alias or name
        for sub in [*(self.all or []), *(self.any or [])]:
            yield from sub.keys_used()
        if self.not_ is not None:
            yield from self.not_.keys_used()


# Keys a stage entry condition may use: what the entity itself holds.
ENTRY_KEYS = frozenset(
    {"fields", "responsible", "source", "is_repeat", "won_deals", "all", "any", "not"}
)


# --- who -------------------------------------------------------------------------------

Role = Literal["manager", "director", "admin"]


class UserRef(Strict):
    user: Ident


class RoleRef(Strict):
    role: Role


# responsible: the entity's responsible; head (or supervisor): the responsible's head —
# the head of their department, or of the department above if they head it themselves;
# watchers: the users watching the lead/deal (its ``watchers``, set through the API).
Who = Literal["responsible", "head", "supervisor", "watchers"] | UserRef | RoleRef
WhoList = Annotated[tuple[Who, ...], BeforeValidator(_listed), Field(min_length=1)]


# --- actions ---------------------------------------------------------------------------


class FieldWho(Strict):
    """A task's assignee held in a field of the lead/deal (``{field: master}``: the user id
    chosen on the deal). Not a user, or inactive, when the task is made: the task goes to
    the notification fallback (head → director → admin) and ``automation.failed`` says why."""

    field: Ident


class AtField(Strict):
    """Due at the date (or date and time) held in ``field``, plus ``offset`` (negative:
    before), at local ``time`` of that day if given (a date alone means 00:00)."""

    field: Ident
    offset: DurationField = Duration(0, Unit.DAYS)
    time: TimeOfDay | None = None


class CreateTask(Strict):
    title: str = Field(min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=5000)
    # The task's kind, for conditions (task.completed ``task:``, ``tasks:``); default: the
    # rule's id.
    template: Ident | None = None
    assignee: Who | FieldWho = "responsible"
    deadline: DurationField | None = None
    # The deadline from a date field of the lead/deal, as a rule's ``at:`` (offset in
    # calendar or working time, optional local time of day); not with ``deadline``.
    deadline_at: AtField | None = None
    checklist: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list
    )
    watchers: list[Who] = Field(default_factory=list)
    # A notification to the assignee this long before the deadline unless the task is done
    # by then (the worker's reminder pass; docs/automation.md "Task reminders").
    remind_before: DurationField | None = None


class Notify(Strict):
    to: WhoList
    text: str = Field(min_length=1, max_length=2000)


class SetField(Strict):
    """One of ``value`` (null clears the field), ``compute`` (arithmetic on fields:
    ``amount - prepayment_amount``), ``copy`` (another field's value) or ``now: true``
    (the service clock's current time, e.g. when the lead was checked)."""

    field: Ident
    value: Scalar | None = None
    compute: str | None = None
    copy_from: Ident | None = Field(default=None, alias="copy")
    now: Literal[True] | None = None


class MoveToStage(Strict):
    # A stage of the entity's pipeline, or ``next``: the next open stage in order.
    stage: Ident


class CopyToPipeline(Strict):
    pipeline: Ident
    stage: Ident | None = None
    # The fields copied: a list, or "all".
    fields: Literal["all"] | list[Ident] = "all"


class OnComplete(Strict):
    # The parent deal's stage once the process reaches a won stage ("next": the next open
    # stage after the one it is in).
    move_to_stage: Ident = "next"


class StartProcess(Strict):
    """A linked process: a new deal in another pipeline (the bureau's laboratory project,
    the kitchen's production) with the parent's contact, company and ``fields``, linked
    both ways (``parent_id`` on it, ``children`` on the parent). When it enters a won stage
    the parent moves as ``on_complete`` says (null: it stays). Several processes of one
    parent (the action twice, or ``of: parent``) run in parallel: the parent moves once
    every one of them is won.

    ``of: parent`` — run on a process, starts a copy of it for *its* parent (the bureau's
    project whose work is in two directions: "the process is copied"), with this process's
    ``fields`` and, unless given, its ``on_complete``."""

    pipeline: Ident
    stage: Ident | None = None
    fields: Literal["all"] | list[Ident] = "all"
    on_complete: OnComplete | None = Field(default_factory=OnComplete)
    of: Literal["self", "parent"] = "self"


class TemplateSend(Strict):
    """A provider message template (WhatsApp, configured on the account): ``params`` are
    text templates rendered like ``text``, one per placeholder ``{{1}}`` … in order."""

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$")
    language: str | None = Field(default=None, max_length=16)
    params: list[str] = Field(default_factory=list, max_length=30)


class SendMessage(Strict):
    """To the customer through the conversation's channel (the entity's latest, else the
    contact's), or through the configured ``channel``/``account`` if given. ``text``, or
    a ``template`` (WhatsApp: the only way to write outside the 24 h window)."""

    text: str = Field(default="", max_length=4000)
    channel: Ident | None = None
    account: Ident | None = None
    template: TemplateSend | None = None

    @model_validator(mode="after")
    def _text_or_template(self) -> SendMessage:
        if bool(self.text.strip()) == (self.template is not None):
            raise ValueError("send_message needs either text or a template (not both)")
        return self


class NextNumber(Strict):
    counter: Ident
    field: Ident
    # Python format with ``n``: "ORD-{n:05d}".
    format: str = "{n}"


CascadeTarget = Literal["contact", "company"]


def _both() -> list[CascadeTarget]:
    return ["contact", "company"]


class CascadeResponsible(Strict):
    to: list[CascadeTarget] = Field(default_factory=_both, min_length=1)


class CloseAsJunk(Strict):
    stage: Ident


class DeleteDuplicate(Strict):
    pass


class CallWebhook(Strict):
    url: str = Field(max_length=2048)
    secret_env: EnvName | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=60)


ACTIONS: tuple[str, ...] = (
    "create_task",
    "notify",
    "set_field",
    "move_to_stage",
    "copy_to_pipeline",
    "send_message",
    "next_number",
    "cascade_responsible",
    "close_as_junk",
    "delete_duplicate",
    "webhook",
    "document",
    "send_sms",
    "send_survey",
    "start_process",
)


class Action(Strict):
    """Exactly one of the keys."""

    create_task: CreateTask | None = None
    notify: Notify | None = None
    set_field: SetField | None = None
    move_to_stage: MoveToStage | None = None
    copy_to_pipeline: CopyToPipeline | None = None
    send_message: SendMessage | None = None
    next_number: NextNumber | None = None
    cascade_responsible: CascadeResponsible | None = None
    close_as_junk: CloseAsJunk | None = None
    delete_duplicate: DeleteDuplicate | None = None
    webhook: CallWebhook | None = None
    document: MakeDocument | None = None
    send_sms: SendSms | None = None
    send_survey: SendSurvey | None = None
    start_process: StartProcess | None = None

    @property
    def kind(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) is not None)

    @property
    def spec(self) -> BaseModel:
        spec: BaseModel = getattr(self, self.kind)
        return spec


# --- delays ----------------------------------------------------------------------------


def _daily(value: Any) -> Any:
    return {"at": value} if isinstance(value, str) else value


class Daily(Strict):
    at: TimeOfDay
    working_days: bool = False


DailyField = Annotated[Daily, BeforeValidator(_daily)]


class Until(Strict):
    """Stop a timed rule on an entity when an event happens there: its live timers on the
    entity are cancelled (``until: {on: document.signed, if: {document: contract}}``)."""

    on: TriggerList
    if_: Condition | None = Field(default=None, alias="if")


class Rule(Strict):
    id: Ident
    name: str | None = None
    enabled: bool = True
    on: TriggerList
    if_: Condition | None = Field(default=None, alias="if")
    after: DurationField | None = None
    every: DurationField | None = None
    times: int | None = Field(default=None, ge=1)
    at: AtField | None = None
    daily: DailyField | None = None
    # Cancel the timer when the entity leaves the stage it was in when the timer was set
    # (default: true for after/every, false for at/daily).
    in_stage: bool | None = None
    while_: Condition | None = Field(default=None, alias="while")
    until: Until | None = None
    do: list[Action] = Field(min_length=1)

    @property
    def timed(self) -> bool:
        return any(x is not None for x in (self.after, self.every, self.at, self.daily))

    @property
    def repeats(self) -> bool:
        return self.every is not None or self.daily is not None

    @property
    def bound_to_stage(self) -> bool:
        if self.in_stage is not None:
            return self.in_stage and self.timed
        return self.at is None and self.daily is None and self.timed


class AutomationFile(Strict):
    rules: list[Rule] = Field(default_factory=list)


# --- checks of one rule ----------------------------------------------------------------

Path = tuple[str | int, ...]

# Condition keys that only mean something for some triggers.
TRIGGER_KEYS: dict[str, frozenset[str]] = {
    "changed": frozenset({"field.changed"}),
    "task": frozenset({"task.completed"}),
    "timer": frozenset({"timer.due"}),
    "from_stage": frozenset({"stage.entered", "stage.left"}),
    "to_stage": frozenset({"stage.entered", "stage.left"}),
    "automatic": frozenset({"message.received"}),
    "document": frozenset({"document.generated", "document.sent", "document.signed"}),
}


def conditions(rule: Rule) -> Iterator[tuple[Path, Condition]]:
    """Every condition of a rule with its key path (nested ones included)."""

    def walk(c: Condition, path: Path) -> Iterator[tuple[Path, Condition]]:
        yield path, c
        for key, subs in (("all", c.all), ("any", c.any)):
            for i, sub in enumerate(subs or []):
                yield from walk(sub, (*path, key, i))
        if c.not_ is not None:
            yield from walk(c.not_, (*path, "not"))

    if rule.if_ is not None:
        yield from walk(rule.if_, ("if",))
    if rule.while_ is not None:
        yield from walk(rule.while_, ("while",))


def rule_problems(rule: Rule) -> Iterator[tuple[Path, str]]:
    """What is wrong with a rule by itself: (key path inside the rule, message)."""
    for i, action in enumerate(rule.do):
        given = [name for name in ACTIONS if getattr(action, name) is not None]
        if len(given) != 1:
            yield (
                ("do", i),
                "an action has exactly one of: "
                + ", ".join(ACTIONS)
                + (f" (found {', '.join(given)})" if given else ""),
            )
        elif action.set_field is not None:
            sf = action.set_field
            keys = ("value", "compute", "copy_from", "now")
            chosen = [k for k in keys if k in sf.model_fields_set]
            if len(chosen) != 1:
                yield (
                    ("do", i, "set_field"),
                    "set_field needs exactly one of value, compute, copy, now",
                )
        elif action.create_task is not None:
            ct = action.create_task
            if ct.deadline is not None and ct.deadline_at is not None:
                yield (
                    ("do", i, "create_task", "deadline_at"),
                    "a task has either deadline or deadline_at, not both",
                )
    for name in ("after", "every"):
        d: Duration | None = getattr(rule, name)
        if d is not None and d.amount <= 0:
            yield (name,), f"'{name}' must be a positive duration, got {d}"
    if rule.at is not None and (rule.after is not None or rule.every is not None):
        yield ("at",), "'at' cannot be combined with 'after' or 'every'"
    if rule.daily is not None and (
        rule.after is not None or rule.every is not None or rule.at is not None
    ):
        yield ("daily",), "'daily' cannot be combined with 'after', 'every' or 'at'"
    if rule.times is not None and not rule.repeats:
        yield ("times",), "'times' needs 'every' or 'daily'"
    if rule.while_ is not None and not rule.timed:
        yield ("while",), "'while' needs a delay: after, every, at or daily"
    if rule.until is not None and not rule.timed:
        yield ("until",), "'until' needs a delay: after, every, at or daily"
    if rule.in_stage is not None and not rule.timed:
        yield ("in_stage",), "'in_stage' needs a delay: after, every, at or daily"
    if "timer.due" in rule.on and rule.timed:
        yield ("on",), "a timer.due rule runs when another rule's timer fires; it has no delay"
    for path, cond in conditions(rule):
        for key, triggers in TRIGGER_KEYS.items():
            if key in cond.model_fields_set and path[0] == "if" and not set(rule.on) & triggers:
                yield (
                    (*path, key),
                    f"'{key}' only applies to {' / '.join(sorted(triggers))} "
                    f"(this rule is on {', '.join(rule.on)})",
                )
            if key in cond.model_fields_set and path[0] == "while" and key != "automatic":
                yield (*path, key), f"'{key}' describes an event; 'while' sees only the entity"
    for path, cond in conditions(rule):
        for key, test in (cond.fields or {}).items():
            if isinstance(test, Compare) and not test.model_fields_set:
                yield (*path, "fields", key), "an empty comparison: use eq, ne, gt, … or filled"
        if isinstance(cond.won_deals, Compare) and not cond.won_deals.model_fields_set:
            yield (*path, "won_deals"), "an empty comparison: use eq, ne, gt, … or filled"
