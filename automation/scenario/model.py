"""The language of a scenario file (YAML), as pydantic models.

A file names the people who write and call, a start time and a list of steps; each step
is a mapping with exactly one action key (``write``, ``call``, ``move`` …) — see
docs/scenarios.md. Times are local to the configuration's calendar time zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from automation.durations import DurationField

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Scalar = str | int | float | bool | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Person(Strict):
    """A customer of the scenario. ``phone`` / ``email`` are what they share where a
    channel carries them (WhatsApp and calls always carry the phone)."""

    name: str = Field(min_length=1, max_length=200)
    phone: str | None = None
    email: str | None = None


class Ref(Strict):
    """A lead or deal: the newest of ``lead``/``deal`` (a person's name), optionally in
    ``pipeline`` and at ``stage`` (one of two parallel processes in one pipeline)."""

    lead: Name | None = None
    deal: Name | None = None
    pipeline: Name | None = None
    stage: Name | None = None

    @model_validator(mode="after")
    def _one(self) -> Ref:
        if (self.lead is None) == (self.deal is None):
            raise ValueError("name exactly one of lead: <person> or deal: <person>")
        return self

    @property
    def kind(self) -> Literal["lead", "deal"]:
        return "lead" if self.lead is not None else "deal"

    @property
    def person(self) -> str:
        return self.lead or self.deal or ""

    def __str__(self) -> str:
        where = f" in {self.pipeline}" if self.pipeline else ""
        at = f" at {self.stage}" if self.stage else ""
        return f"{self.person}'s {self.kind}{where}{at}"


class Write(Strict):
    who: Name
    channel: Name
    account: Name | None = None
    text: str = Field(min_length=1, max_length=4000)
    # Also carry the person's phone / e-mail (a form that asks for them; a chat where the
    # customer typed them).
    shares_phone: bool = False
    shares_email: bool = False
    # A public comment under this post (VK, Facebook, Instagram) instead of a direct
    # message: one conversation per post and commenter (docs/channels/comments.md).
    comment_on: str | None = Field(default=None, min_length=1, max_length=256)


class Call(Strict):
    who: Name
    account: Name | None = None
    # The employee (PBX login) who answered; none: nobody answered (a missed call).
    answered_by: str | None = None
    talk: DurationField | None = None


class Move(Strict):
    entity: Ref
    to: Name
    by: Name | None = None
    # The move must be refused, with this text in the reason (a stage guard).
    refused: str | None = None


class SetFields(Strict):
    entity: Ref
    fields: dict[str, Any]
    by: Name | None = None


class ContactFields(Strict):
    """An operator sets custom fields on the person's contact (the contact card's
    ``fields``, PATCH /api/v1/contacts/{id}); null removes one."""

    of: Name
    fields: dict[str, str | bool | int | float | None] = Field(min_length=1)
    by: Name | None = None


class Assign(Strict):
    entity: Ref
    to: Name
    by: Name | None = None


class Complete(Strict):
    # The open task whose title contains this text (of the entity, if named).
    task: str = Field(min_length=1)
    entity: Ref | None = None
    # What the task asks for, entered on its lead/deal as it is completed (the oil
    # distributor's check: quality valid / not_valid / already_in_work).
    fields: dict[str, Any] = Field(default_factory=dict)
    by: Name | None = None


class NewCompany(Strict):
    """The company a lead converts into (with the contact): created, or the one already
    holding the INN (docs/companies.md)."""

    name: str = Field(min_length=1, max_length=300)
    inn: str | None = None
    kpp: str | None = None
    fields: dict[str, Scalar] = Field(default_factory=dict)


class Convert(Strict):
    lead: Name
    pipeline: Name
    stage: Name | None = None
    # Converting into contact + company (the oil distributor's check).
    company: NewCompany | None = None
    by: Name | None = None


class CompanyFor(NewCompany):
    """An operator makes the person's contact one of a company's (created, or the one
    holding the INN) — the company card in the inbox."""

    of: Name
    by: Name | None = None


class Watch(Strict):
    """A user starts watching a lead or deal (the inbox's watchers)."""

    entity: Ref
    user: Name
    by: Name | None = None


class MakeDocumentStep(Strict):
    """An operator makes a document of the person's newest deal (in ``pipeline``) from its
    template — the deal card's one click; ``signed: true`` attaches the signed scan of the
    newest one of that type instead (automation/scenario/paper_steps.py)."""

    of: Name
    type: Name
    pipeline: Name | None = None
    signed: bool = False
    by: Name | None = None


class AnswerSurvey(Strict):
    """The customer answers the survey page of their newest survey deal."""

    who: Name
    answers: dict[Name, int]
    comment: str | None = Field(default=None, max_length=2000)
    pipeline: Name | None = None


class Reply(Strict):
    to: Name
    text: str = Field(min_length=1, max_length=4000)
    by: Name | None = None


class Wait(Strict):
    duration: DurationField | None = None
    until: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"duration": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one(self) -> Wait:
        if (self.duration is None) == (self.until is None):
            raise ValueError("wait: a duration (2h, 3wd) or until: <date time>")
        return self


class EntityCheck(Strict):
    of: Name
    pipeline: Name | None = None
    stage: Name | None = None
    responsible: Name | None = None
    open: bool | None = None
    fields: dict[str, Scalar] = Field(default_factory=dict)
    # How many leads/deals the person has (in ``pipeline`` if given).
    count: int | None = Field(default=None, ge=0)
    # Users who see it in the inbox / who do not (the role and department rules of
    # inbox/access.py, e.g. the bureau's laboratory directions).
    seen_by: list[Name] = Field(default_factory=list)
    hidden_from: list[Name] = Field(default_factory=list)


class TaskCheck(Strict):
    title: str = Field(min_length=1)
    assignee: Name | None = None
    # Local "YYYY-MM-DD HH:MM" (the deadline).
    due: str | None = None
    status: Literal["open", "done", "cancelled"] | None = None
    count: int | None = Field(default=None, ge=0)


class ContactCheck(Strict):
    """The person's contact: its responsible, its company (a name's substring)."""

    of: Name
    responsible: Name | None = None
    company: str | None = None
    # Custom fields the contact holds (others may be there too).
    fields: dict[str, Scalar] = Field(default_factory=dict)


class CompanyCheck(Strict):
    """The company of the person's contact."""

    of: Name
    name: str | None = None
    inn: str | None = None
    responsible: Name | None = None
    fields: dict[str, Scalar] = Field(default_factory=dict)


class DocumentCheck(Strict):
    """Documents of the person's deals (the registry, docs/documents.md): of a type, in a
    status (generated, sent, signed), of a deal in ``pipeline``."""

    of: Name
    type: Name
    pipeline: Name | None = None
    status: Literal["generated", "sent", "signed"] | None = None
    count: int | None = Field(default=None, ge=0)


class NotificationCheck(Strict):
    to: Name
    text: str = ""
    count: int | None = Field(default=None, ge=0)


class SentCheck(Strict):
    to: Name
    text: str = ""
    channel: Name | None = None
    count: int | None = Field(default=None, ge=0)


class Expectation(Strict):
    """One check, with the sentence of the case study it comes from."""

    quote: str | None = None
    lead: EntityCheck | None = None
    deal: EntityCheck | None = None
    task: TaskCheck | None = None
    notification: NotificationCheck | None = None
    sent: SentCheck | None = None
    contacts: int | None = Field(default=None, ge=0, description="contacts in the store")
    contact: ContactCheck | None = None
    company: CompanyCheck | None = None
    document: DocumentCheck | None = None

    @model_validator(mode="after")
    def _one(self) -> Expectation:
        keys = [k for k in CHECKS if getattr(self, k) is not None]
        if len(keys) != 1:
            raise ValueError(
                f"an expectation has exactly one of: {', '.join(CHECKS)} (and an optional quote)"
            )
        return self


CHECKS = (
    "lead",
    "deal",
    "task",
    "notification",
    "sent",
    "contacts",
    "contact",
    "company",
    "document",
)


ACTIONS = (
    "write",
    "call",
    "move",
    "set",
    "contact_fields",
    "assign",
    "watch",
    "company",
    "complete",
    "convert",
    "reply",
    "document",
    "answer_survey",
    "wait",
)


class Step(Strict):
    """Exactly one action (or none: a step of expectations only), then ``expect``."""

    say: str | None = Field(default=None, max_length=500, description="a line for the timeline")
    write: Write | None = None
    call: Call | None = None
    move: Move | None = None
    set: SetFields | None = None
    contact_fields: ContactFields | None = None
    assign: Assign | None = None
    watch: Watch | None = None
    company: CompanyFor | None = None
    complete: Complete | None = None
    convert: Convert | None = None
    reply: Reply | None = None
    document: MakeDocumentStep | None = None
    answer_survey: AnswerSurvey | None = None
    wait: Wait | None = None
    expect: list[Expectation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _at_most_one(self) -> Step:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) > 1:
            raise ValueError(f"a step has at most one of {', '.join(ACTIONS)}; got {given}")
        return self

    @property
    def action(self) -> str | None:
        return next((a for a in ACTIONS if getattr(self, a) is not None), None)


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=200)
    # Local time of the first step (the configuration's calendar time zone).
    start: datetime
    # The operator who acts when a step names nobody.
    operator: Name | None = None
    people: dict[Name, Person] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _people_known(self) -> Scenario:
        names = set(self.people)
        for i, step in enumerate(self.steps):
            for who in _people_of(step):
                if who not in names:
                    raise ValueError(f"steps[{i}]: {who!r} is not in people")
        return self


def _people_of(step: Step) -> list[str]:
    out: list[str] = []
    if step.write is not None:
        out.append(step.write.who)
    if step.call is not None:
        out.append(step.call.who)
    for ref in (
        step.move.entity if step.move else None,
        step.set.entity if step.set else None,
        step.assign.entity if step.assign else None,
        step.watch.entity if step.watch else None,
        step.complete.entity if step.complete else None,
    ):
        if ref is not None:
            out.append(ref.person)
    if step.convert is not None:
        out.append(step.convert.lead)
    if step.company is not None:
        out.append(step.company.of)
    if step.contact_fields is not None:
        out.append(step.contact_fields.of)
    if step.reply is not None:
        out.append(step.reply.to)
    if step.document is not None:
        out.append(step.document.of)
    if step.answer_survey is not None:
        out.append(step.answer_survey.who)
    for e in step.expect:
        for check in (e.lead, e.deal, e.contact, e.company, e.document):
            if check is not None:
                out.append(check.of)
        if e.sent is not None:
            out.append(e.sent.to)
    return out
